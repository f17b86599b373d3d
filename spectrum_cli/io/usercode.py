"""Import the user's model, data and loss functions named as ``MODULE:NAME``.

Only the command line, ``SPECTRUM_*`` variables and configuration files the user trusted
name them; nothing stored inside a checkpoint is ever imported.

Where a module is found: first among the installed packages (``sys.path`` as spectrum
started, which holds neither the working directory nor the checkpoint's folder), then in
the working directory, so that ``--model mynets:build`` finds ``./mynets.py``. The
working directory is appended *after* the installed packages, and only while the user's
code runs (its import and each call of the returned function): a ``numpy.py`` or
``h5py.py`` beside you never shadows an installed package, and spectrum's own imports,
later ones included, never see the working directory at all.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import threading
from typing import Any, Callable, Iterator

from spectrum_cli.core.errors import UsageError

_LOCK = threading.RLock()
_DEPTH = [0]


@contextlib.contextmanager
def user_path() -> Iterator[None]:
    """The working directory at the end of ``sys.path`` for the duration of a block
    (re-entrant; removed again when the outermost block ends)."""
    try:
        cwd = os.getcwd()
    except OSError:  # removed working directory: nothing to add
        yield
        return
    with _LOCK:
        added = _DEPTH[0] == 0 and cwd not in sys.path
        if added:
            sys.path.append(cwd)
        _DEPTH[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if added:
                with contextlib.suppress(ValueError):
                    sys.path.remove(cwd)


def _with_user_path(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run with :func:`user_path` (the user's code may import its siblings lazily)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with user_path():
            return fn(*args, **kwargs)

    return call


def load_callable(spec: str, option: str) -> Callable[..., Any]:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise UsageError(f"{option}: expected MODULE:NAME (e.g. mypkg.nets:build), got {spec!r}")
    try:
        with user_path():
            obj: Any = importlib.import_module(module)
    except Exception as exc:  # the user's module failed to import: say which and why
        raise UsageError(f"{option} {spec}: cannot import {module!r} "
                         f"({type(exc).__name__}: {exc})") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{option} {spec}: {module!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{option} {spec}: {name!r} is not callable")
    return _with_user_path(obj)


#: Losses spectrum knows by name (core/hessian.py); anything else is MODULE:FN.
BUILTIN_LOSSES = ("mse", "cross_entropy")


def resolve_loss(spec: str) -> Any:
    """A built-in loss name as it is, or the user's MODULE:FN loss function."""
    return spec if spec in BUILTIN_LOSSES else load_callable(spec, "--loss")
