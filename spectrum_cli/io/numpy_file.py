"""``.npy`` and ``.npz`` files, never unpickled (``allow_pickle=False``).

Shapes and dtypes come from the ``.npy`` headers (``numpy.lib.format``) without reading
data; a bare ``.npy`` is memory-mapped and is one tensor named after the file.
"""

from __future__ import annotations

import math
import os
import zipfile
from typing import Iterator

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.io.base import SourceBase, TensorInfo


def _dtype_name(dt: np.dtype) -> str:
    return "object" if dt.hasobject else dt.name


def _read_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _fortran, dtype = reader(fh)
    return tuple(shape), dtype


class NpySource(SourceBase):
    def __init__(self, path: str) -> None:
        super().__init__(path, "npy", (path,))
        self.name = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path, "rb") as fh:
                self._shape, self._dtype = _read_header(fh)
                data_start = fh.tell()
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: corrupt .npy file ({exc})") from None
        need = data_start + math.prod(self._shape) * self._dtype.itemsize
        size = os.path.getsize(path)
        if not self._dtype.hasobject and size < need:
            raise InputError(f"{path}: truncated: the header needs {need} bytes, the file "
                             f"has {size}")

    def entries(self) -> Iterator[TensorInfo]:
        skip = "object dtype (would need unpickling)" if self._dtype.hasobject else None
        yield TensorInfo(self.name, self._shape, _dtype_name(self._dtype), skip)

    def read(self, name: str) -> np.ndarray:
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{self.path}: cannot read array ({exc})") from None
        return np.array(arr, dtype=np.float64)


class NpzSource(SourceBase):
    def __init__(self, path: str) -> None:
        super().__init__(path, "npz", (path,))
        self._members: dict[str, tuple[str, tuple[int, ...], np.dtype]] = {}
        try:
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if not member.endswith(".npy"):
                        continue
                    with zf.open(member) as fh:
                        shape, dtype = _read_header(fh)
                    self._members[member[:-4]] = (member, shape, dtype)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise InputError(f"{path}: corrupt or truncated .npz file ({exc})") from None

    def entries(self) -> Iterator[TensorInfo]:
        for name, (_, shape, dtype) in self._members.items():
            skip = "object dtype (would need unpickling)" if dtype.hasobject else None
            yield TensorInfo(name, shape, _dtype_name(dtype), skip)

    def read(self, name: str) -> np.ndarray:
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                return np.array(npz[name], dtype=np.float64)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"{self.path}: cannot read {name!r} ({exc})") from None
