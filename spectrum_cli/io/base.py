"""The reader protocol: list tensors cheaply, then read them one at a time.

A :class:`TensorSource` never holds more than the tensor being read: ``entries()`` comes
from headers (safetensors, npy) or from a memory-mapped ``torch.load``; ``read()`` returns
one float64 copy. That keeps peak memory near one tensor, whatever the checkpoint's size.

Hostile input: every reader opens paths through :func:`require_regular` /
:func:`open_regular` (a FIFO, socket, device or directory is refused before it is opened,
so nothing hangs), and every exception that parsing bytes can raise is turned into an
:class:`~spectrum_cli.core.errors.InputError` naming the file by :func:`input_errors`,
which guards :func:`spectrum_cli.io.detect.open_source` and, through
:meth:`SourceBase.__init_subclass__`, every reader's ``entries``, ``read`` and ``weights``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import io
import math
import os
import pickle
import re
import stat
import struct
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator, Mapping, Protocol

import numpy as np

from spectrum_cli.core.errors import InputError, SpectrumError, UsageError
from spectrum_cli.io import storage

FLOAT_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}
)

#: What parsing hostile bytes can raise below a reader (json and Unicode errors are
#: ValueErrors, RecursionError is a RuntimeError, IndexError and KeyError LookupErrors).
PARSE_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError, ValueError, ArithmeticError, LookupError, TypeError, struct.error,
    zipfile.BadZipFile, EOFError, OSError, MemoryError, pickle.UnpicklingError,
)

#: Most dimensions a tensor may declare (numpy's own limit is 64).
MAX_NDIM = 64


def describe_error(exc: BaseException) -> str:
    """A short, one-line account of why parsing failed."""
    if isinstance(exc, RecursionError):
        return "nested too deeply to parse"
    if isinstance(exc, MemoryError):
        return "declares more data than fits in memory"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read it ({exc.strerror})"
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 200:
        first = first[:200] + "..."
    return f"corrupt or unreadable ({type(exc).__name__}{': ' + first if first else ''})"


@contextmanager
def input_errors(path: str) -> Iterator[None]:
    """Turn any parse failure inside the block into an :class:`InputError` naming ``path``;
    errors that already say what is wrong (:class:`SpectrumError`) pass unchanged."""
    try:
        yield
    except SpectrumError:
        raise
    except PARSE_ERRORS as exc:
        raise InputError(f"{path}: {describe_error(exc)}") from exc


def _guarded(fn: Callable) -> Callable:
    """``fn`` (a reader method) with its parse failures reported against ``self.path``."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with input_errors(self.path):
                yield from fn(self, *args, **kwargs)
        gen._input_guarded = True  # type: ignore[attr-defined]
        return gen

    @functools.wraps(fn)
    def call(self, *args: Any, **kwargs: Any) -> Any:
        with input_errors(self.path):
            return fn(self, *args, **kwargs)
    call._input_guarded = True  # type: ignore[attr-defined]
    return call


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is (``a FIFO (named pipe)``, ...)."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


#: Kernel filesystems whose "regular" files have sizes that bound nothing
#: (``/proc/self/pagemap`` stats as a regular file and reads for ever).
PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")


def require_regular(path: str) -> os.stat_result:
    """``os.stat(path)`` (symlinks followed) when it is a regular file; anything else
    (missing, a symlink loop, a FIFO, a device, a directory) is an :class:`InputError`
    raised before the path is ever opened. A URL (:mod:`spectrum_cli.io.storage`) must
    name an object, not a folder; its stat carries only the size."""
    if storage.is_url(path):
        size = storage.require_file(path)
        return os.stat_result((stat.S_IFREG | 0o444, 0, 0, 1, 0, 0, size, 0, 0, 0))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: {file_kind(st.st_mode)}, not a regular file; "
                         "refusing to read it")
    real = os.path.realpath(path)
    if any(real == top or real.startswith(top + os.sep) for top in PSEUDO_FILESYSTEMS):
        raise InputError(f"{path}: a file of the kernel's {real.split(os.sep)[1]} "
                         "filesystem (its size is no bound on what it returns); refusing "
                         "to read it")
    return st


