"""``spectrum report show``: print a report back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spectrum_cli.cli.console import exit_codes, stderr_console, stdout_console


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
        from spectrum_cli.report import trajectory

        if trajectory.is_trajectory(str(report)):  # a `spectrum batch --report` file
            doc = trajectory.read(str(report))
            if json_out:
                from spectrum_cli.report.document import dumps

                print(dumps(doc))
            else:
                from spectrum_cli.cli.batch import render as render_batch

                render_batch(doc, stdout_console(), top or 12)
            return
        from spectrum_cli.report.hdf5 import read_report

        doc = read_report(str(report))
        if json_out:
            from spectrum_cli.report.document import dumps

            print(dumps(doc))
        else:
            from spectrum_cli.cli.summary import render

            render(doc, stdout_console(), top=top)
