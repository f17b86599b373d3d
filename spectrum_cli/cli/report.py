"""``spectrum report show``: print a report back."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from spectrum_cli.cli.batch import render as render_batch
from spectrum_cli.cli.console import exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.summary import render
from spectrum_cli.core.errors import InputError
from spectrum_cli.report import trajectory
from spectrum_cli.report.document import dumps
from spectrum_cli.report.hdf5 import read_report


def show(
    report: Annotated[Path, typer.Argument(help="An HDF5 report written by --report.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report document "
                                           "as JSON on stdout.")] = False,
    top: Annotated[Optional[int], typer.Option(min=1, help="Show only the N largest κ.")]
    = None,
) -> None:
    """Print an HDF5 report (of `analyze` or `batch`): the same summary or JSON."""
    err = stderr_console()
    with exit_codes(err):
        path = str(report)
        if trajectory.is_trajectory(path):  # a `spectrum batch --report` file
            doc = trajectory.read(path)
            if json_out:
                _print_json(doc)
                return

            with _displaying(path):
                render_batch(doc, stdout_console(), top or 12)
            return

        doc = read_report(path)
        if json_out:
            _print_json(doc)
            return

        with _displaying(path):
            render(doc, stdout_console(), top=top)


def _print_json(doc: dict) -> None:
    print(dumps(doc))


@contextlib.contextmanager
def _displaying(path: str) -> Iterator[None]:
    """A document read from ``path`` that the summary cannot display is a damaged file
    (the reader checks the fields the summary uses; this is the backstop), not a bug."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(f"{path}: a damaged spectrum report: cannot display it "
                         f"({type(exc).__name__}: {exc})") from None
