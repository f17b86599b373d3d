"""The ``.metadata`` of a ``torch.distributed.checkpoint`` (DCP) folder, read without
running anything from it, and checked against the folder's files.

``.metadata`` is a pickle of DCP's ``Metadata``. It is first disassembled
(:mod:`spectrum_cli.io.pickle_scan`: nothing runs) and refused, naming the globals, if it
names anything outside :data:`ADMITTED`: DCP's own metadata classes
(``torch.distributed.checkpoint.metadata.*`` and ``filesystem._StorageInfo``),
``torch.Size``, torch dtypes, ``torch.serialization._get_layout``,
``_MEM_FORMAT_ENCODING`` and the ``pathlib`` path of ``StorageMeta.checkpoint_id`` -- the
exact set torch 2.13 writes (listed with pickletools from real single-process and 2-rank
FSDP2 checkpoints), plus the pre-2.3 home of ``TensorProperties``. It is then unpickled
by :class:`MetadataUnpickler`, whose ``find_class`` maps each admitted name to an inert
local stand-in made afresh for that load (:func:`stand_ins`: record classes, a tuple, a
string): neither torch's code nor any other runs while it is read, torch is not
imported, and a hostile ``BUILD`` can alter only that load's stand-ins. ``--trust-checkpoint`` and
``--allow-global`` do not widen this: nothing else belongs in DCP metadata.

:class:`Layout` then checks what the stand-ins say: every tensor's chunks fit its shape
and add up to it, every chunk has a storage entry, every storage file is a regular file
inside the folder (no absolute path, no ``..``, no symlink out) holding the byte range
named, and no chunk claims more elements than its bytes can store (so a small file
cannot make us allocate a huge tensor).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import reprlib
from dataclasses import dataclass
from typing import Any

from spectrum_cli.core.errors import InputError
from spectrum_cli.io import storage
from spectrum_cli.io.base import (MAX_NDIM, check_shape, input_errors, open_regular,
                                  require_regular)
from spectrum_cli.io.pickle_scan import scan_pickles

METADATA_NAME = ".metadata"

#: Largest ``.metadata`` read (an FSDP checkpoint of a 70B model on 512 ranks is a few
#: hundred MB of metadata; a hostile one cannot make us read more than this).
MAX_METADATA_BYTES = 1 << 30

#: Longest tensor name (fqn) and storage path a ``.metadata`` may hold, in characters
#: (real ones are under a few hundred; long names amplify every join and prefix test).
MAX_NAME_CHARS = 4096

#: Values from the metadata are shown in messages through this bounded repr (a shared
#: sub-object nested 60 deep has a repr of 2**60 characters).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 80, 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def show(value: Any) -> str:
    """A repr of a value read from metadata, at most a few hundred characters."""
    if isinstance(value, _Record):
        return value.__repr__()
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - only for a message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 300 else text[:300] + "..."


#: Bytes per element of the dtypes DCP stores (others count as 1).
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "complex128": 16,
            "complex64": 8, "complex32": 4, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
            "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1}

#: torch dtype names a ``.metadata`` may name as ``torch.<name>``.
DTYPE_NAMES = frozenset(ITEMSIZE) | {
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
    "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16"}


class _Record:
    """An inert stand-in for one of DCP's metadata dataclasses: ``NEWOBJ`` makes an
    empty one and ``BUILD`` fills its attributes; no code from torch runs."""

    kind = "record"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict or None, slots)
            if not all(part is None or isinstance(part, dict) for part in state):
                raise pickle.UnpicklingError(f"{self.kind}: unexpected state")
            for part in state:
                if part is not None:
                    self.__setstate__(part)
            return
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.kind}: unexpected state {type(state)}")
        for key, value in state.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"{self.kind}: non-string attribute name")
            self.__dict__[key] = value

    def __repr__(self) -> str:  # bounded: attributes may share sub-objects without end
        inner = ", ".join(f"{k}={_REPR.repr(v)}" for k, v in list(self.__dict__.items())[:8])
        return f"{self.kind}({inner[:300]})"


class _Properties(_Record):
    """``TensorProperties``: its ``__getstate__`` is the tuple (dtype, layout,
    requires_grad, memory-format code, pin_memory)."""

    kind = "TensorProperties"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = dict(zip(("dtype", "layout", "requires_grad", "memory_format",
                              "pin_memory"), state))
        super().__setstate__(state)


@dataclass(frozen=True)
class _DType:
    """A torch dtype, by name (``torch.float32`` -> ``_DType("float32")``)."""

    name: str


def _size(*args: Any) -> tuple:
    """``torch.Size(seq)`` as a plain tuple (validated later)."""
    if len(args) > 1:
        raise pickle.UnpicklingError("torch.Size takes one sequence")
    seq = args[0] if args else ()
    if not isinstance(seq, (list, tuple)):
        raise pickle.UnpicklingError(f"torch.Size of {type(seq).__name__}")
    return tuple(seq)


_DCP = "torch.distributed.checkpoint.metadata"
_SHARD = "torch.distributed._shard.sharded_tensor.metadata"  # TensorProperties before 2.3
_RECORDS = {f"{_DCP}.{k}": k for k in ("Metadata", "TensorStorageMetadata",
                                       "BytesStorageMetadata", "ChunkStorageMetadata",
                                       "MetadataIndex", "StorageMeta")}
_RECORDS["torch.distributed.checkpoint.filesystem._StorageInfo"] = "_StorageInfo"
_PATHS = [f"{mod}.{cls}" for mod in ("pathlib", "pathlib._local")
          for cls in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath",
                      "PureWindowsPath")]

#: Every global a DCP ``.metadata`` may name (what each stands for: :func:`stand_ins`).
ADMITTED = frozenset([*_RECORDS, f"{_DCP}.TensorProperties", f"{_SHARD}.TensorProperties",
                      f"{_DCP}._MEM_FORMAT_ENCODING", f"{_SHARD}.MEM_FORMAT_ENCODING",
                      "torch.Size", "torch.serialization._get_layout",
                      "collections.OrderedDict", *_PATHS,
                      *(f"torch.{name}" for name in DTYPE_NAMES)])


def stand_ins() -> dict[str, Any]:
    """:data:`ADMITTED` name -> the inert object it unpickles to, made afresh for each
    load (so that a ``BUILD`` aimed at a class or function alters only that load's copy,
    never the next file's): record classes, a tuple for ``torch.Size``, strings for the
    layout and ``pathlib`` paths, the plain value for the memory-format code, dtype
    names."""
    def size(*args: Any) -> tuple:
        return _size(*args)

    def layout(name: Any) -> str:  # torch.serialization._get_layout("torch.strided")
        if not isinstance(name, str) or len(name) > 64:
            raise pickle.UnpicklingError(f"_get_layout of {show(name)}")
        return name

    def mem_format(value: Any = None) -> Any:  # _MEM_FORMAT_ENCODING(value)
        return value

    def path(*parts: Any) -> str:  # StorageMeta.checkpoint_id: never a path object
        # strings only, and bounded: a shared long string repeated in the arguments
        # would otherwise join to terabytes
        if len(parts) > 256 or not all(isinstance(p, str) for p in parts) \
                or sum(len(p) + 1 for p in parts) > MAX_NAME_CHARS:
            raise pickle.UnpicklingError(f"a path of {len(parts)} parts that are not "
                                         f"short strings ({show(parts)})")
        return "/".join(parts)

    props = type("TensorProperties", (_Properties,), {})
    table: dict[str, Any] = {name: type(kind, (_Record,), {"kind": kind})
                             for name, kind in _RECORDS.items()}
    table.update({f"{_DCP}.TensorProperties": props, f"{_SHARD}.TensorProperties": props,
                  f"{_DCP}._MEM_FORMAT_ENCODING": mem_format,
                  f"{_SHARD}.MEM_FORMAT_ENCODING": mem_format, "torch.Size": size,
                  "torch.serialization._get_layout": layout,
                  "collections.OrderedDict": type("OrderedDict", (dict,), {})})
    table.update({name: path for name in _PATHS})
    table.update({f"torch.{name}": _DType(name) for name in DTYPE_NAMES})
    return table


class MetadataUnpickler(pickle.Unpickler):
    """Resolves only :data:`ADMITTED` names, to this load's stand-ins; anything else
    (and any persistent id) is refused before it is looked up."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self._table = stand_ins()

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key not in self._table:
            raise pickle.UnpicklingError(f"global {key} is not a DCP metadata class")
        return self._table[key]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in DCP metadata")


def _is(obj: Any, kind: str) -> bool:
    return isinstance(obj, _Record) and type(obj).kind == kind


def unsafe_globals(data: bytes) -> list[str]:
    """The globals the pickle ``data`` names outside :data:`ADMITTED` (static
    disassembly: nothing is unpickled)."""
    scan = scan_pickles(io.BytesIO(data), limit=1)
    if scan.broken and not scan.globals:
        raise pickle.UnpicklingError(f"the pickle does not parse: {scan.broken[:200]}")
    return sorted({g for g in scan.globals if g not in ADMITTED})


def load_metadata(path: str) -> Any:
    """The ``.metadata`` file at ``path``, size-capped, refused if it names a global
    outside :data:`ADMITTED`, then unpickled into stand-ins. A ``.metadata`` that is a
    symlink resolving outside its folder is refused, and no more bytes are read than
    ``stat`` said the file holds (a ``/proc`` file says 0 and never ends)."""
    if not storage.is_url(path):
        folder = os.path.dirname(path) or "."
        confined(folder, os.path.basename(path), path)
    size = require_regular(path).st_size
    if size > MAX_METADATA_BYTES:
        raise InputError(f"{path}: {size} bytes of DCP metadata, more than the "
                         f"{MAX_METADATA_BYTES} this reader accepts")
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes of DCP metadata)")
    with input_errors(path):
        with open_regular(path) as fh:
            data = fh.read(size + 1)
        if len(data) != size:  # changed since it was measured, or not a plain file
            raise InputError(f"{path}: holds {'more' if len(data) > size else 'fewer'} "
                             f"bytes than the {size} its size says (changed while read, "
                             "or not a plain file); refusing it")
        bad = unsafe_globals(data)
        if bad:
            raise InputError(f"{path}: refused: a DCP .metadata may name only DCP's own "
                             f"metadata classes, but this one names {', '.join(bad)}. "
                             "Nothing from it was run.")
        meta = MetadataUnpickler(io.BytesIO(data)).load()
    if not _is(meta, "Metadata"):
        raise InputError(f"{path}: not DCP metadata (the pickle holds a "
                         f"{type(meta).__name__})")
    return meta


