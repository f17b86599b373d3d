"""``.npy`` and ``.npz`` files, never unpickled (object arrays are listed, not read).

Shapes and dtypes come from the ``.npy`` headers (``numpy.lib.format``) without reading
data; a bare ``.npy`` is one tensor named after the file. Declared sizes are checked
before anything is allocated: a header may not declare more bytes than the file (or the
zip member) holds, and an ``.npz`` member that inflates far beyond its compressed size
(a zip bomb) is refused. Data is read in chunks of :data:`CHUNK_BYTES` straight into the
float64 result, so the peak is one tensor plus one chunk.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from typing import IO, Callable, Iterator

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.io.base import SourceBase, TensorInfo, check_shape, file_size, open_regular
from spectrum_cli.io.storage import ZIP_BLOCK

#: Bytes read and converted at a time.
CHUNK_BYTES = 4 * 1024 * 1024
#: An ``.npz`` member larger than this when inflated ...
BOMB_MIN_BYTES = 64 * 1024 * 1024
#: ... may inflate at most this many times its compressed size (real weights compress
#: by less than 2x; a deflated run of zeros by about 1000x).
MAX_COMPRESSION_RATIO = 100


@dataclass(frozen=True)
class _Array:
    """Where one array's data lies and how it is laid out."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    data_start: int  # bytes of magic + header before the data
    nbytes: int


def _dtype_name(dt: np.dtype) -> str:
    return "object" if dt.hasobject else dt.name


def _read_header(fh: IO[bytes], where: str) -> _Array:
    """Parse a ``.npy`` header at the start of ``fh`` (nothing is unpickled)."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = reader(fh)
    shape = check_shape(where, "array", shape)
    nbytes = 0 if dtype.hasobject else math.prod(shape) * dtype.itemsize
    return _Array(shape, dtype, bool(fortran), fh.tell(), nbytes)


def _check_fits(where: str, arr: _Array, size: int) -> None:
    if not arr.dtype.hasobject and arr.data_start + arr.nbytes > size:
        raise InputError(f"{where}: truncated: the header declares "
                         f"{arr.data_start + arr.nbytes} bytes, the data holds {size}")


def _fill(read: Callable[[int], bytes], arr: _Array, where: str) -> np.ndarray:
    """The array's values as float64, read ``CHUNK_BYTES`` at a time by ``read(n)``."""
    if arr.dtype.hasobject:
        raise InputError(f"{where}: an object array (would need unpickling); not read")
    itemsize = arr.dtype.itemsize
    count = arr.nbytes // itemsize if itemsize else 0
    out = np.empty(count, dtype=np.float64)
    step = max(1, CHUNK_BYTES // max(itemsize, 1))
    for i in range(0, count, step):
        n = min(step, count - i)
        buf = read(n * itemsize)
        if len(buf) != n * itemsize:
            raise InputError(f"{where}: truncated data (file changed underneath?)")
        out[i:i + n] = np.frombuffer(buf, dtype=arr.dtype)
    return out.reshape(arr.shape, order="F" if arr.fortran else "C")


class NpySource(SourceBase):
    def __init__(self, path: str) -> None:
        super().__init__(path, "npy", (path,))
        self.name = os.path.splitext(os.path.basename(path))[0]
        with open_regular(path) as fh:
            try:
                self._arr = _read_header(fh, path)
            except (ValueError, OSError, EOFError) as exc:
                raise InputError(f"{path}: corrupt .npy file ({exc})") from None
            _check_fits(path, self._arr, file_size(fh))

    def entries(self) -> Iterator[TensorInfo]:
        skip = "object dtype (would need unpickling)" if self._arr.dtype.hasobject else None
        yield TensorInfo(self.name, self._arr.shape, _dtype_name(self._arr.dtype), skip)

    def read(self, name: str) -> np.ndarray:
        with open_regular(self.path) as fh:
            fh.seek(self._arr.data_start)
            return _fill(fh.read, self._arr, self.path)


class NpzSource(SourceBase):
    def __init__(self, path: str) -> None:
        super().__init__(path, "npz", (path,))
        self._members: dict[str, tuple[str, _Array]] = {}
        try:
            with open_regular(path, block=ZIP_BLOCK) as raw, zipfile.ZipFile(raw) as zf:
                for info in zf.infolist():
                    if info.filename.endswith(".npy"):
                        self._members[info.filename[:-4]] = (info.filename,
                                                             self._member(zf, info))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise InputError(f"{path}: corrupt or truncated .npz file ({exc})") from None

    def _member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Array:
        """One member's header, checked against the sizes the zip declares for it."""
        where = f"{self.path}[{info.filename}]"
        if (info.file_size > BOMB_MIN_BYTES
                and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
            raise InputError(f"{where}: inflates from {info.compress_size} to "
                             f"{info.file_size} bytes (more than {MAX_COMPRESSION_RATIO}x): "
                             "refused as a likely zip bomb")
        with zf.open(info) as fh:
            arr = _read_header(fh, where)
        _check_fits(where, arr, info.file_size)
        return arr

    def entries(self) -> Iterator[TensorInfo]:
        for name, (_, arr) in self._members.items():
            skip = "object dtype (would need unpickling)" if arr.dtype.hasobject else None
            yield TensorInfo(name, arr.shape, _dtype_name(arr.dtype), skip)

    def read(self, name: str) -> np.ndarray:
        member, arr = self._members[name]
        with open_regular(self.path, block=ZIP_BLOCK) as raw, zipfile.ZipFile(raw) as zf, \
                zf.open(member) as fh:
            fh.read(arr.data_start)  # the header, parsed when the file was opened
            return _fill(fh.read, arr, f"{self.path}[{member}]")