def open_regular(path: str, *, block: int = 0) -> IO[bytes]:
    """Open a regular file for binary reading, refusing anything else without blocking:
    the path is checked first, then opened non-blocking and checked again on the open
    descriptor (a FIFO swapped in between cannot make the open hang). A URL opens as a
    ranged-read file object (``block`` > 0: read ahead that many bytes; see
    :func:`spectrum_cli.io.storage.open_file`)."""
    if storage.is_url(path):  # pinned: every range is checked against the version opened
        return storage.open_file(path, block=block)
    require_regular(path)
    extra = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fh = open(path, "rb", opener=lambda p, flags: os.open(p, flags | extra))
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise InputError(f"{path}: not a regular file; refusing to read it")
    return fh


def check_shape(path: str, name: str, shape: Any) -> tuple[int, ...]:
    """A declared shape as a tuple of non-negative ints whose element count (zeros
    counted as one) fits in int64; anything else is an :class:`InputError`."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise InputError(f"{path}: tensor {name!r} declares shape {shape!r} (expected a "
                         f"list of at most {MAX_NDIM} dimensions)")
    if not all(type(d) is int or isinstance(d, np.integer) for d in shape):
        raise InputError(f"{path}: tensor {name!r} declares non-integer dimensions "
                         f"{list(shape)!r}")
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InputError(f"{path}: tensor {name!r} declares negative dimensions {dims}")
    if math.prod(max(d, 1) for d in dims) >= 2**63:
        raise InputError(f"{path}: tensor {name!r} declares shape {dims}, more elements "
                         "than any file can hold")
    return dims


def allowed_roots(folder: str) -> list[str]:
    """Where a file named inside ``folder`` (a shard, an HF folder's weights) may
    resolve to: the folder itself, and for a hub-cache snapshot (``.../snapshots/<rev>``)
    the repository's ``blobs`` folder (``snapshots/<rev>/x -> ../../blobs/<hash>``)."""
    real = os.path.realpath(folder)
    roots = [real]
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots":
        roots.append(os.path.join(os.path.dirname(parent), "blobs"))
    return roots


def confine(folder: str, full: str, what: str) -> str:
    """``full`` (a local path in ``folder``) when, symlinks resolved, it stays inside
    ``folder`` or a hub cache's ``blobs/`` (:func:`allowed_roots`); else an
    :class:`InputError` naming ``what`` (a symlink out to ``/proc`` or another folder
    is never read)."""
    real = os.path.realpath(full)
    if not any(os.path.commonpath([real, root]) == root
               for root in allowed_roots(folder or ".")):
        raise InputError(f"{what} resolves to {real}, outside its folder; refusing it")
    return full


#: Steps a checkpoint may store: what TensorBoard's and HDF5's int64 steps can hold.
MAX_STEP = 2**63 - 1


def stored_step(value: Any) -> int | None:
    """A training step read from a checkpoint (``step``, ``global_step``, ...) as an
    int in ``0 .. 2**63 - 1``; None for anything else (a bool, a string, NaN, a
    negative step, one beyond int64): the step is a courtesy, never a reason to fail."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    return value if 0 <= value <= MAX_STEP else None


def stored_loss(value: Any) -> float | None:
    """A loss read from a checkpoint as a finite float; None for anything else (an int
    too large for a float included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        loss = float(value)
    except OverflowError:
        return None
    return loss if math.isfinite(loss) else None


@dataclass(frozen=True)
class TensorInfo:
    """Name (dotted path), shape and stored dtype of one tensor; ``skip`` says why not
    to analyse it even if it is a floating matrix (optimizer state, say)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    skip: str | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def resolve_global(spec: str) -> Any:
    """``MODULE.NAME`` -> the object, for ``--allow-global`` (imports MODULE). A name that
    does not resolve is a :class:`UsageError` that says so (typos are common)."""
    module, _, name = spec.rpartition(".")
    if not module or not name:
        raise UsageError(f"--allow-global: cannot resolve global {spec!r}: expected "
                         "MODULE.NAME (for example argparse.Namespace)")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the user's typo
        raise UsageError(f"--allow-global: cannot resolve global {spec!r} "
                         f"({type(exc).__name__}: {exc})") from None
    return obj


@dataclass(frozen=True)
class LoadPolicy:
    """How far a pickle-based checkpoint is trusted. Set only from the command line:
    configuration files and environment variables cannot widen it. It covers the file
    named on the command line (and its shards) only, never a file found beside it."""

    allow_globals: tuple[str, ...] = ()
    trust_checkpoint: bool = False
    weights_key: str | None = None
    #: ``KEY=VALUE`` options for fsspec URLs (``--storage-option``).
    storage_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """``--allow-global`` names are resolved here, once, before any file is read: a
        typo is a usage error that says so, whatever the checkpoint's format."""
        if self.allow_globals:
            for name in self.allow_globals:
                resolve_global(name)


class TensorSource(Protocol):
    path: str
    format: str
    files: tuple[str, ...]
    notes: list[str]

    def entries(self) -> Iterator[TensorInfo]: ...

    def read(self, name: str) -> np.ndarray:
        """The tensor's values as a new float64 numpy array (exact upcast)."""
        ...

    def scalars(self) -> dict[str, Any]:
        """``step`` and ``loss`` the checkpoint itself stores (empty when none)."""
        ...

    def training_state(self) -> Any:
        """The loaded training checkpoint (dicts, lists, tensors) in which an optimizer
        state may be found, or None for weights-only formats."""
        ...

    def close(self) -> None: ...


@dataclass
class SourceBase:
    """Shared bookkeeping for readers. Subclasses' ``entries``, ``read`` and ``weights``
    are wrapped by :func:`input_errors`, so a parse failure while listing or reading
    names the file and exits 2, whatever the reader."""

    path: str
    format: str
    files: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    #: True when the source holds only what its headers say (no open file, mmap or
    #: loaded tensor) and every read opens its own file: one instance may then serve many
    #: tasks, in several threads, and needs no closing (:func:`spectrum_cli.runs.dispatch.measure_task`).
    shareable = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in ("entries", "read", "weights"):
            fn = cls.__dict__.get(method)
            if callable(fn) and not getattr(fn, "_input_guarded", False):
                setattr(cls, method, _guarded(fn))

    def scalars(self) -> dict[str, Any]:
        """Weights-only formats store no step or loss."""
        return {}

    def training_state(self) -> Any:
        """Weights-only formats hold no optimizer state."""
        return None

    def close(self) -> None:  # pragma: no cover - trivial default
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemorySource:
    """Base of tensor sources held in memory (arrays, a live model's weights): no files,
    no stored step or loss, no optimizer state, nothing to close."""

    format = "memory"
    files: tuple[str, ...] = ()

    def __init__(self, path: str) -> None:
        self.path = path
        self.notes: list[str] = []

    def scalars(self) -> dict[str, Any]:
        return {}

    def training_state(self) -> Any:
        return None

    def close(self) -> None:
        pass


def sha256_files(paths: tuple[str, ...]) -> str:
    """One SHA-256 over the files' bytes, in the given order (1 MiB reads into one reused
    buffer: fresh 1 MiB ``bytes`` cost 2.1 s of CPU for a 2.1 GB checkpoint, 0.8 s of it
    the kernel mapping their pages, against 1.5 s). For URLs, over what the store says of
    each object's content instead (size and content tag:
    :func:`spectrum_cli.io.storage.identity_digest`), so nothing is downloaded twice: the
    identity pinned when the reader opened it, which every read was checked against
    (:func:`spectrum_cli.io.storage.pinned_digest`)."""
    if any(storage.is_url(p) for p in paths):
        return "remote:" + storage.pinned_digest(paths)
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    for p in paths:
        hash_file(h, p, buf)
    return h.hexdigest()


def hash_file(h: Any, path: str, buf: bytearray | None = None) -> None:
    """Feed the bytes of the local file ``path`` to the hash ``h``: exactly the size its
    ``stat`` gave at the open, read into ``buf`` (reused; 1 MiB when not given). A file
    whose size changes meanwhile is an InputError, not a hash of a moving target."""
    buf = buf if buf is not None else bytearray(1 << 20)
    view = memoryview(buf)
    with input_errors(path), open_regular(path) as fh:
        size = file_size(fh)
        offset = 0
        while offset < size and (n := read_into(fh, offset,
                                                view[:min(len(buf), size - offset)])):
            h.update(view[:n])
            offset += n
        if offset != size or read_into(fh, offset, view[:1]):
            raise InputError(f"{path}: its size changed while it was read "
                             f"({size} bytes at the start); refusing it")


def total_size(paths: tuple[str, ...]) -> int:
    return sum(require_regular(p).st_size for p in paths)


def file_size(fh: IO[bytes]) -> int:
    """The size of an open file: ``fstat`` for local files, the object's size otherwise."""
    try:
        return os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return int(fh.size)  # fsspec file objects know their size


def read_at(fh: IO[bytes], offset: int, n: int) -> bytes:
    """``n`` bytes at ``offset``: ``pread`` on local files (no shared file position),
    one ranged read on remote ones."""
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fh.seek(offset)
        return fh.read(n)
    return os.pread(fd, n, offset)


def read_into(fh: IO[bytes], offset: int, buf: Any) -> int:
    """Fill the writable buffer ``buf`` with the bytes at ``offset``; how many were read
    (fewer only at the end of the file). Local files: ``preadv`` straight into ``buf``,
    which the caller reuses, where a fresh ``bytes`` per read is fresh memory the kernel
    maps page by page (a 4 MiB read: ~1000 page faults)."""
    view = memoryview(buf).cast("B")
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fd = None
    if fd is None or not hasattr(os, "preadv"):
        data = read_at(fh, offset, len(view))
        view[:len(data)] = data
        return len(data)
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


@dataclass(frozen=True)
class Probe:
    """What a reader may look at to decide: never more than 64 bytes of a file."""

    path: str
    is_dir: bool
    size: int = 0
    head: bytes = b""

    def zip_names(self) -> list[str]:
        """The member names of a zip archive (InputError if it is a damaged one)."""
        try:
            with open_regular(self.path, block=storage.ZIP_BLOCK) as fh, \
                    zipfile.ZipFile(fh) as zf:
                return zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"{self.path}: corrupt or truncated zip archive ({exc})") \
                from None


@dataclass(frozen=True)
class FolderMarker:
    """What makes a folder one checkpoint that a reader opens whole (a reader's
    ``folder_markers``; :mod:`spectrum_cli.io.layout` derives folder discovery from
    them): its name matches ``name`` (a regular expression matched against the whole
    name; None: any name) and, when ``holds`` names files, it holds one of them directly.
    At least one of the two must be given (a marker never takes every folder).

    ``kind`` names such checkpoints (``watch`` records it); ``shown`` describes them in
    messages ("checkpoint-<step>/ folders"); ``missing(path, files)`` says what a folder
    still lacks to be complete (its weights, a shard) given ``files``, its files by
    relative name, or None once it is complete (None: complete as soon as it is
    marked). A marker that says "folder holding F" is complete once F is there, so a
    format that writes F last (DCP's ``.metadata``) needs no ``missing``."""

    kind: str
    shown: str
    name: str | None = None
    holds: tuple[str, ...] = ()
    missing: Callable[[str, Mapping[str, Any]], str | None] | None = None

    def __post_init__(self) -> None:
        if self.name is None and not self.holds:
            raise ValueError(f"folder marker {self.kind!r}: give a name pattern, files it "
                             "holds, or both")
        if isinstance(self.holds, str):
            object.__setattr__(self, "holds", (self.holds,))

    def named(self, name: str) -> bool:
        """Whether a folder's name fits (always, without a name pattern)."""
        return self.name is None or re.fullmatch(self.name, name) is not None

    def marks(self, name: str, has: Callable[[str], bool]) -> bool:
        """Whether the folder ``name`` is such a checkpoint; ``has(file)`` says whether
        it holds ``file`` (asked only for :attr:`holds`, and only when the name fits)."""
        return self.named(name) and (not self.holds or any(has(h) for h in self.holds))

    def lacks(self, path: str, files: Mapping[str, Any]) -> str | None:
        """What the marked folder ``path`` still lacks (see :attr:`missing`), or None."""
        return None if self.missing is None else self.missing(path, files)
