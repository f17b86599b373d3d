"""Exceptions and the public exit codes.

Every error a user can cause is a :class:`SpectrumError` that carries the exit code the
command line maps it to; anything else reaching the top of the CLI is an internal error.
"""

from __future__ import annotations

import errno
import os
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``spectrum`` command (public, stable).

    The same convention as ruff and other CI-facing linters: 1 is reserved for "the
    input is fine but violates a threshold", so that CI can tell a finding from a crash.
    """

    OK = 0
    THRESHOLD_VIOLATED = 1
    USAGE_OR_INPUT_ERROR = 2
    INTERNAL_ERROR = 3
    NOTHING_MATCHED = 5
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


class SpectrumError(Exception):
    """Base class of the errors a user can cause; ``exit_code`` says how the CLI exits."""

    exit_code: ExitCode = ExitCode.USAGE_OR_INPUT_ERROR


class UsageError(SpectrumError, ValueError):
    """A bad argument or configuration value."""


class InputError(SpectrumError):
    """A path that cannot be read, or a file that is not a checkpoint we understand."""


class CheckpointNotFoundError(InputError, FileNotFoundError):
    """A checkpoint path that does not exist: an :class:`InputError` (exit 2 on the
    command line) that is also a :class:`FileNotFoundError`, so that
    ``except FileNotFoundError`` works as it does around ``open``. ``filename`` is the
    path, ``errno`` is ``ENOENT``; ``str()`` is the message alone."""

    def __init__(self, message: str, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno.ENOENT
        self.strerror = os.strerror(errno.ENOENT)
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple:  # OSError's would call __init__(errno, strerror, filename)
        return (type(self), (str(self), self.filename))


class UnsafeCheckpointError(InputError):
    """A pickle-based checkpoint asks for globals outside the weights-only allowlist.

    ``unsafe_globals`` lists them (as ``module.name``) without anything having been run.
    """

    def __init__(self, path: str, unsafe_globals: list[str], detail: str = "") -> None:
        self.path = path
        self.unsafe_globals = list(unsafe_globals)
        names = ", ".join(self.unsafe_globals) or "(torch did not name them)"
        msg = (
            f"refused to load {path}: it is a pickle that needs globals outside the "
            f"weights-only allowlist: {names}. Nothing from the file was run. If you trust "
            "this file, allow individual globals with --allow-global MODULE.NAME, or load "
            "it fully with --trust-checkpoint (this runs code from the file)."
        )
        if detail:
            msg += f"\n  torch said: {detail}"
        super().__init__(msg)
