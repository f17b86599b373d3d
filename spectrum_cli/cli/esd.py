"""``spectrum esd``: the empirical spectral density of one tensor and its fits.

WeightWatcher's per-layer columns for one matrix (the power-law fit of the tail, the log
norms, the Marchenko-Pastur fit of the bulk, the distance to the randomized ESD), with
the exact interval for α and, on request, a bootstrap one; ``--plot`` draws the ESD on
log-log axes. The numerics are :mod:`spectrum_cli.core.esd_analysis`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from spectrum_cli.api import analyze_matrix
from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.options import with_settings
from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.esd_analysis import analyze_esd
from spectrum_cli.io import LoadPolicy, open_source
from spectrum_cli.report.document import json_safe
from spectrum_cli.report.esd_plot import plot_esd
from spectrum_cli.report.output import atomic_path, check_target, printable
from spectrum_cli.settings import OUTPUT, SAFETY


@with_settings("json_out", SAFETY)
def esd(
    path: Annotated[str, typer.Argument(
        metavar="PATH", help="A checkpoint, .safetensors, .npy/.npz file, Hugging Face "
        "folder or fsspec URL.")],
    tensor: Annotated[Optional[str], typer.Option(
        help="Which matrix (a tensor name; a k-D kernel is reshaped to (out, in·k…)); "
        "optional when the file holds one.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", metavar="", help="Let --plot replace an existing file that spectrum did "
        "not write (never an input, a device or a folder).", rich_help_panel=OUTPUT)] = False,
    plot: Annotated[Optional[Path], typer.Option(
        help="Write a picture of the ESD (log-log, with the fitted tail, xmin and the "
        "MP edge): PNG, PDF or SVG by the suffix. Needs matplotlib.")] = None,
    seed: Annotated[int, typer.Option(
        min=0, help="Seed of the entry permutation (rand_distance) and of the "
        "bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(
        min=0, max=100000, help="Resamples for a bootstrap interval of alpha that "
        "includes the choice of xmin (0: none; each costs one fit).")] = 0,
    level: Annotated[float, typer.Option(
        min=0.5, max=0.999, help="Confidence level of the intervals.")] = 0.95,
    **settings: Any,
) -> None:
    """The ESD of one matrix: power law of the tail (alpha), norms, Marchenko-Pastur
    bulk and rand_distance, as WeightWatcher's columns."""
    err = stderr_console()
    json_out = settings["json_out"]
    with exit_codes(err):
        if plot is not None:
            check_target(plot, kind="plot", inputs=[path], force=force)
        a, name, note = _read(path, tensor, settings)
        doc, result = _measure(a, name, seed, bootstrap, level)
        if note:
            doc["notes"].append(note)
        if plot is not None:
            with atomic_path(plot, kind="plot", inputs=[path], force=force) as tmp:
                plot_esd(tmp, result.evals, result.power_law, result.marchenko_pastur,
                         title=f"{printable(name)} ({a.shape[0]}x{a.shape[1]}): ESD")
            err.print(f"plot written to {printable(plot)}", markup=False)
        if json_out:
            import json


            print(json.dumps(json_safe(doc), indent=2))
            return
        _render(stdout_console(), doc)


def _read(path: str, tensor: str | None, settings: dict[str, Any]) -> tuple[Any, str, str]:
    """The chosen tensor as a float64 matrix, its name and a note on reshaping."""
    import math

    import numpy as np


    policy = LoadPolicy(tuple(settings.get("allow_global") or ()),
                        bool(settings.get("trust_checkpoint")), None,
                        tuple(settings.get("storage_option") or ()))
    source = open_source(path, policy)
    try:
        entries = {i.name: i for i in source.entries()}
        usable = [n for n, i in entries.items()
                  if len(i.shape) >= 2 and i.is_float and not i.skip]
        if tensor is None:
            if len(usable) != 1:
                raise UsageError(f"{path}: holds {len(usable)} matrices; choose one with "
                                 "--tensor NAME")
            tensor = usable[0]
        info = entries.get(tensor)
        if info is None:
            shown = ", ".join(usable[:20]) + (", …" if len(usable) > 20 else "")
            raise UsageError(f"no tensor {tensor!r} in {path}; matrices: {shown or 'none'}")
        if not info.is_float or len(info.shape) < 2 or 0 in info.shape:
            raise UsageError(f"{tensor}: not a matrix (shape {tuple(info.shape)}, "
                             f"{info.dtype})")
        a = np.asarray(source.read(tensor), dtype=np.float64)
    finally:
        source.close()
    note = ""
    if a.ndim > 2:
        shape = (a.shape[0], math.prod(a.shape[1:]))
        note = f"{a.ndim}-D kernel {tuple(a.shape)} reshaped to {shape[0]}x{shape[1]}"
        a = a.reshape(shape)
    if not np.isfinite(a).all():
        raise UsageError(f"{tensor}: has NaN or Inf entries; no spectrum")
    return np.ascontiguousarray(a), tensor, note


