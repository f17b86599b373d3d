"""Checkpoint layout: which files and folders of a directory (or glob, local or in
object storage) are checkpoints, ordered by the step in their names, which must not be
read (a symlink leading out of the folder, a file that is not a regular file), and when
a checkpoint folder is complete.

What a folder holds is derived from the installed readers (``spectrum.readers``): each
declares the ``suffixes`` of the files it reads and the ``folder_markers`` of the folders
it reads whole (:mod:`spectrum_cli.io.readers`); a file is a checkpoint when its name
ends with one of the suffixes of any reader, a folder when a marker of any reader marks
it. ``batch``'s discovery (:func:`discover`) and ``watch``'s listing
(:func:`local_checkpoint_folder`, :func:`remote_checkpoint_folder`) both ask here.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from spectrum_cli.core.errors import CheckpointNotFoundError, InputError
from spectrum_cli.io import storage
from spectrum_cli.io.base import FolderMarker, file_kind
from spectrum_cli.io.detect import readers

#: Files per checkpoint folder looked at (listed, stated, signed).
MAX_FOLDER_FILES = 10_000


# --------------------------------------------------------------------------- derived


def reader_suffixes(reader: Any) -> tuple[str, ...]:
    """The file name endings one reader declares (``suffixes``; none when it declares
    none, or something other than strings)."""
    declared = getattr(reader, "suffixes", ()) or ()
    if isinstance(declared, str):
        declared = (declared,)
    try:
        return tuple(s for s in declared if isinstance(s, str) and s)
    except TypeError:  # not iterable: declares nothing usable
        return ()


def reader_markers(reader: Any) -> tuple[FolderMarker, ...]:
    """The folder markers one reader declares (``folder_markers``): a
    :class:`FolderMarker`, or a string ``F`` for "a folder holding the file F"."""
    declared = getattr(reader, "folder_markers", ()) or ()
    if isinstance(declared, (str, FolderMarker)):
        declared = (declared,)
    out: list[FolderMarker] = []
    try:
        for m in declared:
            if isinstance(m, FolderMarker):
                out.append(m)
            elif isinstance(m, str) and m:
                out.append(FolderMarker(str(getattr(reader, "name", "folder")),
                                        f"folders holding {m}", holds=(m,)))
    except TypeError:
        return ()
    return tuple(out)


def suffixes(installed: Iterable[Any] | None = None) -> tuple[str, ...]:
    """The endings of checkpoint file names: the union of the installed readers'
    ``suffixes``, in the readers' priority order (``installed``: these readers)."""
    out: dict[str, None] = {}
    for r in readers() if installed is None else installed:
        out.update(dict.fromkeys(reader_suffixes(r)))
    return tuple(out)


def folder_markers(installed: Iterable[Any] | None = None) -> tuple[FolderMarker, ...]:
    """What marks a checkpoint folder: the union of the installed readers'
    ``folder_markers``, in the readers' priority order (the first that marks a folder
    says its kind)."""
    out: dict[FolderMarker, None] = {}
    for r in readers() if installed is None else installed:
        out.update(dict.fromkeys(reader_markers(r)))
    return tuple(out)


def is_checkpoint_file(name: str, endings: tuple[str, ...] | None = None) -> bool:
    """Whether a file named ``name`` is a checkpoint by its name (``endings``: the
    suffixes, :func:`suffixes` when None); a name that is only the suffix is not."""
    endings = suffixes() if endings is None else endings
    return any(name.endswith(s) and len(name) > len(s) for s in endings)


def marker_of(name: str, has: Callable[[str], bool],
              markers: tuple[FolderMarker, ...] | None = None) -> FolderMarker | None:
    """The first marker that makes the folder ``name`` a checkpoint (``has(file)``: it
    holds ``file``), or None: not a checkpoint folder."""
    for m in folder_markers() if markers is None else markers:
        if m.marks(name, has):
            return m
    return None


def is_checkpoint_folder(name: str, has: Callable[[str], bool],
                         markers: tuple[FolderMarker, ...] | None = None) -> bool:
    """Whether some marker makes the folder ``name`` a checkpoint; the markers that go
    by the name alone are asked first (``has`` may cost a request to a store)."""
    markers = folder_markers() if markers is None else markers
    by_name = [m for m in markers if not m.holds]
    return any(m.marks(name, has) for m in by_name) or any(
        m.marks(name, has) for m in markers if m.holds)


def described(endings: tuple[str, ...] | None = None,
              markers: tuple[FolderMarker, ...] | None = None) -> str:
    """What is looked for, for messages: ``files .pt, .npz, ...; checkpoint-<step>/
    folders, ...``."""
    endings = suffixes() if endings is None else endings
    markers = folder_markers() if markers is None else markers
    parts = [f"files {', '.join(endings)}"] if endings else []
    parts += [m.shown for m in markers]
    return "; ".join(parts) or "no reader declares suffixes or folders"


