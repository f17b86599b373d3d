"""The result cache: per-checkpoint and per-tensor records as ``<key>.json`` files, keyed
by the content hash of the checkpoint's files, the settings and spectrum's own code
(:func:`code_fingerprint`); results travel through :mod:`spectrum_cli.runs.codec`.

Never fatal: an entry that cannot be read or is not a record of this format is a miss
(a damaged one with one warning); an unusable folder is one warning and the run goes on
without a cache. Entries are written atomically."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from spectrum_cli.core.results import TensorResult
from spectrum_cli.io import storage
from spectrum_cli.io.base import hash_file
from spectrum_cli.report.document import (
    ANALYSIS_SPEC,
    is_metric_value,
    json_safe,
    mismatch,
    tensor_entry,
)
from spectrum_cli.runs.codec import decode, encode
from spectrum_cli.runs.indicators import indicators

_FINGERPRINT: list[str] = []


def code_fingerprint() -> str:
    """SHA-256 of the version and every source file of spectrum_cli and its backends."""
    if not _FINGERPRINT:
        import spectrum_backends

        import spectrum_cli

        h = hashlib.sha256(spectrum_cli.__version__.encode())
        for pkg in (spectrum_cli, spectrum_backends):
            root = Path(pkg.__file__).parent
            for f in sorted(root.rglob("*.py")):
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
        _FINGERPRINT.append(h.hexdigest()[:16])
    return _FINGERPRINT[0]


#: Version of a cache entry's layout: entries of another version are misses.
CACHE_FORMAT = 2


#: A cache entry larger than this is not read (it is not one of ours).
CACHE_ENTRY_MAX = 1 << 30


Warn = Callable[[str], None]


def _open_regular(path: Path, limit: int | None = None) -> int:
    """A read-only descriptor of a regular file (never blocks on a FIFO or a device)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if limit is not None and st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def content_hash(path: str) -> str:
    """SHA-256 of every file of a checkpoint (one file, or a folder's files in order); for
    a URL, of what the store says of each object's content (size, ETag: see
    :mod:`spectrum_cli.io.storage`), so that nothing is downloaded to hash it."""
    if storage.is_url(path):
        return "remote-" + storage.identity_digest(storage.objects(path))
    p = Path(path)
    files = [p] if not p.is_dir() else sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    for f in files:
        h.update(os.fsencode(f.relative_to(p) if p.is_dir() else f.name))
        hash_file(h, str(f), buf)  # regular files only, /proc's refused, stat size exactly
    return h.hexdigest()


def cacheable(record: dict[str, Any]) -> bool:
    """Whether a computed record may be cached: it is "ok", none of its tensors failed to
    be read (a transient I/O failure must not be remembered), and the checkpoint's
    identity did not change while it was analysed (an object replaced between the
    listing the key came from and the reader's pinned open: the values are the new
    object's, the key the old one's)."""
    return (record["status"] == "ok" and not record["document"].get("errors")
            and record.get("identity_changed") is not True)


def cache_key(path: str, job: Any) -> str:
    """The cache key of one checkpoint under ``job``: its content and the settings. Needs
    neither torch nor the user's code (``--model`` is a name here, not an import)."""
    return f"{content_hash(path)}-{job.settings_key()}"