# --- validation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: where it goes and where its bytes are."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    start: int
    length: int
    transforms: tuple[str, ...] = ()

    def where(self) -> str:
        return f"{self.file} (bytes {self.start}..{self.start + self.length})"


@dataclass
class TensorPlan:
    fqn: str
    shape: tuple[int, ...]
    dtype: str
    chunks: list[Chunk]
    skip: str | None = None


def _ints(path: str, what: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_NDIM \
            or not all(type(v) is int for v in value):
        raise InputError(f"{path}: {what} is {show(value)}, not a list of at most "
                         f"{MAX_NDIM} integers")
    return tuple(value)


def _name(path: str, what: str, value: Any) -> str:
    """A tensor name or storage path from the metadata: a string of bounded length."""
    if not isinstance(value, str):
        raise InputError(f"{path}: {what} {show(value)} is not a string")
    if len(value) > MAX_NAME_CHARS:
        raise InputError(f"{path}: {what} {show(value)} is {len(value)} characters long "
                         f"(at most {MAX_NAME_CHARS})")
    return value


def confined(root: str, rel: Any, meta: str) -> str:
    """``root/rel`` when ``rel`` is a relative path that stays inside ``root`` once
    symlinks are resolved; anything else is an :class:`InputError`."""
    ok = isinstance(rel, str) and rel and "\x00" not in rel and "\\" not in rel \
        and len(rel) <= MAX_NAME_CHARS
    if ok:
        parts = rel.split("/")
        ok = not os.path.isabs(rel) and ".." not in parts and ":" not in parts[0]
    if not ok:
        raise InputError(f"{meta}: storage file {show(rel)} is not a plain relative path "
                         "inside the checkpoint folder; refusing it")
    if storage.is_url(root):  # an object store has no symlinks: the check above holds
        return storage.join(root, rel)
    full = os.path.join(root, rel)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
        raise InputError(f"{meta}: storage file {rel!r} resolves outside the checkpoint "
                         f"folder ({os.path.realpath(full)}); refusing it")
    return full


class Layout:
    """The validated plan of a DCP folder: tensors with their chunks, bytes entries."""

    def __init__(self, root: str, meta: Any) -> None:
        self.root = root
        self.meta_path = storage.pjoin(root, METADATA_NAME)
        self.sizes: dict[str, int] = {}  # storage file -> its size
        self._confined: dict[str, str] = {}  # relative path -> checked full path
        version = getattr(meta, "version", None)
        self.version = version if isinstance(version, str) else None
        self.storage = self._storage(meta)
        self.tensors: dict[str, TensorPlan] = {}
        self.bytes: dict[str, Chunk | None] = {}
        sdm = getattr(meta, "state_dict_metadata", None)
        if not isinstance(sdm, dict):
            raise InputError(f"{self.meta_path}: state_dict_metadata is not a mapping")
        self._used: set[tuple[str, tuple | None]] = set()  # storage entries placed
        for fqn, item in sdm.items():
            _name(self.meta_path, "entry name", fqn)
            if _is(item, "BytesStorageMetadata"):
                self.bytes[fqn] = self.storage.get((fqn, None))
            elif _is(item, "TensorStorageMetadata"):
                self.tensors[fqn] = self._tensor(fqn, item)
            else:
                raise InputError(f"{self.meta_path}: entry {fqn!r} is a "
                                 f"{type(item).__name__}, not tensor or bytes metadata")
        del self._used

    def _storage(self, meta: Any) -> dict[tuple[str, tuple | None], Chunk]:
        """(fqn, chunk offsets or None) -> where the bytes are, every range checked
        against its (confined, regular) file's size."""
        data = getattr(meta, "storage_data", None)
        if not isinstance(data, dict):
            raise InputError(f"{self.meta_path}: storage_data is not a mapping (only "
                             "checkpoints written by FileSystemWriter are supported)")
        out: dict[tuple[str, tuple | None], Chunk] = {}
        for index, info in data.items():
            if not _is(index, "MetadataIndex") or not _is(info, "_StorageInfo"):
                raise InputError(f"{self.meta_path}: storage_data holds "
                                 f"{type(index).__name__} -> {type(info).__name__}")
            fqn, offset = getattr(index, "fqn", None), getattr(index, "offset", None)
            _name(self.meta_path, "storage entry name", fqn)
            key = (fqn, None if offset is None else
                   _ints(self.meta_path, f"{fqn!r} storage offset", offset))
            out.setdefault(key, self._range(fqn, info))
        self._disjoint(out)
        return out

    def _disjoint(self, entries: dict[tuple[str, tuple | None], Chunk]) -> None:
        """No two storage entries share bytes (DCP writes each piece once): else a small
        file could stand for any number of chunks, and so for a tensor of any size."""
        ranges = sorted((c.file, c.start, c.start + c.length, fqn)
                        for (fqn, _), c in entries.items() if c.length)
        for (f1, _, end1, a), (f2, start2, _, b) in zip(ranges, ranges[1:]):
            if f1 == f2 and start2 < end1:
                raise InputError(f"{f1}: entries {a!r} and {b!r} share bytes (from "
                                 f"{start2}); refusing the checkpoint")

    def _range(self, fqn: str, info: Any) -> Chunk:
        rel = getattr(info, "relative_path", None)
        start, length = getattr(info, "offset", None), getattr(info, "length", None)
        if type(start) is not int or type(length) is not int or start < 0 or length < 0:
            raise InputError(f"{self.meta_path}: entry {fqn!r} has byte range "
                             f"{show(start)}+{show(length)}")
        transforms = getattr(info, "transform_descriptors", None) or ()
        if not isinstance(transforms, (list, tuple)) or len(transforms) > 16 or not all(
                isinstance(t, str) and len(t) <= 256 for t in transforms):
            raise InputError(f"{self.meta_path}: entry {fqn!r} has transform descriptors "
                             f"{show(transforms)} (expected a few short strings)")
        full = self._confined.get(rel) if isinstance(rel, str) else None
        if full is None:
            full = self._confined[rel] = confined(self.root, rel, self.meta_path)
        if full not in self.sizes:
            self.sizes[full] = require_regular(full).st_size
        if start + length > self.sizes[full]:
            raise InputError(f"{full}: truncated: entry {fqn!r} needs bytes {start}.."
                             f"{start + length} but the file has {self.sizes[full]}")
        return Chunk((), (), full, start, length, tuple(transforms))

    def _tensor(self, fqn: str, item: Any) -> TensorPlan:
        where = f"{self.meta_path}: tensor {fqn!r}"
        props = getattr(item, "properties", None)
        dtype = getattr(props, "dtype", None)
        if not isinstance(dtype, _DType) or dtype.name not in DTYPE_NAMES:
            raise InputError(f"{where} has dtype {show(dtype)}")
        shape = check_shape(self.meta_path, fqn, _ints(self.meta_path, f"{fqn!r} size",
                                                       getattr(item, "size", None)))
        chunks = getattr(item, "chunks", None)
        if not isinstance(chunks, list):
            raise InputError(f"{where} has chunks {show(chunks)}")
        placed, volume = [], 0
        for c in chunks:
            if not _is(c, "ChunkStorageMetadata"):
                raise InputError(f"{where} has a chunk of type {type(c).__name__}")
            offsets = _ints(self.meta_path, f"{fqn!r} chunk offsets", getattr(c, "offsets", None))
            sizes = _ints(self.meta_path, f"{fqn!r} chunk sizes", getattr(c, "sizes", None))
            if len(offsets) != len(shape) or len(sizes) != len(shape) or any(
                    o < 0 or s < 0 or o + s > d for o, s, d in zip(offsets, sizes, shape)):
                raise InputError(f"{where}: chunk at {offsets} of size {sizes} does not fit "
                                 f"its shape {shape}")
            stored = self.storage.get((fqn, offsets))
            if stored is None:
                raise InputError(f"{where}: no storage entry for its chunk at {offsets}")
            if (fqn, offsets) in self._used:  # one piece of bytes places one chunk
                raise InputError(f"{where}: two chunks at {offsets}")
            self._used.add((fqn, offsets))
            n = math.prod(sizes)
            if stored.length < n * ITEMSIZE.get(dtype.name, 1):
                raise InputError(f"{stored.file}: tensor {fqn!r}: its chunk at {offsets} "
                                 f"holds {n} elements in {stored.length} bytes; truncated "
                                 "or corrupt")
            volume += n
            placed.append(Chunk(offsets, sizes, stored.file, stored.start, stored.length,
                                 stored.transforms))
        if volume != math.prod(shape):
            raise InputError(f"{where}: its chunks hold {volume} elements, its shape "
                             f"{shape} {math.prod(shape)}")
        return TensorPlan(fqn, shape, dtype.name, placed, self._skip(props, placed))

    @staticmethod
    def _skip(props: Any, chunks: list[Chunk]) -> str | None:
        layout = getattr(props, "layout", "torch.strided")
        if layout != "torch.strided":
            return f"unsupported tensor layout ({show(layout)})"
        transforms = sorted({t for c in chunks for t in c.transforms})
        if transforms:
            return f"stored with DCP transforms ({', '.join(transforms)}); not supported"
        return None