def _none_found(target: str, endings: tuple[str, ...],
                markers: tuple[FolderMarker, ...]) -> InputError:
    return InputError(f"{target}: no checkpoints found ({described(endings, markers)})")


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Candidate:
    path: str
    name_step: int | None
    #: Why it is not read at all (a symlink leading out of the folder, not a regular
    #: file): recorded as a failed checkpoint without opening anything.
    refused: str | None = None


#: Steps are int64 (TensorBoard, HDF5); a larger number in a name is not a step.
STEP_MAX = 2**63 - 1


def last_number(name: str) -> int | None:
    """The step in a checkpoint's name: its last number, if it fits a step."""
    numbers = re.findall(r"\d+", name)
    if not numbers or len(numbers[-1]) > 19 or int(numbers[-1]) > STEP_MAX:
        return None
    return int(numbers[-1])


def discover(target: str) -> list[Candidate]:
    """The checkpoints of a folder (or matching a glob), ordered by the step in their
    names. An entry named like a checkpoint that must not be read (a symlink leading out
    of the folder, a file that is not a regular file: a FIFO, a device, ``/proc``'s
    files) is a candidate with :attr:`Candidate.refused` set, and is never opened."""
    endings, markers = suffixes(), folder_markers()
    if storage.is_url(target):
        return _discover_remote(target, endings, markers)
    p = Path(target)
    if p.is_dir():
        root = str(p)
        items = [e for e in sorted(p.iterdir())
                 if (is_checkpoint_file(e.name, endings) and not e.is_dir())
                 or (e.is_dir() and is_checkpoint_folder(
                     e.name, lambda f, e=e: (e / f).is_file(), markers))]
    else:  # a glob lists a folder; a file named outright may be a link to anywhere
        root = _glob_root(target) if any(ch in target for ch in "*?[") else \
            os.path.dirname(os.path.realpath(target))
        items = [Path(x) for x in sorted(glob.glob(target))]
        if not items and not any(ch in target for ch in "*?["):
            raise CheckpointNotFoundError(f"{target}: no such file or directory", target)
    if not items:
        raise _none_found(target, endings, markers)
    found = [Candidate(str(e), last_number(e.name), refusal(str(e), root)) for e in items]
    return sorted(found, key=lambda c: (c.name_step is None, c.name_step or 0, c.path))


def _glob_root(pattern: str) -> str:
    """The folder a glob lists: its leading components without a wildcard."""
    parts: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def refusal(path: str, root: str, limit: int = 10_000) -> str | None:
    """Why the local checkpoint ``path`` (a file, or a checkpoint folder and its files)
    under the folder ``root`` must not be read, or None: a symlink (of it, or of a file
    or folder in it) that leads out of ``root``, or a file that is not a regular file.
    Decided from the links and ``stat`` alone: nothing is opened (a symlink to
    ``/proc/self/pagemap`` or to a FIFO would hang whoever reads it)."""
    base = os.path.realpath(root)

    def judge(p: str, shown: str) -> str | None:
        real = os.path.realpath(p)
        if not _within(real, base):
            return (f"refused: {shown}a symlink leading out of the folder {root} (to "
                    f"{real}); it is not read")
        try:
            st = os.stat(p)
        except OSError as exc:
            if os.path.islink(p):
                return f"refused: {shown}a symlink to a missing file (or a loop)"
            return f"cannot read {shown.removesuffix(' is ') or 'it'}: {exc.strerror or exc}"
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            return f"refused: {shown}{file_kind(st.st_mode)}, not a regular file"
        return None

    problem = judge(path, "")
    if problem is not None or not os.path.isdir(path):
        return problem
    seen = 0
    for folder, dirs, names in os.walk(path, followlinks=False):
        for n in sorted(dirs) + sorted(names):
            seen += 1
            if seen > limit:
                return None
            full = os.path.join(folder, n)
            if n in dirs and not os.path.islink(full):
                continue
            problem = judge(full, f"{full} is ")
            if problem is not None:
                return problem
    return None


