"""Object storage: ``s3://``, ``gs://``, ``hf://`` and other fsspec URLs wherever a path works.

Needs the optional extra ``spectrum-cli[remote]`` (fsspec, s3fs); nothing here imports
fsspec until a URL is met, and a plain path never goes through fsspec. Local files keep
the guards of :mod:`spectrum_cli.io.base` (regular files only, opened non-blocking).

Credentials and endpoint are the storage library's own (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``...); ``--storage-option
KEY=VALUE`` adds filesystem arguments (``endpoint_url=http://127.0.0.1:9000``,
``anon=true``, ``client_kwargs.region_name=eu-west-1``). Storage options come from the
command line only: a configuration file beside a checkpoint cannot point spectrum, and
your credentials, at another endpoint.

Reads are ranged: a file object opened here fetches only the bytes asked for
(``cache_type="none"``: each ``read(n)`` is one ranged GET of n bytes), so reading a
safetensors header and then one tensor transfers the header and that tensor only. Zip
archives (torch files, .npz), which read many small pieces, use a read-ahead cache of
:data:`ZIP_BLOCK` bytes.

A remote object's identity for the result cache is its URL, size and the store's content
tag (S3's ETag, GCS's md5/crc32c, a version id where there is one), not a hash of its
bytes: hashing would download everything before any work starts.

Pinned reads: the identity is read once, when an object is opened (:func:`pin`), and every
ranged read checks it (S3: ``If-Match`` and the response's ETag; other stores: the
object's tag after the read), so an object replaced between two reads is an
:class:`ObjectChanged` error naming it, never a matrix stitched from two versions; the
cache identity (:func:`pinned_digest`) is that pinned one. A ranged read never takes more
bytes than it asked for (a server that ignores ``Range`` is refused before its body is
read), and every network wait has a timeout (S3: ``SPECTRUM_STORAGE_TIMEOUT`` seconds to
connect and per read, default :data:`DEFAULT_TIMEOUT`, :data:`ATTEMPTS` attempts).

Tasks on other machines (the Dask executor) carry this process's storage settings:
:func:`snapshot` (the ``--storage-option`` values, the storage libraries' variables such as
``AWS_*``, and the pins of the objects being read), which the worker applies around the
task (:func:`applied`) and then restores.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import re
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

from spectrum_cli.core.errors import InputError, UsageError

#: ``scheme://``: a URL for fsspec (a Windows drive letter ``C:`` is not a scheme).
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
#: Read-ahead for zip archives (many small reads of the central directory and members).
ZIP_BLOCK = 4 << 20
#: The options given with ``--storage-option`` in this process (see :func:`configure`).
_OPTIONS: dict[str, Any] = {}
#: Seconds to connect and per read of an S3 request (unless ``--storage-option
#: config_kwargs.connect_timeout=``/``read_timeout=`` say otherwise).
TIMEOUT_ENV = "SPECTRUM_STORAGE_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
#: Attempts of one S3 request (botocore's; s3fs's own retries are set to the same).
ATTEMPTS = 2
#: Variables of the storage libraries a task carries to the worker that runs it.
ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCSFS_", "AZURE_", "FSSPEC_")
ENV_NAMES = ("HF_TOKEN", "HF_ENDPOINT", "HUGGING_FACE_HUB_TOKEN", TIMEOUT_ENV)


class StoreError(InputError):
    """The store could not serve an object (missing, refused, no credentials,
    unreachable, too slow): every task reading from it would fail alike. Each one made
    is remembered (:func:`store_errors`), so that a task runner can tell a failure of
    the store from a failure of one tensor even where the reader recorded it as the
    tensor's error."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        with _seen_lock:
            _seen[0] += 1
            _seen[1] = self


class ObjectChanged(StoreError):
    """An object no longer is the version pinned when it was opened."""


#: (how many StoreErrors this process made, the latest one).
_seen: list[Any] = [0, None]
_seen_lock = threading.Lock()


def store_errors() -> tuple[int, "StoreError | None"]:
    """How many :class:`StoreError` this process has made, and the latest: compare two
    calls to learn whether the store failed in between (and how)."""
    with _seen_lock:
        return _seen[0], _seen[1]


