"""safetensors reader files, numpy only.

The format is an 8-byte little-endian header length N, N bytes of JSON
(``name -> {dtype, shape, data_offsets}``), then the raw little-endian data
(https://huggingface.co/docs/safetensors). We parse it ourselves so that reading needs
neither torch nor a whole-file load: every offset is checked against the file size up
front (a truncated file fails at open, naming the first tensor it cuts), and each tensor
is read when asked for, in pieces decoded straight into the float64 result. bfloat16 and
float8 are upcast exactly.

From object storage each piece is one ranged GET of :data:`REMOTE_CHUNK_BYTES`, and the
next GET runs in a thread while this piece is decoded (double buffering): the store's
latency and transfer overlap the decoding instead of adding to it.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Iterator

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.io import storage
from spectrum_cli.io.base import (SourceBase, TensorInfo, check_shape, file_size,
                                  open_regular, read_at, read_into)

_MAX_HEADER = 100 * 1024 * 1024
#: Bytes read at a time from a local file, into a buffer each thread reuses.
CHUNK_BYTES = 4 * 1024 * 1024
#: Stored bytes decoded at a time by :meth:`SafetensorsSource.read`: the bfloat16
#: decoding's uint32 temporary (a reused buffer too) stays in the core's cache (256 KiB:
#: 0.13 s per 92 MB bf16 tensor on one core, against 0.18 s for fresh 4 MiB slices).
DECODE_BYTES = 256 * 1024
#: From object storage each piece is one ranged GET (fewer, larger requests); two are in
#: memory at once, the one decoded and the one arriving.
REMOTE_CHUNK_BYTES = 16 * 1024 * 1024

# safetensors dtype -> (our dtype name, numpy storage dtype)
_DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("float64", "<f8"),
    "F32": ("float32", "<f4"),
    "F16": ("float16", "<f2"),
    "BF16": ("bfloat16", "<u2"),
    "F8_E4M3": ("float8_e4m3fn", "u1"),
    "F8_E5M2": ("float8_e5m2", "u1"),
    "I64": ("int64", "<i8"),
    "I32": ("int32", "<i4"),
    "I16": ("int16", "<i2"),
    "I8": ("int8", "i1"),
    "U64": ("uint64", "<u8"),
    "U32": ("uint32", "<u4"),
    "U16": ("uint16", "<u2"),
    "U8": ("uint8", "u1"),
    "BOOL": ("bool", "?"),
    "C64": ("complex64", "<c8"),
}


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """True when the first bytes are a plausible safetensors header."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{"


@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    file: str
    start: int
    nbytes: int
    storage: str


def _float8_table(exp_bits: int, man_bits: int, bias: int, ieee_special: bool) -> np.ndarray:
    """float64 value of every byte of an 8-bit float (OCP FP8 spec, 2023)."""
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    normal = (1.0 + man / (1 << man_bits)) * np.exp2(exp - bias)
    subnormal = (man / (1 << man_bits)) * np.exp2(1 - bias)
    val = sign * np.where(exp == 0, subnormal, normal)
    top = (1 << exp_bits) - 1
    if ieee_special:  # e5m2: exponent all ones is inf (mantissa 0) or NaN
        val = np.where((exp == top) & (man == 0), sign * np.inf, val)
        val = np.where((exp == top) & (man != 0), np.nan, val)
    else:  # e4m3fn: no infinities, only S.1111.111 is NaN
        val = np.where((exp == top) & (man == (1 << man_bits) - 1), np.nan, val)
    return val


_F8 = {
    "float8_e4m3fn": _float8_table(4, 3, 7, ieee_special=False),
    "float8_e5m2": _float8_table(5, 2, 15, ieee_special=True),
}