def _measure(a: Any, name: str, seed: int, n_boot: int, level: float
             ) -> tuple[dict[str, Any], Any]:
    """The document of one matrix (its singular values by spectrum's dense backend)
    and the analysis (for the plot)."""
    t = analyze_matrix(a, name, square="none", backend="dense")
    sv = t.singular_values
    result = analyze_esd(a, sv.values, seed=seed, n_boot=n_boot, level=level)
    doc = {"tensor": name, **result.as_dict(),
           "method": {"backend": sv.backend, "route": sv.route, "accuracy": sv.accuracy}}
    return doc, result


def _g(v: Any, fmt: str = ".6g") -> str:
    return "-" if v is None else format(v, fmt)


def _render(out: Any, doc: dict[str, Any]) -> None:
    """The terminal view of the document (names escaped; lines within 80 columns)."""
    pl, nm, mp = doc["power_law"], doc["norms"], doc["marchenko_pastur"]
    m, n = doc["matrix_shape"]
    rows: list[tuple[str, str]] = []
    if pl["alpha"] is None:
        rows.append(("alpha", f"undefined: {pl['reason']}"))
    else:
        iv = pl["interval"]
        span = "" if iv is None else (f"   {iv['level']:.0%} [{iv['low']:.4g}, "
                                      f"{iv['high']:.4g}] at xmin")
        rows += [("alpha", f"{pl['alpha']:.6g} ± {pl['sigma']:.3g} (σ){span}"),
                 ("xmin, D", f"{pl['xmin']:.6g}, {pl['ks_distance']:.4g} ({pl['variant']} "
                             "fit)"),
                 ("tail", f"{pl['tail_count']} eigenvalues >= xmin; {pl['n_fit']} fitted "
                          f"(λ > {pl['threshold']:g})")]
        if pl["warning"]:
            why = "alpha < 2" if pl["alpha"] < 2 else "alpha > 6"
            rows.append(("warning", f"{pl['warning']} ({why}, as WeightWatcher)"))
    boot = doc["bootstrap"]
    if boot is not None:
        rows.append((f"bootstrap {boot['level']:.0%}",
                     f"[{_g(boot['low'], '.4g')}, {_g(boot['high'], '.4g')}] "
                     f"({boot['n_defined']}/{boot['n_boot']} resamples, xmin refitted)"))
    rows += [("log_norm", f"{_g(nm['log_norm'])}   log_spectral_norm "
                          f"{_g(nm['log_spectral_norm'])}"),
             ("log_alpha_norm", f"{_g(nm['log_alpha_norm'])}   alpha_weighted "
                                f"{_g(nm['alpha_weighted'])}")]
    if mp["bulk_max"] is None:
        rows.append(("MP bulk", f"undefined: {mp['reason']}"))
    else:
        rows.append(("MP edge λ+", f"{mp['bulk_max']:.6g} ({mp['law']}, Q = {mp['q']:.4g}), "
                                   f"{mp['num_spikes']} spikes, softrank "
                                   f"{mp['softrank']:.4g}"))
    rd = doc["rand_distance"]
    rows.append(("rand_distance", f"{_g(rd['value'], '.4g')} (entries permuted, seed "
                                  f"{rd['seed']})"))
    rows.insert(0, ("eigenvalues", f"{doc['n_eigenvalues']} λ = σ² of the {m}x{n} matrix "
                                   f"({doc['method']['backend']}/{doc['method']['route']})"))
    out.print(f"[bold]{escape(printable(doc['tensor']))}[/]")
    for label, text in rows:
        out.print(f"  {label:<16}{escape(printable(text))}")
    for note in doc["notes"]:
        out.print(f"  note: {escape(printable(note))}")
