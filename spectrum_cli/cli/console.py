"""Consoles, error handling and exit codes shared by every command.

Machine output goes to stdout; logs, progress and errors to a stderr console. rich
honours ``NO_COLOR`` and ``COLUMNS``. Errors become documented exit codes here, so the
commands behave the same under ``typer.testing.CliRunner`` as from a shell.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from spectrum_cli.core.errors import ExitCode, SpectrumError
from spectrum_cli.report.output import printable


@contextlib.contextmanager
def reserved_stdout() -> Iterator[None]:
    """Keep the process's standard output for spectrum's own document.

    C and Fortran libraries write diagnostics straight to file descriptor 1 (LAPACK's
    XERBLA prints "On entry to DLASCL parameter number 4 had an illegal value"), which
    would corrupt a ``--json`` document or a pipe. For the duration, descriptor 1 points
    at standard error and ``sys.stdout`` writes to a private duplicate of the real
    standard output, so only what spectrum prints through Python reaches it. Where
    ``sys.stdout`` has no descriptor (a test runner's capture) nothing changes.
    """
    try:
        fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    old = sys.stdout
    old.flush()
    saved = os.dup(fd)
    sys.stdout = open(saved, "w", encoding=old.encoding, errors=old.errors,  # noqa: SIM115
                      buffering=1 if old.line_buffering else -1)
    os.dup2(err_fd, fd)
    try:
        yield
    finally:
        _flush_c_streams()  # what C code buffered for descriptor 1 goes to stderr now
        ours, sys.stdout = sys.stdout, old
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to save
            ours.flush()
        os.dup2(saved, fd)
        with contextlib.suppress(OSError, ValueError):
            ours.close()


def _flush_c_streams() -> None:
    """``fflush(NULL)``: C's stdio buffers (LAPACK's XERBLA writes through printf) are
    written out while descriptor 1 still points at standard error."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    # soft_wrap: error and log lines stay whole for grep and CI logs.
    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def exit_codes(err: Console) -> Iterator[None]:
    """Map exceptions to :class:`ExitCode` and print one clear line, no traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except SpectrumError as exc:
        err.print(f"[bold red]error:[/] {escape(printable(str(exc)))}", highlight=False)
        raise typer.Exit(int(exc.exit_code)) from None
    except BrokenPipeError:  # `spectrum ... | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(int(ExitCode.USAGE_OR_INPUT_ERROR)) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug of ours: say so, hide the traceback unless asked
        if os.environ.get("SPECTRUM_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: "
                  f"{escape(printable(str(exc)))}\n"
                  "  This is a bug in spectrum; rerun with SPECTRUM_DEBUG=1 for a traceback "
                  "and report it.", markup=True, highlight=False)
        raise typer.Exit(int(ExitCode.INTERNAL_ERROR)) from None