def decode_into(raw: np.ndarray, dtype: str, out: np.ndarray) -> None:
    """Write the exact float64 values of the stored elements ``raw`` into ``out`` (of
    their size). Plain dtypes cast during the assignment; bfloat16 is the float32 with the
    same top 16 bits, built in this thread's reused buffer (which grows to the largest
    ``raw`` seen: :meth:`SafetensorsSource.read` passes :data:`DECODE_BYTES` at a time);
    float8 is a table lookup. NaN payloads are kept quietly: the caller's screen names
    them."""
    with np.errstate(invalid="ignore"):
        if dtype == "bfloat16":
            bits = _buffer("bits", raw.size, np.uint32)
            np.left_shift(raw, 16, dtype=np.uint32, out=bits)
            out[...] = bits.view(np.float32)
        elif dtype in _F8:
            np.take(_F8[dtype], raw, out=out)
        else:
            out[...] = raw


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """The exact float64 values of stored elements (:func:`decode_into`)."""
    out = np.empty(raw.shape, dtype=np.float64)
    decode_into(raw.reshape(-1), dtype, out.reshape(-1))
    return out


_scratch = threading.local()


def _buffer(kind: str, n: int, dtype: type) -> np.ndarray:
    """This thread's reusable buffer ``kind``: its first ``n`` elements. Reused memory is
    already mapped, where a fresh array per piece makes the kernel map (and zero) every
    page again."""
    buf = getattr(_scratch, kind, None)
    if buf is None or buf.size < n:
        buf = np.empty(n, dtype=dtype)
        setattr(_scratch, kind, buf)
    return buf[:n]


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook``: a name given twice is ambiguous, hence corrupt."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the name {key!r} appears twice")
        out[key] = value
    return out


def _offsets(path: str, name: str, spec: object) -> tuple[int, int]:
    offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets)):
        raise InputError(f"{path}: header entry for {name!r}: data_offsets must be two "
                         f"integers, got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise InputError(f"{path}: header entry for {name!r}: data_offsets {offsets} are "
                         "negative or reversed")
    return begin, end


def _entry(path: str, name: str, spec: object, data_start: int, size: int) -> _Entry:
    """One validated header entry; every field is checked before it is used."""
    if not name:
        raise InputError(f"{path}: header has a tensor with an empty name")
    if not isinstance(spec, dict):
        raise InputError(f"{path}: header entry for {name!r} is not an object")
    st_dtype = spec.get("dtype")
    if not isinstance(st_dtype, str) or st_dtype not in _DTYPES:
        raise InputError(f"{path}: header entry for {name!r}: unknown dtype {st_dtype!r}")
    dtype, storage = _DTYPES[st_dtype]
    shape = check_shape(path, name, spec.get("shape"))
    begin, end = _offsets(path, name, spec)
    nbytes = math.prod(shape) * np.dtype(storage).itemsize
    if end - begin != nbytes:
        raise InputError(f"{path}: header entry for {name!r} has {end - begin} bytes, "
                         f"shape {shape} of {st_dtype} needs {nbytes}")
    if data_start + end > size:
        raise InputError(f"{path}: truncated: tensor {name!r} ends at byte "
                         f"{data_start + end} but the file has {size} bytes")
    return _Entry(TensorInfo(name, shape, dtype), path, data_start + begin, nbytes, storage)


def _check_overlaps(path: str, entries: list[_Entry]) -> None:
    """Tensors may not share bytes (``entries`` sorted by start)."""
    last: _Entry | None = None
    for cur in entries:
        if not cur.nbytes:
            continue
        if last is not None and cur.start < last.start + last.nbytes:
            raise InputError(f"{path}: tensors {last.info.name!r} and {cur.info.name!r} "
                             "overlap in the file")
        if last is None or cur.start + cur.nbytes > last.start + last.nbytes:
            last = cur


def _open(path: str, pinned: storage.Pin | None) -> IO[bytes]:
    return storage.open_file(path, pinned=pinned) if pinned is not None \
        else open_regular(path)


