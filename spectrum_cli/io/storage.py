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
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from contextlib import contextmanager
from typing import IO, Any, Iterator

from spectrum_cli.core.errors import InputError, UsageError

#: ``scheme://``: a URL for fsspec (a Windows drive letter ``C:`` is not a scheme).
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
#: Read-ahead for zip archives (many small reads of the central directory and members).
ZIP_BLOCK = 4 << 20
#: The options given with ``--storage-option`` in this process (see :func:`configure`).
_OPTIONS: dict[str, Any] = {}


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
    try:
        fs = cls(**_OPTIONS)
    except TypeError as exc:
        raise UsageError(f"--storage-option: {protocol}:// does not take these options "
                         f"({exc})") from None
    return fs, cls._strip_protocol(url)


def _remote_error(url: str, exc: BaseException) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{url}: no such file or directory")
    if isinstance(exc, PermissionError):
        return InputError(f"{url}: access denied ({exc})")
    text = str(exc).strip().splitlines()
    return InputError(f"{url}: cannot read it ({type(exc).__name__}"
                      f"{': ' + text[0][:200] if text else ''})")


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


def open_file(url: str, *, block: int = 0, size: int | None = None) -> IO[bytes]:
    """A seekable binary file object reading ``url`` by ranges: ``block`` 0 fetches
    exactly the bytes asked for; a positive ``block`` reads ahead that much. ``size``
    (known from :func:`require_file`) saves the store a second HEAD request."""
    kwargs: dict[str, Any] = ({"block_size": block, "cache_type": "readahead"} if block
                              else {"cache_type": "none"})
    with _store(url) as (fs, path):
        if size is not None:
            try:
                return fs.open(path, "rb", size=size, **kwargs)
            except TypeError:  # a filesystem whose files do not take the size
                pass
        return fs.open(path, "rb", **kwargs)


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
