"""Import the user's model, data and loss functions named as ``MODULE:NAME``.

Only the command line and configuration files name them; nothing stored inside a
checkpoint is ever imported. The working directory is put on ``sys.path`` first (as
pytest and uvicorn do), so ``--model mypkg.nets:build`` finds a package beside you.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from spectrum_cli.core.errors import UsageError


def load_callable(spec: str, option: str) -> Callable[..., Any]:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise UsageError(f"{option}: expected MODULE:NAME (e.g. mypkg.nets:build), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
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
    return obj


#: Losses spectrum knows by name (core/hessian.py); anything else is MODULE:FN.
BUILTIN_LOSSES = ("mse", "cross_entropy")


def resolve_loss(spec: str) -> Any:
    """A built-in loss name as it is, or the user's MODULE:FN loss function."""
    return spec if spec in BUILTIN_LOSSES else load_callable(spec, "--loss")
