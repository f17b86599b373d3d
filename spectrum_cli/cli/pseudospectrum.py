"""``spectrum pseudospectrum``: ρ_ε and a contour plot for one square matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.options import with_settings
from spectrum_cli.core.analyze import GATES
from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.pseudospectra import pseudospectral_radius
from spectrum_cli.core.thresholds import parse_eps
from spectrum_cli.io import LoadPolicy, open_source
from spectrum_cli.report.document import json_safe
from spectrum_cli.report.output import atomic_path, check_target, printable
from spectrum_cli.report.plots import plot_pseudospectrum
from spectrum_cli.settings import SAFETY


@with_settings("json_out", "force", SAFETY)
def pseudospectrum(
    path: Annotated[Path, typer.Argument(help="A .npy/.npz file or a checkpoint.")],
    tensor: Annotated[Optional[str], typer.Option(
        help="Which matrix (a tensor name, or '<weight_hh name>\\[gate]'); optional when "
        "the file holds one 2-D array.")] = None,
    eps: Annotated[Optional[list[str]], typer.Option(
        metavar="EPS[,EPS...]", help="ε levels (absolute unless --eps-relative). "
        "\\[default: 1e-1,1e-2,...,1e-8]")] = None,
    eps_relative: Annotated[bool, typer.Option("--eps-relative",
                                               help="Scale each ε by ‖A‖₂.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of the contours.")]
    = None,
    resolution: Annotated[int, typer.Option(min=20, max=2000,
                                            help="Grid points per axis.")] = 120,
    **settings: Any,
) -> None:
    """Pseudospectral radii (criss-cross) and a pseudospectrum picture of a matrix."""
    err = stderr_console()
    json_out, force = settings["json_out"], settings["force"]
    with exit_codes(err):
        import numpy as np



        levels = parse_eps(eps or []) or tuple(10.0**-k for k in range(1, 9))
        if plot is not None:
            check_target(plot, kind="plot", inputs=[path], force=force)
        source = open_source(str(path), LoadPolicy(tuple(settings["allow_global"] or ()),
                                                   settings["trust_checkpoint"]))
        try:
            a, name = _select(source, tensor)
        finally:
            source.close()
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise UsageError(f"{name}: expected a square matrix, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise UsageError(f"{name}: has NaN or Inf entries")
        scale = float(np.linalg.norm(a, 2)) if eps_relative else 1.0
        radii = [pseudospectral_radius(a, e * scale) for e in levels]
        rows = [{"eps": e, "eps_absolute": r.eps, "value": r.value, "kind": r.kind,
                 "method": r.method} for e, r in zip(levels, radii)]
        if plot is not None:
            with atomic_path(plot, kind="plot", inputs=[path], force=force) as tmp:
                plot_pseudospectrum(tmp, a, [r.eps for r in radii],
                                    max(r.value for r in radii),
                                    title=f"{printable(name)}: ε-pseudospectra",
                                    resolution=resolution)
            err.print(f"plot written to {printable(plot)}", markup=False)
        if json_out:
            import json


            lam = np.linalg.eigvals(a)
            print(json.dumps(json_safe({"tensor": name, "shape": list(a.shape),
                                        "spectral_radius": float(np.max(np.abs(lam))),
                                        "pseudospectral_radius": rows}), indent=2))
            return
        out = stdout_console()
        out.print(f"[bold]{escape(printable(name))}[/] {a.shape[0]}x{a.shape[1]}, ρ = "
                  f"{float(np.max(np.abs(np.linalg.eigvals(a)))):.10g}")
        for r in rows:
            mark = "" if r["kind"] == "exact" else " (lower bound)"
            out.print(f"  ρ_ε  ε = {r['eps']:.3g}: {r['value']:.12g}{mark}")


def _select(source, tensor):
    """The requested matrix as float64, ``name[gate]`` picking an LSTM/GRU gate block."""
    import re


    entries = {i.name: i for i in source.entries()}
    if tensor is None:
        two_d = [n for n, i in entries.items() if len(i.shape) == 2 and i.is_float]
        if len(two_d) != 1:
            raise UsageError(f"{source.path}: holds {len(two_d)} matrices; choose one with "
                             "--tensor NAME")
        tensor = two_d[0]
    m = re.fullmatch(r"(.+)\[(\w)\]", tensor)
    base, gate = (m[1], m[2]) if m and m[1] in entries else (tensor, None)
    if base not in entries:
        raise UsageError(f"no tensor {base!r}; matrices: " + ", ".join(
            n for n, i in entries.items() if len(i.shape) == 2)[:400])
    a = source.read(base)
    if gate is not None:
        rows, h = a.shape
        names = GATES.get(rows // h, ())
        if gate not in names:
            raise UsageError(f"{base}: no gate {gate!r} (gates: {', '.join(names) or 'none'})")
        i = names.index(gate)
        a = a[i * h:(i + 1) * h]
    return a, tensor
