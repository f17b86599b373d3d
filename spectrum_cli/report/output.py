"""Output targets: where spectrum may write a file, how it writes it, and how text read
from files is shown.

One rule for every file spectrum writes (HDF5 reports of ``analyze``, ``batch`` and
``model``, plots): :func:`check_target` is called before any work (so a long run does not
fail at its end) and again by :func:`atomic_path` when the file is written.

A target may be

- a path that does not exist yet, in an existing, writable directory;
- an existing regular file that is already a spectrum output of the same ``kind``:
  ``report``: an HDF5 file (by its signature) whose root attribute ``schema`` starts
  with ``spectrum.``; ``plot``: a PNG, PDF or SVG (by its first bytes); ``csv``: a
  text file whose first line is one of :data:`CSV_HEADERS` (``spectrum allocate``'s);
- any existing regular file with ``force=True``.

Never, not even with ``force``: a directory, a device node, a FIFO or a socket; a path
that is one of the ``inputs`` (same resolved path or same device and inode, so a hard
link counts); any path inside an input folder that is read whole (a checkpoint folder:
an HF ``checkpoint-<step>/``, a DCP folder, a model folder), new or not, spectrum's
own or not (writing there would change the input, and its content hash); an existing
file inside a *run folder* (an input folder that holds other inputs, as ``batch``'s
folder holds its checkpoints, or one named in ``listed``: a folder whose listing is
read, as ``watch``'s), unless it is already a spectrum output of that kind: such a
file is ours, not the checkpoint's data. A new file in a run folder is fine. A symlink
is followed and its target judged by these rules; the write then replaces the target
and keeps the link. A dangling symlink is refused (it would create a file wherever the
link points).

Writes go to a temporary name in the target's directory, moved into place with
``os.replace``; any failure removes the temporary and leaves the existing file as it
was. An ``OSError`` on the way (full disk, read-only or missing directory, no
permission) becomes an :class:`~spectrum_cli.core.errors.InputError` naming the path.
Each refusal is an ``InputError`` (exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import stat
import unicodedata
from typing import Iterable, Iterator

from spectrum_cli.core.errors import InputError
from spectrum_cli.io.base import file_kind

KINDS = ("report", "plot", "csv")
#: The first lines of the CSV files spectrum writes (``spectrum allocate --csv``).
CSV_HEADERS = (b"module,sparsity_ratio\n", b"module,lr_factor\n")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_PLOT_MAGIC = (b"\x89PNG\r\n\x1a\n", b"%PDF-")
#: Files of an input folder compared by inode at most (a bound on the walk).
_WALK_LIMIT = 20000
_TMP = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}")


def check_target(path: str | os.PathLike, *, kind: str,
                 inputs: Iterable[str | os.PathLike] = (), force: bool = False,
                 listed: Iterable[str | os.PathLike] = ()) -> str:
    """The real path to write ``path`` to, or :class:`InputError` saying why not.

    ``kind`` is ``"report"`` or ``"plot"``; ``inputs`` are the files and folders the
    command reads; ``listed`` folders whose listing it reads (run folders, see the
    module); ``force`` allows replacing a regular file of another kind."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    shown = os.fspath(path)
    real = _follow(shown)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"{shown}: cannot be written: {_reason(exc)}") from None
    inputs, listed = [os.fspath(i) for i in inputs], [os.fspath(i) for i in listed]
    _not_inside_a_checkpoint(shown, os.path.realpath(real), inputs, listed, f"the {kind}")
    _not_an_input(shown, real, st, inputs + listed, kind)
    if st is None:
        _check_parent(shown, real)
        return real
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{shown}: refused to write the {kind} here: it is "
                         f"{file_kind(st.st_mode)}, not a regular file")
    if not force and not is_output(real, kind):
        raise InputError(f"{shown}: refused to overwrite it: it exists and is not a "
                         f"spectrum {kind} ({_KIND_TEXT[kind]}); choose another path or "
                         "pass --force to replace it")
    _check_parent(shown, real)
    return real


_KIND_TEXT = {"report": "an HDF5 file with a spectrum schema attribute",
              "plot": "a PNG, PDF or SVG file",
              "csv": "a CSV file whose first line is a spectrum allocation header"}