def default_cache_dir() -> Path:
    base = os.environ.get("SPECTRUM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "spectrum")
    return Path(base) / "batch"


def _stderr_warning(message: str) -> None:
    """The default warning sink (the CLI passes its own): stderr, control characters
    shown as ``?``."""
    shown = "".join("?" if ord(c) < 32 or ord(c) == 127 else c for c in message)
    print(f"warning: {shown}", file=sys.stderr, flush=True)


class ResultCache:
    """Per-checkpoint records as ``<key>.json`` files in one folder.

    Never fatal: an entry that cannot be read or is not a record of this format is a
    miss; the first failure to create the folder or write into it is one warning, after
    which the run goes on without writing (reads go on where the folder is readable).
    Entries are written to a temporary file beside them and renamed into place; a failed
    write leaves no temporary file behind.
    """

    def __init__(self, folder: str | os.PathLike[str] | None, warn: Warn | None = None
                 ) -> None:
        self.warn = warn or _stderr_warning
        self.folder = Path(folder) if folder is not None else None
        self.readable = self.writable = self.folder is not None
        self.warnings: list[str] = []
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
                self.readable = self.writable = False
                self._disable(exc)

    @property
    def enabled(self) -> bool:
        return self.readable

    def entry(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record of ``key``, or None (absent, unreadable or not a record).
        An entry that is there but damaged (not JSON, or not fitting the record's
        schema: a field missing, a value of the wrong type) is a miss with one warning;
        the result computed again overwrites it. An entry of another cache format (an
        older spectrum's) is a miss without a warning."""
        if not self.readable:
            return None
        path = self.entry(key)
        try:
            with os.fdopen(_open_regular(path, CACHE_ENTRY_MAX), "rb") as fh:
                record = json.loads(fh.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, UTF-8
            if isinstance(exc, OSError) and path.is_dir():
                return None  # a folder in the way: put() says so
            why = "not JSON" if not isinstance(exc, OSError) else \
                (exc.strerror or str(exc)).lower()
            self._damaged(path, why)
            return None
        if isinstance(record, dict) and isinstance(record.get("cache_format"), int) \
                and record["cache_format"] != CACHE_FORMAT:
            return None
        problem = record_problem(record, key)
        if problem is not None:
            self._damaged(path, problem)
            return None
        return record

    def _damaged(self, path: Path, why: str) -> None:
        self.warn(f"cache entry {path} is damaged ({why}); it is ignored and the "
                  "checkpoint analysed again")

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Store ``record`` under ``key`` atomically (best effort, see the class)."""
        if not self.writable:
            return
        target = self.entry(key)
        text = json.dumps(dict(record, cache_format=CACHE_FORMAT))
        try:
            self._replace(target, text)
        except IsADirectoryError:  # a folder where the entry goes: left alone
            self.warn(f"cache entry {target} is a folder; this result is not cached")
        except OSError as exc:
            self.writable = False
            self._disable(exc)

    def _replace(self, target: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            if target.is_dir() and not target.is_symlink():
                with contextlib.suppress(OSError):
                    target.rmdir()  # an empty folder in the way is removed, no other
                if target.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "a folder", str(target))
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _disable(self, exc: Exception) -> None:
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            why = "not a folder"
        else:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        message = (f"cache folder {self.folder} is not usable ({why}); results are not "
                   "cached in this run")
        self.warnings.append(message)
        self.warn(message)


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def valid_record(record: Any, key: str) -> bool:
    """Whether ``record`` is a complete result of this cache format for ``key``."""
    return record_problem(record, key) is None


#: What a cached record must hold besides its document (which must fit the analysis
#: document's schema, :data:`spectrum_cli.report.document.ANALYSIS_SPEC`).
def _record_spec() -> dict[str, Any]:
    return {"path": str, "status": str, "key": str,
            "violations": [{"condition": str, "tensor": str, "value": is_metric_value,
                            "?metric": str}],
            "warnings": [str], "document": dict}


def record_problem(record: Any, key: str) -> str | None:
    """Why ``record`` is not a complete result of this cache format for ``key`` (the
    first field that is missing or has the wrong type), or None when it is one."""
    if not isinstance(record, dict):
        return "not a record"
    if record.get("cache_format") != CACHE_FORMAT:
        return f"cache format {record.get('cache_format')!r}, not {CACHE_FORMAT}"
    where = mismatch(record, _record_spec(), "")
    if where is not None:
        return f"{where.lstrip('.') or 'the record'} is missing or has the wrong type"
    if record["status"] != "ok":
        return f"status {record['status']!r}"
    if record["key"] != key:
        return "the key it holds is another checkpoint's"
    if "results" in record:  # one stored tensor's results (pipeline.store_results)
        if not isinstance(record["results"], list):
            return "results is missing or has the wrong type"
        where = mismatch(record["document"], {"tensors": ANALYSIS_SPEC["tensors"]},
                          "document")
        return None if where is None else f"{where} is missing or has the wrong type"
    where = mismatch(record["document"], ANALYSIS_SPEC, "document")
    if where is not None:
        return f"{where} is missing or has the wrong type"
    if not (_is_number_or_none(record.get("step")) and _is_number_or_none(record.get("loss"))):
        return "step or loss is not a number"
    for t in record["document"]["tensors"]:
        if t["nonnormal"] is not None and not isinstance(
                t["nonnormal"].get("pseudospectral_radius", []), list):
            return f"the nonnormal entry of tensor {t['name']!r} has the wrong shape"
    try:
        indicators(record["document"])
    except (KeyError, TypeError, AttributeError, ValueError):
        return "its indicators cannot be computed"
    return None


def cached_results(cache: Any, key: str) -> list[Any] | None:
    """The results cached under ``key``, or None (absent, damaged or not ours)."""
    record = cache.get(key)
    if record is None or not isinstance(record.get("results"), list):
        return None
    try:
        return [decode(r) for r in record["results"]]
    except (TypeError, ValueError, KeyError, AttributeError, ImportError, RecursionError):
        return None


def store_results(cache: Any, key: str, results: list[Any], path: str = "") -> None:
    """Cache one stored tensor's results (only when every matrix of it succeeded: a
    failure is tried again next time), in the layout batch's ResultCache accepts."""
    if not results or not all(isinstance(r, TensorResult) for r in results):
        return
    try:
        encoded = [encode(r) for r in results]
    except TypeError:  # something the codec does not know: not cached
        return
    cache.put(key, {"path": path, "status": "ok", "key": key, "step": None, "loss": None,
                    "violations": [], "warnings": [], "results": encoded,
                    "document": {"tensors": [json_safe(tensor_entry(r)) for r in results]}})