def is_url(path: Any) -> bool:
    """True for ``scheme://...`` other than ``file://`` (local paths stay local)."""
    m = _URL.match(str(path))
    return bool(m) and m.group(1).lower() != "file"


def local_path(path: str) -> str:
    """``file:///x`` -> ``/x``; anything else unchanged."""
    s = str(path)
    return s[len("file://"):] if s.lower().startswith("file://") else s


def parse_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> filesystem arguments. Dotted keys nest
    (``client_kwargs.region_name=x`` -> ``{"client_kwargs": {"region_name": "x"}}``);
    ``true``/``false``/``none``, integers and floats are converted, anything else stays a
    string. A malformed item is a :class:`UsageError`."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*",
                                       key):
            raise UsageError(f"--storage-option {item!r}: expected KEY=VALUE "
                             "(e.g. endpoint_url=http://127.0.0.1:9000)")
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"--storage-option {item!r}: {p} is both a value and a group")
        node[leaf] = _value(raw.strip())
    return out


def _value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def configure(items: tuple[str, ...] | list[str]) -> None:
    """Use these ``--storage-option`` items for every URL this process opens (a worker
    process calls it with the options its task carries)."""
    global _OPTIONS
    _OPTIONS = parse_options(items)


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    try:
        import fsspec
        from fsspec.core import split_protocol
    except ImportError:
        raise UsageError(f"{url}: reading URLs needs the remote extra: pip install "
                         "'spectrum-cli[remote]'") from None
    protocol, _ = split_protocol(url)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"{url}: no filesystem for {protocol}:// ({exc}); for s3:// "
                         "install 'spectrum-cli[remote]'") from None
    options = _with_defaults(protocol, _OPTIONS)
    env = tuple(sorted(storage_env().items()))
    key = (os.getpid(), protocol, json.dumps(options, sort_keys=True, default=str), env)
    with _fs_lock:
        fs = _filesystems.get(key)
    if fs is None:
        try:
            # Our own cache: fsspec's would hand a filesystem made under other variables
            # (another client's credentials on a shared Dask worker) to this task.
            fs = cls(**options, skip_instance_cache=True)
        except TypeError as exc:
            raise UsageError(f"--storage-option: {protocol}:// does not take these options "
                             f"({exc})") from None
        if protocol in ("s3", "s3a"):
            fs.retries = ATTEMPTS  # s3fs's retries around botocore's
        with _fs_lock:
            fs = _filesystems.setdefault(key, fs)
            while len(_filesystems) > 16:
                del _filesystems[next(iter(_filesystems))]
    return fs, cls._strip_protocol(url)


_filesystems: dict[tuple, Any] = {}
_fs_lock = threading.Lock()


def timeout() -> float:
    """Seconds to connect and per read (``SPECTRUM_STORAGE_TIMEOUT``, default 30)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not 0 < value < 1e6:
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def _with_defaults(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    """S3: connect and read timeouts and bounded attempts unless the options (or
    ``AWS_MAX_ATTEMPTS``) say otherwise: an endpoint that accepts and never answers
    costs at most attempts x timeout, not botocore's 60 s x 5 x s3fs's 5."""
    if protocol not in ("s3", "s3a"):
        return options
    out = dict(options)
    config = dict(out.get("config_kwargs") or {})
    t = timeout()
    config.setdefault("connect_timeout", t)
    config.setdefault("read_timeout", t)
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        config.setdefault("retries", {"total_max_attempts": ATTEMPTS})
    out["config_kwargs"] = config
    return out


def endpoint(url: str) -> str:
    """The endpoint a URL is read from, when one is set (S3's ``endpoint_url`` option or
    ``AWS_ENDPOINT_URL``), else the scheme's default: ``""``."""
    if url.split("://", 1)[0].lower() not in ("s3", "s3a"):
        return ""
    return str(_OPTIONS.get("endpoint_url")
               or (_OPTIONS.get("client_kwargs") or {}).get("endpoint_url")
               or os.environ.get("AWS_ENDPOINT_URL_S3")
               or os.environ.get("AWS_ENDPOINT_URL") or "")