def read_header(path: str, pinned: storage.Pin | None = None) -> list[_Entry]:
    """Parse and validate one safetensors file's header: a JSON object of entries with a
    known dtype, a shape of non-negative ints, integer offsets inside the file that match
    the shape's byte count and do not overlap. Anything else is an :class:`InputError`.
    ``pinned``: the version of the object to read (:func:`spectrum_cli.io.storage.pin`)."""
    with _open(path, pinned) as fh:
        size = file_size(fh)
        head = fh.read(8)
        if len(head) < 8:
            raise InputError(f"{path}: too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise InputError(f"{path}: truncated or not safetensors (header of {n} bytes "
                             f"in a {size}-byte file)")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise InputError(f"{path}: corrupt safetensors header (JSON nested too "
                         "deeply)") from None
    except ValueError as exc:  # JSON and UTF-8 errors, duplicate names
        raise InputError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + n
    entries = [_entry(path, name, spec, data_start, size)
               for name, spec in header.items() if name != "__metadata__"]
    entries.sort(key=lambda e: (e.start, e.nbytes))  # file order: sequential reads
    _check_overlaps(path, entries)
    return entries


class SafetensorsSource(SourceBase):
    """One safetensors file (shards are combined by :mod:`spectrum_cli.io.composite`)."""

    shareable = True  # parsed header only; each read opens the file

    def __init__(self, path: str) -> None:
        super().__init__(path, "safetensors", (path,))
        # An object's version is pinned before its header is read: the header and every
        # tensor read later come from that version (or the read fails, naming it).
        self._pin = storage.pin(path) if storage.is_url(path) else None
        self._entries = {e.info.name: e for e in read_header(path, self._pin)}

    def entries(self) -> Iterator[TensorInfo]:
        for e in self._entries.values():
            yield e.info

    def read(self, name: str) -> np.ndarray:
        """Decode piece by piece straight into the float64 result, so the peak is the
        result plus a piece or two (:func:`_pieces`), not the result plus the raw tensor."""
        e = self._entries[name]
        itemsize = np.dtype(e.storage).itemsize
        count = e.nbytes // itemsize
        out = np.empty(count, dtype=np.float64)
        step = max(1, DECODE_BYTES // itemsize)  # elements decoded at a time
        with _open(e.file, self._pin) as fh:
            for first, buf in _pieces(fh, e, remote=self._pin is not None):
                raw = np.frombuffer(buf, dtype=e.storage)
                for i in range(0, raw.size, step):
                    part = raw[i:i + step]
                    decode_into(part, e.info.dtype, out[first + i:first + i + part.size])
                del raw, buf  # before the next piece arrives: two pieces at most
        return out.reshape(e.info.shape)


def _pieces(fh: IO[bytes], e: _Entry, remote: bool
            ) -> Iterator[tuple[int, bytes | np.ndarray]]:
    """``(first element, bytes)`` of consecutive pieces of the tensor ``e``'s bytes:
    :data:`CHUNK_BYTES` local reads into this thread's reused buffer (valid until the
    next piece is asked for), or :data:`REMOTE_CHUNK_BYTES` ranged GETs of which the
    next is fetched by a thread while the caller decodes the current one. A piece
    shorter than asked for is an :class:`InputError` (the file changed underneath)."""
    itemsize = np.dtype(e.storage).itemsize
    size = max(1, (REMOTE_CHUNK_BYTES if remote else CHUNK_BYTES) // itemsize) * itemsize
    spans = [(off, min(size, e.nbytes - off)) for off in range(0, e.nbytes, size)]

    def short(got: int, n: int) -> None:
        if got != n:
            raise InputError(f"{e.file}: short read of {e.info.name!r} (file changed "
                             "underneath?)")

    def fetch(off: int, n: int) -> bytes:
        buf = read_at(fh, e.start + off, n)
        short(len(buf), n)
        return buf

    if not remote:  # into this thread's reused buffer: the caller decodes it at once
        for off, n in spans:
            piece = _buffer("piece", n, np.uint8)
            short(read_into(fh, e.start + off, piece), n)
            yield off // itemsize, piece
        return
    if not spans:
        return
    # One thread, one GET ahead; leaving early (an error, a closed generator) waits for
    # the GET in flight, then the file closes.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spectrum-prefetch") as pool:
        ahead = pool.submit(fetch, *spans[0])
        for k, (off, _) in enumerate(spans):
            buf = ahead.result()
            if k + 1 < len(spans):
                ahead = pool.submit(fetch, *spans[k + 1])
            yield off // itemsize, buf
            del buf