def is_output(path: str, kind: str) -> bool:
    """Whether the regular file ``path`` is already a spectrum output of ``kind``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if kind == "csv":
        return head.startswith(CSV_HEADERS)
    if kind == "plot":
        text = head.lstrip()
        return head.startswith(_PLOT_MAGIC) or (
            (text.startswith(b"<?xml") or text.startswith(b"<svg")) and b"<svg" in head)
    if not head.startswith(HDF5_MAGIC):
        return False
    return str(_root_schema(path)).startswith("spectrum.")


def _root_schema(path: str) -> object:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            value = f.attrs.get("schema", "")
    except Exception:  # an unreadable file is not one of ours
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _follow(path: str) -> str:
    """``path`` with symlinks resolved; a dangling or looping link is refused."""
    if not os.path.islink(path):
        return os.path.abspath(path)
    try:
        return os.path.realpath(path, strict=True)
    except (OSError, RuntimeError):
        raise InputError(f"{path}: refused: a symlink to a missing file (or a loop); "
                         "name the target itself") from None


def _not_an_input(shown: str, real: str, st: os.stat_result | None,
                  inputs: Iterable[str | os.PathLike], kind: str) -> None:
    for item in inputs:
        item = os.fspath(item)
        if "://" in item and not item.lower().startswith("file://"):
            continue  # an object-store URL: a local write cannot replace it
        src = os.path.realpath(item)
        same = real == src
        if not same and st is not None:
            try:
                ist = os.stat(item)
            except OSError:
                ist = None
            same = ist is not None and (ist.st_dev, ist.st_ino) == (st.st_dev, st.st_ino)
            if not same and ist is not None and stat.S_ISDIR(ist.st_mode):
                same = _inside(real, src) or _hard_link_in(item, st)
                same = same and not (stat.S_ISREG(st.st_mode) and is_output(real, kind))
        if same:
            raise InputError(f"{shown}: refused to write the {kind} over an input "
                             f"({item}); choose another path")


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _local(item: str) -> bool:
    return not ("://" in item and not item.lower().startswith("file://"))


def read_whole(inputs: Iterable[str | os.PathLike], listed: Iterable[str | os.PathLike] = ()
               ) -> list[tuple[str, str]]:
    """The input folders read whole, as (the input as named, its real path): every
    local input folder that holds no other input and is not ``listed``."""
    named = [os.fspath(i) for i in inputs if _local(os.fspath(i))]
    reals = [os.path.realpath(i) for i in named]
    run_folders = {os.path.realpath(os.fspath(i)) for i in listed if _local(os.fspath(i))}
    holding: set[str] = set()
    for real in reals:  # every folder holding an input is a run folder
        parent = os.path.dirname(real)
        while parent not in holding and parent != real:
            holding.add(parent)
            real, parent = parent, os.path.dirname(parent)
    return [(item, real) for item, real in zip(named, reals)
            if real not in run_folders and real not in holding and os.path.isdir(item)]


def _not_inside_a_checkpoint(shown: str, real: str, inputs: list[str], listed: list[str],
                             what: str) -> None:
    for item, src in read_whole(inputs, listed):
        if real != src and _inside(real, src):
            raise InputError(f"{shown}: refused to write {what} inside an input folder "
                             f"({item}), which is read as a checkpoint (writing there would "
                             "change it); choose another path")


def check_folder_target(path: str | os.PathLike, *, what: str,
                        inputs: Iterable[str | os.PathLike] = (),
                        listed: Iterable[str | os.PathLike] = ()) -> None:
    """:class:`InputError` when the folder ``path`` that spectrum writes files into (a
    TensorBoard log) is an input file, an input folder read whole or lies inside one
    (see the module); a run folder may hold it."""
    shown = os.fspath(path)
    real = os.path.realpath(shown)
    inputs, listed = [os.fspath(i) for i in inputs], [os.fspath(i) for i in listed]
    for item, src in read_whole(inputs, listed):
        if real == src:
            raise InputError(f"{shown}: refused to write {what} into an input folder "
                             f"({item}), which is read as a checkpoint; choose another path")
    _not_inside_a_checkpoint(shown, real, inputs, listed, what)
    for item in inputs:
        if _local(item) and not os.path.isdir(item) and os.path.realpath(item) == real:
            raise InputError(f"{shown}: refused to write {what} over an input ({item}); "
                             "choose another path")


def _hard_link_in(folder: str, st: os.stat_result) -> bool:
    """Whether a file under ``folder`` is the same file as ``st`` (a hard link)."""
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return False
    seen = 0
    for root, _, files in os.walk(folder):
        for name in files:
            seen += 1
            if seen > _WALK_LIMIT:
                return False
            try:
                s = os.stat(os.path.join(root, name))
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


def _check_parent(shown: str, real: str) -> None:
    parent = os.path.dirname(real) or "."
    if not os.path.isdir(parent):
        raise InputError(f"{shown}: cannot be written: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{shown}: cannot be written: the folder {parent} is not writable")


def _reason(exc: OSError) -> str:
    names = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
             errno.EACCES: "permission denied", errno.ENOENT: "no such file or directory",
             errno.EFBIG: "file too large", errno.EDQUOT: "disk quota exceeded"}
    return names.get(exc.errno or -1) or exc.strerror or str(exc)


def tmp_name(real: str) -> str:
    """A fresh temporary name beside ``real`` that keeps its suffix (matplotlib picks
    the format from it): ``.<name>.tmp-<pid>-<hex><suffix>``."""
    folder, base = os.path.split(real)
    return os.path.join(folder, f".{base}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
                                f"{os.path.splitext(base)[1]}")


def sweep_stale(real: str) -> None:
    """Remove temporaries of ``real`` left by runs whose process is gone."""
    folder, base = os.path.split(real)
    for tmp in glob.glob(os.path.join(glob.escape(folder), glob.escape(f".{base}.tmp-") + "*")):
        m = _TMP.search(tmp[len(os.path.join(folder, base)) + 1:])
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        except (OverflowError, OSError):
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, kind: str,
                inputs: Iterable[str | os.PathLike] = (), force: bool = False,
                listed: Iterable[str | os.PathLike] = ()) -> Iterator[str]:
    """A temporary path to write to; moved onto ``path`` when the block succeeds.

    The target is checked again (:func:`check_target`); the temporary is removed on
    any failure; an ``OSError`` becomes an :class:`InputError` naming ``path``."""
    shown = os.fspath(path)
    real = check_target(shown, kind=kind, inputs=inputs, force=force, listed=listed)
    sweep_stale(real)
    tmp = tmp_name(real)
    try:
        yield tmp
        os.replace(tmp, real)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"{shown}: could not write the {kind}: {_reason(exc)}; "
                             "nothing was changed") from None
        raise


# ---- text read from files, shown to a person --------------------------------------

#: Invisible characters that reorder or hide text (Trojan Source, CVE-2021-42574).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")


def printable(text: object) -> str:
    """``text`` with control characters (C0, DEL, C1), line and paragraph separators
    and bidirectional overrides written as escapes (``\\x1b``, ``\\u202e``), so a name
    or attribute read from a file cannot move the cursor, recolour the terminal, start
    a new line or reorder what follows. Rich markup is not touched: print the result as
    a ``rich.text.Text`` or through ``rich.markup.escape``."""
    s = str(text)
    if s.isprintable() and not _BIDI.intersection(s):
        return s
    return "".join(_escape_char(c) for c in s)


def _escape_char(c: str) -> str:
    if c == " " or (c.isprintable() and c not in _BIDI):
        return c
    if unicodedata.category(c) in ("Zs",) and c not in _BIDI:
        return c
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


_MD_SPECIAL = frozenset("\\`*_{}[]()#+-.!|<>~&:@\"'$%^=;,/?")


def markdown_text(text: object) -> str:
    """``text`` as inert Markdown (GitHub flavour) for a table cell or a heading: a code
    span when it holds no backtick, pipe or backslash, otherwise plain text with every
    ASCII punctuation escaped. Either way no link, autolink, HTML, emphasis, new row or
    new cell can come out of it; control characters are escaped first
    (:func:`printable`)."""
    s = printable(text)
    if not any(c in s for c in "`|\\") and s.strip() == s and s:
        return f"`{s}`"
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in s) or "(empty)"