# ---- the storage settings a task carries to another machine ---------------------------

def storage_env() -> dict[str, str]:
    """This process's variables that the storage libraries read (``AWS_*``...)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}


@dataclass(frozen=True)
class Snapshot:
    """This process's storage settings, for a task to apply where it runs: the
    ``--storage-option`` values, the storage variables, the pins of the objects open.
    Its repr names what it holds, never a value (they include secrets)."""

    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    pins: tuple["Pin", ...] = ()

    def key(self) -> str:
        return json.dumps([self.options, self.env], sort_keys=True, default=str)

    def __repr__(self) -> str:
        return (f"Snapshot(options={sorted(self.options)}, env={sorted(self.env)}, "
                f"pins={[p.url for p in self.pins]})")


def snapshot() -> Snapshot:
    """This process's storage settings (see :class:`Snapshot`)."""
    with _pins_lock:
        pins = tuple({**dict(_PINS.items()), **_APPLIED}.values())
    return Snapshot(json.loads(json.dumps(_OPTIONS, default=str)), storage_env(), pins)


_applied = threading.Condition()
_active: dict[str, Any] = {"key": None, "count": 0, "saved": {}, "options": {}}


@contextmanager
def applied(snap: Snapshot) -> Iterator[None]:
    """Within the block this process reads URLs with ``snap``'s options, variables and
    pins; afterwards it is as it was. Threads applying the same settings share them;
    a thread with other settings (another client's task on a shared worker) waits."""
    global _OPTIONS
    key = snap.key()
    with _applied:
        while _active["count"] and _active["key"] != key:
            _applied.wait()
        if not _active["count"]:
            _active.update(key=key, saved={k: os.environ.get(k) for k in snap.env},
                           options=_OPTIONS)
            os.environ.update(snap.env)
            _OPTIONS = dict(snap.options)
        _active["count"] += 1
        with _pins_lock:
            for p in snap.pins:
                _APPLIED.setdefault(p.url, p)
    try:
        yield
    finally:
        with _applied:
            _active["count"] -= 1
            if not _active["count"]:
                with _pins_lock:
                    _APPLIED.clear()
                for k, v in _active["saved"].items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                _OPTIONS = _active["options"]
                _active.update(key=None, saved={}, options={})
                _applied.notify_all()


def _remote_error(url: str, exc: BaseException) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return StoreError(f"{url}: no such file or directory")
    if isinstance(exc, PermissionError):
        return StoreError(f"{url}: access denied ({exc})")
    text = str(exc).strip().splitlines()
    where = endpoint(url)
    return StoreError(f"{url}: cannot read it ({type(exc).__name__}"
                      f"{': ' + text[0][:200] if text else ''})"
                      f"{f' (endpoint {where})' if where else ''}")


@contextmanager
def _store(url: str) -> Iterator[tuple[Any, str]]:
    """The filesystem of ``url`` and the path in it; any failure of the store inside the
    block (missing, refused, unreachable) is an InputError naming the URL."""
    fs, path = filesystem(url)
    try:
        yield fs, path
    except InputError:
        raise
    except TypeError as exc:  # some filesystems take their options only at first use
        if _OPTIONS and "keyword argument" in str(exc):
            raise UsageError(f"--storage-option: {url.split('://', 1)[0]}:// does not take "
                             f"these options ({exc})") from None
        raise _remote_error(url, exc) from None
    except Exception as exc:  # noqa: BLE001 - any failure of the store names the URL
        raise _remote_error(url, exc) from None


def info(url: str) -> dict[str, Any]:
    """The store's description of ``url`` (``type`` is ``file`` or ``directory``;
    ``size``). A missing object, refused access or unreachable store is an InputError."""
    with _store(url) as (fs, path):
        return fs.info(path)


def is_dir(url: str) -> bool:
    return info(url).get("type") == "directory"


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001 - unreachable counts as absent; reading says why
        return False


def require_file(url: str) -> int:
    """The size of ``url`` when it is a file (object); anything else is an InputError."""
    meta = info(url)
    if meta.get("type") != "file":
        raise InputError(f"{url}: a directory, not a file; refusing to read it")
    return int(meta.get("size") or 0)


