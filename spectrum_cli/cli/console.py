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
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
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
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                  "  This is a bug in spectrum; rerun with SPECTRUM_DEBUG=1 for a traceback "
                  "and report it.", markup=True, highlight=False)
        raise typer.Exit(int(ExitCode.INTERNAL_ERROR)) from None
