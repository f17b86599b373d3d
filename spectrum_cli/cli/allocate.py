"""``spectrum allocate``: layer-wise sparsity ratios (AlphaPruning) or learning-rate
factors (TempBalance) from each layer's heavy-tail exponent α.

The layers' α are measured as ``spectrum analyze`` measures them (every input it reads,
``--jobs``, ``--scheduler``, the per-tensor cache); the mapping is
:mod:`spectrum_cli.core.allocation`, the glue :mod:`spectrum_cli.allocate`.
``--json`` prints the document (``allocations``: module name -> value), ``--csv`` the
list the reference code consumes, ``--plot`` a picture; the terminal view is a bar chart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from spectrum_cli.allocate import allocate as run_allocate
from spectrum_cli.allocate import csv_text
from spectrum_cli.cli.analyze import analysis_progress, tensor_cache
from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.options import with_settings
from spectrum_cli.core.errors import UsageError
from spectrum_cli.report.allocation_plot import plot_allocation
from spectrum_cli.report.document import json_safe
from spectrum_cli.report.output import atomic_path, check_target, printable
from spectrum_cli.settings import OUTPUT, RUN, SAFETY, SELECT

ALLOC = "Allocation"
Method = Literal["alphapruning", "tempbalance"]
Metric = Literal["alpha_peak", "alpha_hill", "alpha_farms", "alpha_peak_corrected",
                 "alpha_farms_corrected", "alpha"]
Mapping = Literal["block_wise", "layer_wise"]
#: The terminal view's width (names are shortened from the left to fit).
WIDTH = 80
NAME_MAX = 38
_PARTS = " ▏▎▍▌▋▊▉█"


@with_settings(SELECT, RUN, "threads", "device", SAFETY, "json_out", "no_progress")
def allocate(
    path: Annotated[str, typer.Argument(
        metavar="CKPT", help="A checkpoint: torch.save file, .safetensors, *.index.json "
        "shards, .npy/.npz, an HF or DCP folder, or an fsspec URL.", show_default=False)],
    method: Annotated[Method, typer.Option(
        help="alphapruning: per-layer sparsity ratios (Lu et al., NeurIPS 2024); "
        "tempbalance: per-layer learning-rate factors (Zhou et al., NeurIPS 2023).",
        rich_help_panel=ALLOC, show_default=False, metavar="METHOD")],
    sparsity: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="alphapruning: the target sparsity S, the parameter-"
        "weighted mean of the ratios (required).", rich_help_panel=ALLOC)] = None,
    epsilon: Annotated[Optional[float], typer.Option(
        min=0.0, max=0.999, help="alphapruning: the band [1-E, 1+E] before rescaling. "
        "\\[default: 0.3]", rich_help_panel=ALLOC, show_default=False)] = None,
    mapping: Annotated[Optional[Mapping], typer.Option(
        help="alphapruning: map block means of alpha (block_wise: transformer blocks "
        "from the names, layers.N) or each layer's own. \\[default: block_wise]",
        rich_help_panel=ALLOC, show_default=False)] = None,
    lr_min_ratio: Annotated[Optional[float], typer.Option(
        min=0.0, help="tempbalance: the smallest factor. \\[default: 0.5]",
        rich_help_panel=ALLOC, show_default=False)] = None,
    lr_max_ratio: Annotated[Optional[float], typer.Option(
        min=0.0, help="tempbalance: the largest factor. \\[default: 1.5]",
        rich_help_panel=ALLOC, show_default=False)] = None,
    min_eigenvalues: Annotated[Optional[int], typer.Option(
        min=0, help="tempbalance: layers with fewer eigenvalues keep factor 1 (the first "
        "and the last layer do too). \\[default: 50]", rich_help_panel=ALLOC,
        show_default=False)] = None,
    metric: Annotated[Optional[Metric], typer.Option(
        help="The per-layer alpha: alpha_peak, alpha_hill, alpha_farms, "
        "alpha_peak_corrected, alpha_farms_corrected or alpha (WeightWatcher's). "
        "\\[default: alpha_peak for alphapruning, alpha_hill for tempbalance, as the "
        "papers]", rich_help_panel=ALLOC, show_default=False,
        metavar="METRIC")] = None,
    csv: Annotated[Optional[Path], typer.Option(
        "--csv", help="Also write module,value rows in order (the list the reference "
        "code takes; numpy.loadtxt(P, delimiter=',', skiprows=1, usecols=1)).",
        rich_help_panel=OUTPUT)] = None,
    plot: Annotated[Optional[Path], typer.Option(
        help="Also draw the allocation (PNG, PDF or SVG by the suffix). Needs "
        "matplotlib.", rich_help_panel=OUTPUT)] = None,
    force: Annotated[bool, typer.Option(
        "--force", metavar="", help="Let --csv/--plot replace an existing file that "
        "spectrum did not write (never an input, a device or a folder).",
        rich_help_panel=OUTPUT)] = False,
    **settings: Any,
) -> None:
    """Per-layer sparsity ratios (AlphaPruning) or learning-rate factors (TempBalance)
    from each layer's alpha, as the papers' code maps them."""
    err = stderr_console()
    with exit_codes(err):
        args = _method_args(method, sparsity, epsilon, mapping, lr_min_ratio, lr_max_ratio,
                            min_eigenvalues)
        if csv is not None:
            check_target(csv, kind="csv", inputs=[path], force=force)
        if plot is not None:
            check_target(plot, kind="plot", inputs=[path], force=force)
        if settings["trust_checkpoint"]:
            err.print("[yellow]warning:[/] --trust-checkpoint: unpickling with "
                      "weights_only=False runs code from the file")
        cache_dir, cache_min = tensor_cache(settings)
        analysis = {k: v for k, v in settings.items()
                    if k not in ("json_out", "no_progress", "cache_dir", "no_cache")}

        def note(text: str) -> None:
            err.print(f"note: {printable(text)}", markup=False)

        with analysis_progress(err, enabled=not settings["no_progress"]) as progress:
            out = run_allocate(path, method, metric=metric, settings=analysis,
                               on_progress=progress and progress.update,
                               on_tick=progress and progress.tick, on_note=note,
                               cache_dir=cache_dir, cache_min_bytes=cache_min, **args)
        for warning in out.warnings:
            err.print(f"[yellow]warning:[/] {escape(printable(warning))}")
        doc = out.document
        if doc["method"] == "alphapruning" and doc["summary"]["out_of_range"]:
            err.print("[yellow]warning:[/] " + escape(printable(
                f"{len(doc['summary']['out_of_range'])} ratio(s) outside [0, 1] (kept, as "
                "the reference keeps them): lower --epsilon or --sparsity")))
        if csv is not None:
            with atomic_path(csv, kind="csv", inputs=[path], force=force) as tmp:
                Path(tmp).write_text(csv_text(doc), encoding="utf-8")
            err.print(f"CSV written to {printable(csv)}", markup=False)
        if plot is not None:
            with atomic_path(plot, kind="plot", inputs=[path], force=force) as tmp:
                plot_allocation(tmp, doc, title=f"{printable(os.path.basename(path))}: "
                                f"{method} ({doc['settings']['metric']})")
            err.print(f"plot written to {printable(plot)}", markup=False)
        if settings["json_out"]:
            print(json.dumps(json_safe(doc), indent=2))
            return
        render(stdout_console(), doc)


def _method_args(method: str, sparsity: float | None, epsilon: float | None,
                 mapping: str | None, lr_min: float | None, lr_max: float | None,
                 min_eigs: int | None) -> dict[str, Any]:
    """The mapping's arguments; an option of the other method is a usage error."""
    ap = {"--sparsity": sparsity, "--epsilon": epsilon, "--mapping": mapping}
    tb = {"--lr-min-ratio": lr_min, "--lr-max-ratio": lr_max, "--min-eigenvalues": min_eigs}
    other = tb if method == "alphapruning" else ap
    given = [k for k, v in other.items() if v is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: not an option of --method {method}")
    if method == "alphapruning":
        if sparsity is None:
            raise UsageError("--method alphapruning needs --sparsity S (the target mean "
                             "sparsity, e.g. 0.7)")
        out: dict[str, Any] = {"sparsity": sparsity}
        if epsilon is not None:
            out["epsilon"] = epsilon
        if mapping is not None:
            out["mapping"] = mapping
        return out
    out = {}
    if lr_min is not None:
        out["lr_min_ratio"] = lr_min
    if lr_max is not None:
        out["lr_max_ratio"] = lr_max
    if min_eigs is not None:
        out["eigs_thresh"] = min_eigs
    return out


#: First lines of the CSVs spectrum writes (an existing one may be replaced).
def _shorten(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _bar(value: float, top: float, width: int) -> str:
    if not top > 0 or not value > 0:
        return ""
    eighths = round(min(value / top, 1.0) * width * 8)
    return "█" * (eighths // 8) + (_PARTS[eighths % 8] if eighths % 8 else "")


def render(out: Any, doc: dict[str, Any]) -> None:
    """The terminal view: a header and one bar per layer (names escaped and shortened
    from the left; lines within 80 columns)."""
    s, summ = doc["settings"], doc["summary"]
    layers = doc["layers"]
    if doc["method"] == "alphapruning":
        how = "block means" if s["mapping"] == "block_wise" else "per layer"
        out.print(f"[bold]alphapruning[/]: sparsity ratios of {summ['n_layers']} layers "
                  f"({s['metric']}, {how}, ε = {s['epsilon']:g})")
        out.print(f"  target {s['sparsity']:g}, parameter-weighted mean "
                  f"{summ['weighted_mean']:.6g}, range [{summ['min']:.4g}, "
                  f"{summ['max']:.4g}]")
        head = "ratio"
    else:
        out.print(f"[bold]tempbalance[/]: learning-rate factors of {summ['n_layers']} "
                  f"layers ({s['metric']}, band {s['lr_min_ratio']:g}-"
                  f"{s['lr_max_ratio']:g})")
        out.print(f"  {summ['tuned']} tuned; {summ['untuned']} at factor 1 (first, last, "
                  f"< {s['eigs_thresh']} eigenvalues)")
        head = "factor"
    names = [printable(x["module"]) for x in layers]
    name_w = min(NAME_MAX, max([len(n) for n in names] + [6]))
    bar_w = WIDTH - name_w - 2 - 1 - 8 - 1 - 8 - 1
    top = max([x["value"] for x in layers] + [0.0])
    _line(out, f"  {'module':<{name_w}} {'alpha':>8} {head:>8}")
    for name, x in zip(names, layers):
        alpha = "-" if x["metric"] is None else f"{x['metric']:.4g}"
        text = f"  {_shorten(name, name_w):<{name_w}} {alpha:>8} {x['value']:>8.4f} "
        if x["allocated"]:
            _line(out, text + _bar(x["value"], top, bar_w))
        else:
            _line(out, text + _untuned(x["reason"]))
    for item in doc["left_out"][:5]:
        _line(out, f"  left out: {_shorten(printable(item['tensor']), NAME_MAX)}: "
                   f"{_short_reason(item['reason'])}")
    if len(doc["left_out"]) > 5:
        _line(out, f"  … and {len(doc['left_out']) - 5} more left out (see --json)")
    for note in doc["notes"]:
        _line(out, f"  note: {printable(note)}")


def _untuned(reason: str | None) -> str:
    text = str(reason)
    return "untuned (" + ("first" if text.startswith("first") else "last"
                          if text.startswith("last") else "few eigenvalues"
                          if "eigenvalues" in text else "no alpha") + ")"


def _short_reason(reason: str) -> str:
    """The reason a tensor was left out, in a few words (the JSON has it whole)."""
    return printable(reason.split(" (")[0])[:WIDTH - NAME_MAX - 14]


def _line(out: Any, text: str) -> None:
    """One line as is: no markup, emoji codes or highlighting taken from names (text
    read from a file has been through :func:`printable`)."""
    out.print(text, markup=False, emoji=False, highlight=False)