# ---- pinned objects -------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Pin:
    """What the store said of an object when it was opened: every later read of it must
    find the same version (``etag``, ``version``)."""

    url: str
    size: int
    etag: str
    version: str | None
    meta: dict[str, Any] = field(repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "size": self.size, "etag": self.etag,
                "version": self.version, "meta": _plain(self.meta)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with only what pickles and hashes alike everywhere (what
    :func:`signature` and :func:`modified` read)."""
    return {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
            for k, v in meta.items()}


#: The latest pin of each object opened in this process (while a reader holds it): the
#: identity :func:`pinned_digest` reports and :func:`snapshot` carries to other machines.
_PINS: "weakref.WeakValueDictionary[str, Pin]" = weakref.WeakValueDictionary()
#: Pins applied from the client of the task running here (:func:`applied`): used by
#: every open of those objects while the task runs.
_APPLIED: dict[str, Pin] = {}
_pins_lock = threading.Lock()


def _etag(meta: dict[str, Any]) -> str:
    return next((str(meta[k]) for k in ("ETag", "etag", "md5Hash", "crc32c")
                 if meta.get(k)), "")


def pin(url: str) -> Pin:
    """The identity of the object ``url`` its reads are checked against: the client's
    (applied around a task, :func:`applied`), else what the store says of it now,
    remembered as the latest pin of ``url`` (:func:`pinned_digest`)."""
    with _pins_lock:
        held = _APPLIED.get(url)
    if held is not None:
        return held
    with _store(url) as (fs, path):
        fs.invalidate_cache(path)  # a listing's metadata may predate a replacement
        meta = fs.info(path)
    if meta.get("type") != "file":
        raise InputError(f"{url}: a directory, not a file; refusing to read it")
    version = meta.get("VersionId") or meta.get("version_id") or None
    made = Pin(url, int(meta.get("size") or 0), _etag(meta),
               str(version) if version and str(version) != "null" else None, meta)
    with _pins_lock:
        _PINS[url] = made
    return made


def _held(url: str) -> Pin | None:
    with _pins_lock:
        return _APPLIED.get(url) or _PINS.get(url)


def pinned_digest(urls: tuple[str, ...] | list[str]) -> str:
    """:func:`identity_digest` over the pinned identities of ``urls`` (those the open
    readers' reads are checked against), not over a fresh look at the store."""
    pins = [_held(u) or pin(u) for u in urls]  # held until the digest is made
    return identity_digest({p.url: p.meta for p in pins})


def _changed(url: str, p: Pin, now: str | None) -> ObjectChanged:
    was = p.etag or p.version or "?"
    return ObjectChanged(f"{url}: the object changed while it was being read (ETag {was} "
                         f"when opened{f', {now} now' if now else ''}); refusing to mix two "
                         "versions of it: read it again once it is no longer being written")


def _oversized(url: str, got: Any, asked: int) -> StoreError:
    where = endpoint(url)
    return StoreError(f"{url}: the store answered a ranged read of {asked} bytes with "
                      f"{got} bytes (it ignores Range?); refusing to read more than asked"
                      f"{f' (endpoint {where})' if where else ''}")


def _precondition_failed(exc: BaseException) -> bool:
    e: BaseException | None = exc
    while e is not None:
        code = (getattr(e, "response", None) or {}).get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "412"):
            return True
        if isinstance(e, OSError) and e.errno == errno.EINVAL and \
                "precondition" in str(e).lower().replace("-", ""):
            return True
        e = e.__cause__ or e.__context__
    return False


async def _s3_range(fs: Any, path: str, url: str, p: Pin, start: int, end: int) -> bytes:
    """One ranged GET of ``[start, end)``: ``If-Match`` the pinned ETag (and its version),
    the response's length and ETag checked before its body is read, and never more than
    ``end - start`` bytes read from it."""
    bucket, key, _ = fs.split_path(path)
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key,
                              "Range": f"bytes={start}-{end - 1}"}
    if p.etag:
        kwargs["IfMatch"] = p.etag
    if p.version:
        kwargs["VersionId"] = p.version
    try:
        resp = await fs._call_s3("get_object", **kwargs)
    except Exception as exc:
        if _precondition_failed(exc):
            raise _changed(url, p, None) from None
        raise
    body = resp["Body"]
    try:
        tag = resp.get("ETag")
        if p.etag and tag and str(tag) != p.etag:
            raise _changed(url, p, str(tag))
        want = end - start
        length = resp.get("ContentLength")
        if length is not None and int(length) > want:
            raise _oversized(url, int(length), want)
        chunks, got = [], 0
        while got < want:
            chunk = await body.read(want - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        body.close()


def _file_class() -> type:
    from fsspec.spec import AbstractBufferedFile

    class PinnedFile(AbstractBufferedFile):
        """A read-only file of one object, every range checked against its :class:`Pin`."""

        def __init__(self, fs: Any, path: str, url: str, p: Pin, block: int) -> None:
            kwargs: dict[str, Any] = ({"block_size": block, "cache_type": "readahead"}
                                      if block else {"cache_type": "none"})
            super().__init__(fs, path, "rb", size=p.size, **kwargs)
            self.url, self.pin = url, p
            self._inner: Any = None

        def _fetch_range(self, start: int, end: int) -> bytes:
            end = min(end, self.size)
            if end <= start:
                return b""
            with _store(self.url) as (fs, path):
                if hasattr(fs, "_call_s3"):
                    from fsspec.asyn import sync

                    return sync(fs.loop, _s3_range, fs, path, self.url, self.pin, start, end)
                return self._generic(fs, path, start, end)

        def _generic(self, fs: Any, path: str, start: int, end: int) -> bytes:
            """Other stores: the range, then the object's tag compared with the pin."""
            if self._inner is None:
                try:
                    self._inner = fs.open(path, "rb", cache_type="none", size=self.size)
                except TypeError:
                    self._inner = fs.open(path, "rb", cache_type="none")
            self._inner.seek(start)
            data = self._inner.read(end - start)
            if len(data) > end - start:
                raise _oversized(self.url, len(data), end - start)
            fs.invalidate_cache(path)
            now = fs.info(path)
            if signature(now) != signature(self.pin.meta):
                raise _changed(self.url, self.pin, signature(now)[1] or None)
            return data

        def close(self) -> None:
            if self._inner is not None:
                self._inner.close()
            super().close()

    return PinnedFile


_FILE_CLASS: list[type] = []


def open_file(url: str, *, block: int = 0, size: int | None = None,
              pinned: Pin | None = None) -> IO[bytes]:
    """A seekable binary file object reading ``url`` by ranges: ``block`` 0 fetches
    exactly the bytes asked for; a positive ``block`` reads ahead that much. Every range
    is checked against the object's pin (``pinned``, or :func:`pin`): a changed object
    is an :class:`ObjectChanged` error. ``size`` is accepted for compatibility (the
    pin knows it)."""
    p = pinned or pin(url)
    if not _FILE_CLASS:
        _FILE_CLASS.append(_file_class())
    with _store(url) as (fs, path):
        return _FILE_CLASS[0](fs, path, url, p, block)


def listdir(url: str) -> list[str]:
    """Names (not paths) of the entries directly under the folder ``url``."""
    return sorted({basename(u) for u, _, _ in entries(url)})


def _split(url: str) -> tuple[str, str]:
    scheme, rest = url.split("://", 1)
    return scheme + "://", rest


def join(url: str, name: str) -> str:
    """``url/name`` for a plain file name (no separators, no ``..``: checked by callers)."""
    return url.rstrip("/") + "/" + name


def dirname(url: str) -> str:
    scheme, rest = _split(url)
    return scheme + posixpath.dirname(rest.rstrip("/"))


def basename(url: str) -> str:
    return posixpath.basename(_split(url)[1].rstrip("/"))


def inside(folder: str, name: str) -> str | None:
    """``folder/name`` when the relative ``name`` stays inside ``folder`` (no absolute
    path, no URL, no ``..`` escaping it); None otherwise. Object stores have no symlinks,
    so the lexical check is the whole check."""
    if not name or "://" in name or name.startswith(("/", "\\")) or "\\" in name:
        return None
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return join(folder, norm)


def identity_digest(objects: dict[str, dict[str, Any]]) -> str:
    """One SHA-256 over each object's URL and :func:`signature` (size and content tag),
    ``objects`` mapping URLs to what the store says of them (:func:`objects`): the remote
    counterpart of hashing the bytes of local files."""
    h = hashlib.sha256()
    for url, meta in sorted(objects.items()):
        h.update(json.dumps([url, *signature(meta)]).encode())
        h.update(b"\0")
    return h.hexdigest()


# ---- path functions that take a local path or a URL alike --------------------------

def absolute(path: str) -> str:
    """What a worker (maybe on another machine, with a working directory of its own) is
    told to read: an absolute path, or the URL as it is."""
    import os

    return path if is_url(path) else os.path.abspath(path)


def pjoin(folder: str, name: str) -> str:
    import os

    return join(folder, name) if is_url(folder) else os.path.join(folder, name)


def pdirname(path: str) -> str:
    import os

    return dirname(path) if is_url(path) else (os.path.dirname(path) or ".")


def pbasename(path: str) -> str:
    import os

    return basename(path) if is_url(path) else os.path.basename(path)


def plexists(path: str) -> bool:
    import os

    return exists(path) if is_url(path) else os.path.lexists(path)


def pisdir(path: str) -> bool:
    import os

    if is_url(path):
        try:
            return is_dir(path)
        except InputError:
            return False
    return os.path.isdir(path)


def entries(url: str) -> list[tuple[str, bool, dict[str, Any]]]:
    """``(url of entry, is_dir, what the store says of it)`` for the entries directly
    under the folder ``url``, from one listing read afresh."""
    with _store(url) as (fs, path):
        fs.invalidate_cache(path)  # a run being written changes under a watch
        listing = fs.ls(path, detail=True)
    base = path.rstrip("/")
    out = []
    for e in listing:
        name = str(e.get("name", "")).rstrip("/")
        if name and name != base:
            out.append((join(url, posixpath.basename(name)), e.get("type") == "directory",
                        e))
    return sorted(out, key=lambda x: x[0])


def tree(url: str, limit: int) -> dict[str, dict[str, Any]]:
    """Every object under the folder ``url`` (at most ``limit``): its path relative to
    ``url`` -> what the store says of it (``size``, ETag...), read afresh."""
    with _store(url) as (fs, path):
        fs.invalidate_cache(path)
        found = fs.find(path, detail=True)
    base = path.rstrip("/") + "/"
    out: dict[str, dict[str, Any]] = {}
    for name, meta in sorted(found.items()):
        if len(out) >= limit:
            break
        name = str(name)
        if name.startswith(base) and meta.get("type") != "directory":
            out[name[len(base):]] = meta
    return out


def signature(meta: dict[str, Any]) -> tuple:
    """What changes when an object is replaced: its size and content tag."""
    tag = next((str(meta[k]) for k in ("ETag", "etag", "md5Hash", "crc32c", "VersionId",
                                        "mtime", "LastModified") if meta.get(k)), "")
    return (int(meta.get("size") or 0), tag)


def modified(meta: dict[str, Any]) -> float:
    """The object's modification time (seconds since the epoch), 0 when unknown."""
    for k in ("LastModified", "mtime", "last_modified", "updated"):
        v = meta.get(k)
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        if isinstance(v, (int, float)):
            return float(v)
    return 0.0


def glob(pattern: str) -> list[str]:
    """URLs matching a glob pattern (``s3://bucket/run/ckpt-*.pt``)."""
    with _store(pattern) as (fs, path):
        return sorted(_split(pattern)[0] + str(p) for p in fs.glob(path))


#: Objects of one checkpoint folder looked at, at most.
MAX_OBJECTS = 100_000


def objects(url: str) -> dict[str, dict[str, Any]]:
    """The object ``url``, or every object under the folder ``url``: URL -> what the
    store says of it (one listing, no request per object)."""
    meta = info(url)
    if meta.get("type") != "directory":
        return {url: meta}
    return {join(url, rel): m for rel, m in tree(url, MAX_OBJECTS).items()}
