"""The ``spectrum`` command. Subcommands live one per module; none imports torch,
scipy or h5py at import time, so ``spectrum --help`` stays fast."""

from __future__ import annotations

import sys

import typer

from spectrum_cli import __version__
from spectrum_cli.cli import analyze as _analyze
from spectrum_cli.cli import backends as _backends
from spectrum_cli.cli import batch as _batch
from spectrum_cli.cli import diff as _diff
from spectrum_cli.cli import model as _model
from spectrum_cli.cli import pseudospectrum as _pseudospectrum
from spectrum_cli.cli import report as _report

app = typer.Typer(
    name="spectrum",
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


app.command("analyze")(_analyze.analyze)
app.command("batch")(_batch.batch)
app.command("diff")(_diff.diff)
app.command("model")(_model.model)
app.command("backends")(_backends.backends)
app.command("pseudospectrum")(_pseudospectrum.pseudospectrum)
report_app = typer.Typer(help="Read reports back.", no_args_is_help=True)
report_app.command("show")(_report.show)
app.add_typer(report_app, name="report")


def main() -> None:
    """Console-script entry point; never lets a traceback reach the user."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:  # pragma: no cover - typer returns these
        code = exc.exit_code
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            code = exc.exit_code
        elif isinstance(exc, click.exceptions.Abort):
            code = 130
        else:
            print(f"spectrum: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 3
    sys.exit(code or 0)
