"""The ``spectrum`` command. Subcommands live one per module; none imports torch,
scipy or h5py at import time, so ``spectrum --help`` stays fast."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from spectrum_cli import __version__
from spectrum_cli.cli import allocate as _allocate
from spectrum_cli.cli import analyze as _analyze
from spectrum_cli.cli import backends as _backends
from spectrum_cli.cli import batch as _batch
from spectrum_cli.cli import diff as _diff
from spectrum_cli.cli import esd as _esd
from spectrum_cli.cli import model as _model
from spectrum_cli.cli import pseudospectrum as _pseudospectrum
from spectrum_cli.cli import report as _report
from spectrum_cli.cli import trust as _trust
from spectrum_cli.cli import watch as _watch
from spectrum_cli.cli.console import reserved_stdout
from spectrum_cli.cli.options import Command, Group
from spectrum_cli.report.output import printable

app = typer.Typer(
    name="spectrum",
    cls=Group,
    help="What the spectra of your training state say about stability.\n\n"
         "Exit codes: 0 ok, 1 a --fail-on threshold was violated, 2 usage, I/O or refused "
         "input, 3 internal error, 5 no tensor matched.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"spectrum {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


app.command("analyze", cls=Command)(_analyze.analyze)
app.command("batch", cls=Command)(_batch.batch)
app.command("diff", cls=Command)(_diff.diff)
app.command("model", cls=Command)(_model.model)
app.command("backends", cls=Command)(_backends.backends)
app.command("pseudospectrum", cls=Command)(_pseudospectrum.pseudospectrum)
app.command("trust", cls=Command)(_trust.trust)
app.command("esd", cls=Command)(_esd.esd)
app.command("allocate", cls=Command)(_allocate.allocate)
app.command("watch", cls=Command)(_watch.watch)
report_app = typer.Typer(help="Read reports back.", no_args_is_help=True, cls=Group)
report_app.command("show", cls=Command)(_report.show)
app.add_typer(report_app, name="report")


def run(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code; never lets a traceback through.

    Usage errors (missing argument, unknown option or command, a value out of range)
    print typer's usage message and give exit 2, as click's standalone mode does; any
    other exception that escapes a command is a bug (exit 3). Standard output is
    reserved for spectrum's own document for the whole run (see
    :func:`~spectrum_cli.cli.console.reserved_stdout`).
    """
    # typer vendors click from 0.29 on; its exception classes are reachable through
    # typer's public ones, whichever click is underneath.
    click_exception = next(c for c in type.mro(typer.BadParameter)
                           if c.__name__ == "ClickException")
    with reserved_stdout():
        try:
            code = app(args=argv, standalone_mode=False, prog_name="spectrum")
        except typer.Exit as exc:
            code = exc.exit_code
        except click_exception as exc:
            if getattr(exc, "ctx", "n/a") is None:  # a parser error: give it the usage too
                exc.ctx = _usage_context(sys.argv[1:] if argv is None else argv)
            exc.show()
            code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            print("spectrum: interrupted", file=sys.stderr)
            code = 130
        except Exception as exc:  # a bug of ours
            if os.environ.get("SPECTRUM_DEBUG"):
                traceback.print_exc(file=sys.stderr)
            print(f"spectrum: internal error: {type(exc).__name__}: {printable(str(exc))}\n"
                  "  This is a bug "
                  "in spectrum; rerun with SPECTRUM_DEBUG=1 for a traceback and report it.",
                  file=sys.stderr)
            code = 3
    return int(code or 0)


def _usage_context(argv: list[str]) -> typer.Context | None:
    """A context for the (sub)command named in ``argv``, for its usage line."""
    try:
        group = typer.main.get_command(app)
        path, cmd = ["spectrum"], group
        for word in argv:
            sub = getattr(cmd, "commands", {}).get(word)
            if sub is None:
                if not word.startswith("-"):
                    break
                continue
            path.append(word)
            cmd = sub
        return typer.Context(cmd, info_name=" ".join(path))
    except Exception:  # noqa: BLE001 - the message alone is still right
        return None


def main() -> None:
    """Console-script entry point (see :mod:`spectrum_cli.cli.entry`)."""
    sys.exit(run())
