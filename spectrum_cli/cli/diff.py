"""``spectrum diff``: per-tensor differences between two reports or two checkpoints."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from spectrum_cli.cli.console import exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.options import with_settings
from spectrum_cli.cli.summary import fmt, short_names
from spectrum_cli.core.errors import InputError
from spectrum_cli.io import storage
from spectrum_cli.report.document import dumps
from spectrum_cli.report.output import printable
from spectrum_cli.runs.diff import compare, markdown, shape_text
from spectrum_cli.runs.job import resolve_job
from spectrum_cli.settings import SAFETY


@with_settings("json_out", SAFETY)
def diff(
    a: Annotated[str, typer.Argument(help="An HDF5 report or a checkpoint (path or URL).")],
    b: Annotated[str, typer.Argument(help="The reference: report or checkpoint.")],
    md: Annotated[bool, typer.Option("--md", help="A Markdown table (for CI comments).")]
    = False,
    top: Annotated[int, typer.Option(help="Rows shown.")] = 20,
    **settings: Any,
) -> None:
    """Compare two reports or checkpoints: metric deltas, spectra, weights (A vs B)."""
    err = stderr_console()
    with exit_codes(err):
        job, _ = resolve_job(a, settings)  # configuration beside A, as analyze finds it
        for p in (a, b):
            if not storage.plexists(p):
                raise InputError(f"{p}: no such file or directory")
        json_out = settings["json_out"]
        doc = compare(str(a), str(b), job)
        if json_out:
            print(dumps(doc))
        elif md:
            print(markdown(doc, top), end="")
        else:
            _render(doc, stdout_console(), top)


def _render(doc, console, top: int) -> None:
    """The terminal table; names and paths come from files, so they are shown as plain
    text with control characters escaped (never markup, never raw ESC or newlines)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text


    console.print(Text.assemble(("spectrum diff ", "bold"), f"{printable(doc['a']['path'])} vs "
                                f"{printable(doc['b']['path'])}"), soft_wrap=True)
    if doc["weights_relative_overall"] is not None:
        console.print(f"overall ‖W_A − W_B‖_F / ‖W_B‖_F = {fmt(doc['weights_relative_overall'])}",
                      markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), show_edge=False,
                  collapse_padding=True)
    width = max(16, console.width - 50)
    for col in ("tensor", "κ A", "κ B", "Δκ rel", "σ rel", "‖ΔW‖rel"):
        table.add_column(col, justify="left" if col == "tensor" else "right", no_wrap=True,
                         max_width=width + 1 if col == "tensor" else None, overflow="fold")
    rows = doc["tensors"][:top]
    for r, name in zip(rows, short_names([r["name"] for r in rows], width)):
        k = r["metrics"].get("kappa", {})
        table.add_row(Text(name), fmt(k.get("a")),
                      fmt(k.get("b")), fmt(k.get("relative")),
                      fmt(r.get("singular_values_relative")), fmt(r.get("weights_relative")))
    console.print(table)
    changed = doc.get("shape_changed", [])
    for c in changed[:top]:
        console.print(Text(f"{printable(c['name'])}: shape changed {shape_text(c['a'])} -> "
                           f"{shape_text(c['b'])} (spectra and weights not compared)",
                           style="yellow"), soft_wrap=True)
    if len(changed) > top:
        console.print(Text(f"… and {len(changed) - top} more shape changes", style="yellow"))
    if doc["only_in_a"] or doc["only_in_b"]:
        console.print(f"only in A: {len(doc['only_in_a'])}, only in B: {len(doc['only_in_b'])}",
                      markup=False)