def _discover_remote(target: str, endings: tuple[str, ...],
                     markers: tuple[FolderMarker, ...]) -> list[Candidate]:
    """:func:`discover` for an object-store folder or glob."""
    if any(ch in target for ch in "*?["):
        items = [(u, storage.pisdir(u)) for u in storage.glob(target)]
    elif storage.is_dir(target):
        items = [(u, is_dir) for u, is_dir, _ in storage.entries(target)]
    else:
        items = [(target, False)]
    found = [Candidate(u, last_number(storage.basename(u))) for u, is_dir in items
             if (is_dir and is_checkpoint_folder(
                 storage.basename(u), lambda f, u=u: storage.exists(storage.join(u, f)),
                 markers))
             or (not is_dir and is_checkpoint_file(storage.basename(u), endings))]
    if not found:
        raise _none_found(target, endings, markers)
    return sorted(found, key=lambda c: (c.name_step is None, c.name_step or 0, c.path))


# --------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class CheckpointFolder:
    """A checkpoint folder found in a run's folder: its kind (its marker's: ``"hf"``,
    ``"dcp"``, a plugin's), its files by relative name (an ``os.stat_result`` each, or
    the object store's metadata) and what it still lacks to be complete (None:
    complete)."""

    kind: str
    files: dict[str, Any]
    missing: str | None = None


def _judged(path: str, name: str, files: dict[str, Any],
            markers: tuple[FolderMarker, ...] | None) -> CheckpointFolder | None:
    """The folder, told apart by the first marker that marks it given its listing."""
    marker = marker_of(name, files.__contains__, markers)
    if marker is None:  # its marker file went away meanwhile
        return None
    return CheckpointFolder(marker.kind, files, marker.lacks(path, files))


def local_checkpoint_folder(path: str, name: str, limit: int = MAX_FOLDER_FILES,
                            markers: tuple[FolderMarker, ...] | None = None
                            ) -> CheckpointFolder | None:
    """The local folder ``path`` (named ``name`` in the run's folder) as a checkpoint:
    its files (up to ``limit``, stated; symlinked folders are not followed) and what it
    lacks; None for a folder no marker marks (which is not walked)."""
    markers = folder_markers() if markers is None else markers
    if not is_checkpoint_folder(name, lambda f: os.path.isfile(os.path.join(path, f)),
                                markers):
        return None
    files: dict[str, os.stat_result] = {}
    for root, dirs, names in os.walk(path):  # symlinked folders are not followed
        dirs.sort()
        for n in sorted(names)[:limit - len(files)]:
            full = os.path.join(root, n)
            with contextlib.suppress(OSError):  # a dangling link, a file just removed
                files[os.path.relpath(full, path)] = os.stat(full)
        if len(files) >= limit:
            break
    return _judged(path, name, files, markers)


def remote_checkpoint_folder(url: str, name: str, limit: int = MAX_FOLDER_FILES,
                             markers: tuple[FolderMarker, ...] | None = None
                             ) -> CheckpointFolder | None:
    """:func:`local_checkpoint_folder` for a folder of an object store (each file's
    metadata as the store lists it)."""
    markers = folder_markers() if markers is None else markers
    if not is_checkpoint_folder(name, lambda f: storage.exists(storage.join(url, f)),
                                markers):
        return None
    return _judged(url, name, dict(storage.tree(url, limit)), markers)


def check_folder(target: str) -> bool:
    """A folder to watch (local, or a URL), or the reason why not (InputError). A local
    folder that does not exist yet is fine (the watch waits for the run to create it,
    like ``tail -F``) as long as what does exist of its path is folders; returns
    whether it exists now."""
    if storage.is_url(target):
        if not storage.is_dir(target):
            raise InputError(f"{target}: not a folder (watch follows the folder a run "
                             "writes its checkpoints to)")
        return True
    if os.path.isdir(target):
        return True
    if os.path.lexists(target):
        raise InputError(f"{target}: not a folder (watch follows the folder a run "
                         "writes its checkpoints to)")
    above = os.path.dirname(os.path.abspath(target))
    while not os.path.lexists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise InputError(f"{target}: cannot become a folder: {above} is not a folder")
    return False


def inside_checkpoint(target: str, path: str, folder: bool = False) -> bool:
    """Whether ``path`` lies inside a subfolder of ``target`` (writing there would change
    a checkpoint folder being watched); ``folder``: ``path`` is a folder written into
    (a TensorBoard log), which may not be a checkpoint folder of ``target`` either
    (one a marker takes by its name, such as an HF ``checkpoint-<step>``, there now or
    to come, or by the files it holds, such as a DCP folder)."""
    if storage.is_url(target):
        return False  # a local file cannot be inside a folder of an object store
    root, real = os.path.realpath(target), os.path.realpath(path)
    try:
        rel = os.path.relpath(real, root)
    except ValueError:
        return False
    parts = Path(rel).parts
    if folder and len(parts) == 1 and parts[0] not in (os.pardir, os.curdir):
        return is_checkpoint_folder(parts[0], lambda f: os.path.isfile(os.path.join(real, f)))
    return len(parts) > 1 and parts[0] != os.pardir
