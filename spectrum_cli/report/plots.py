"""Pictures (matplotlib, an optional extra: ``pip install 'spectrum-cli[plot]'``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.pseudospectra import sigma_min_grid
from spectrum_cli.report.document import as_number


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'spectrum-cli[plot]'") from None
    return plt


def pseudospectrum_frame(lam: np.ndarray, outer_radius: float,
                         margin: float = 0.1) -> tuple[float, float, float, float]:
    """A box framing the spectrum and the largest ε-pseudospectrum drawn: the
    eigenvalues' box grown by 1.2 (ρ_ε - ρ) plus a margin, clipped to the disk of radius
    ρ_ε, which contains the whole ε-pseudospectrum."""
    rho = float(np.max(np.abs(lam)))
    grow = max(outer_radius - rho, 0.0)
    x0, x1 = float(lam.real.min()), float(lam.real.max())
    y0, y1 = float(lam.imag.min()), float(lam.imag.max())
    span = max(x1 - x0, y1 - y0, grow, 1e-6 * max(rho, 1.0))
    pad = 1.2 * grow + margin * span
    lim = outer_radius + margin * span
    return (max(x0 - pad, -lim), min(x1 + pad, lim), max(y0 - pad, -lim), min(y1 + pad, lim))


def plot_pseudospectrum(path: str, a: np.ndarray, eps: Sequence[float],
                        outer_radius: float, title: str = "", resolution: int = 120) -> None:
    """Contours of log10 σ_min(zI - A) at the ε levels, eigenvalues, unit circle;
    ``outer_radius`` is ρ_ε for the largest ε (it frames the picture)."""
    plt = pyplot()
    lam = np.linalg.eigvals(a)
    levels = sorted(eps)
    x0, x1, y0, y1 = pseudospectrum_frame(lam, outer_radius)
    xs = np.linspace(x0, x1, resolution)
    ys = np.linspace(y0, y1, resolution)
    smin = sigma_min_grid(a, xs, ys)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    logs = np.log10(levels)
    cs = ax.contour(xs, ys, np.log10(np.maximum(smin, 1e-300)), levels=logs, cmap="viridis")
    ax.clabel(cs, fmt=lambda v: f"{v:.0f}" if float(v).is_integer() else f"{v:.2g}",
              fontsize=7)
    ax.plot(lam.real, lam.imag, "k.", markersize=4, label="eigenvalues")
    theta = np.linspace(0, 2 * np.pi, 512)
    ax.plot(np.cos(theta), np.sin(theta), "--", color="0.5", linewidth=0.8,
            label="unit circle")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel("Re z")
    ax.set_ylabel("Im z")
    ax.set_title(title or "ε-pseudospectra: contours of log10 σ_min(zI − A)")
    cbar = fig.colorbar(cs, ax=ax, shrink=0.8)
    cbar.set_label("log10 ε")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pick(doc: dict, suffixes: Sequence[str]) -> list[str]:
    names = doc["indicators"]
    return [n for s in suffixes for n in names if n.endswith(s)]


#: Per-tensor κ lines drawn (the tensors whose κ gets largest along the run).
TENSOR_LINES = 5
_CONTROL = dict.fromkeys(range(32), "?") | {127: "?"}


def plot_label(text: str, width: int = 60) -> str:
    """A legend label that matplotlib shows as written: no mathtext (``$``), no hidden
    ``_``-prefixed entry, no control characters, at most ``width`` characters (the
    middle cut out)."""
    text = text.translate(_CONTROL).replace("$", r"\$")
    if len(text) > width:
        text = text[:(width - 1) // 2] + "…" + text[-(width // 2):]
    return "\u200b" + text if text.startswith("_") else text


def _panels(doc: dict, series) -> list[tuple[str, list[str], bool, float | None]]:
    """(title, indicator names, log scale, threshold) of each panel with data."""
    operator = [("κ(V)", _pick(doc, [".kappa_V"]), True, None),
                ("ρ(J)", _pick(doc, [".spectral_radius"]), False, 1.0),
                ("EoS ratio", _pick(doc, [".eos_ratio_gd", ".eos_ratio_momentum",
                                          ".eos_ratio_adam", ".eos_ratio_preconditioned"]),
                 False, 1.0)]
    operator = [p for p in operator if p[1]]
    panels = [("loss", ["__loss__"], True, None)] + operator
    if not operator:  # weights only: what the tensors themselves say
        panels += _tensor_panels(doc, series)
    return [(t, [n for n in names if np.isfinite(series(n)).any()], log, thr)
            for t, names, log, thr in panels
            if any(np.isfinite(series(n)).any() for n in names)]


def _tensor_panels(doc: dict, series) -> list[tuple[str, list[str], bool, float | None]]:
    names = set(doc["indicators"])
    per = [n for n in doc["indicators"] if n.startswith("tensor.kappa[")]
    per.sort(key=lambda n: -np.nanmax(np.where(np.isfinite(series(n)), series(n), -np.inf),
                                      initial=-np.inf))
    entropy = ("tensors.mean_spectral_entropy_normalized"
               if "tensors.mean_spectral_entropy_normalized" in names
               else "tensors.mean_spectral_entropy")
    return [("κ (tensors)", [n for n in ["tensors.max_kappa"] if n in names]
             + per[:TENSOR_LINES], True, None),
            ("σ_max (max)", [n for n in ["tensors.max_sigma_max"] if n in names], True, None),
            ("stable rank (min)", [n for n in ["tensors.min_stable_rank"] if n in names],
             False, None),
            ("entropy (mean)", [entropy] if entropy in names else [], False, None)]


def trajectory_figure(doc: dict):
    """The figure of :func:`plot_trajectory` (matplotlib ``Figure``, not saved)."""
    plt = pyplot()
    ok = [c for c in doc["checkpoints"] if c["status"] == "ok"]
    steps = np.array([c["step"] if c["step"] is not None else i for i, c in enumerate(ok)],
                     dtype=float)
    loss = np.array([c["loss"] if isinstance(c.get("loss"), (int, float)) else np.nan
                     for c in ok], dtype=float)

    def series(name: str) -> np.ndarray:
        if name == "__loss__":
            return loss
        y = np.array([_float(c["indicators"].get(name)) for c in ok], dtype=float)
        return np.where(np.isfinite(y), y, np.nan)

    panels = _panels(doc, series)
    fig, axes = plt.subplots(max(1, len(panels)), 1, sharex=True,
                             figsize=(8, 2.1 * max(1, len(panels))), dpi=110)
    axes = np.atleast_1d(axes)
    if not panels:
        axes[0].text(0.5, 0.5, "no indicator with a finite value to plot",
                     ha="center", va="center", transform=axes[0].transAxes)
    windows = doc["spikes"]["windows"]
    for ax, (title, names, log, threshold) in zip(axes, panels):
        log = log and _spans_decades(np.concatenate([series(n) for n in names]))
        for name in names:
            y = series(name)
            label = plot_label("loss" if name == "__loss__" else name)
            style = ({"color": "k", "ls": "--", "lw": 0.9} if name == "tensors.max_kappa"
                     and len(names) > 1 else {"lw": 1.1})
            if log:
                ax.semilogy(steps, np.where(y > 0, y, np.nan), marker=".", ms=3, label=label,
                            **style)
            else:
                ax.plot(steps, y, marker=".", ms=3, label=label, **style)
                ax.ticklabel_format(axis="y", useOffset=False)
        if names == ["__loss__"] and doc["spikes"]["onsets"]:
            on = np.array(doc["spikes"]["onsets"], dtype=float)
            idx = [int(np.nonzero(steps == s)[0][0]) for s in on if s in steps]
            ax.plot(on[:len(idx)], loss[idx], "rv", ms=5, label="spike onset")
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=0.8)
        for start, end in windows:
            ax.axvspan(start, end, color="red", alpha=0.12, lw=0)
        ax.set_ylabel(title)
        ax.legend(loc="best", fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    title = (f"{doc['source']}: spikes ({doc['spikes']['rule']}) shaded"
             if np.isfinite(loss).any() else f"{doc['source']}: no loss recorded")
    axes[0].set_title(plot_label(title, 110), fontsize=9)
    fig.tight_layout()
    return fig


def _spans_decades(y: np.ndarray) -> bool:
    """Whether positive data spread over more than a factor 10 (worth a log axis)."""
    y = y[np.isfinite(y) & (y > 0)]
    return y.size > 0 and float(y.max()) > 10 * float(y.min())


def _float(value) -> float:
    number = as_number(value)
    return np.nan if number is None else number
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def plot_trajectory(path: str, doc: dict) -> None:
    """Stacked panels sharing the step axis: loss (log) with spikes, κ(V), ρ(J), the
    edge-of-stability ratios with their threshold 1; instability windows shaded. Without
    optimizer operators (weights-only checkpoints): the tensors' max κ with the κ of the
    tensors that reach the largest, max σ_max, min stable rank and mean entropy."""
    plt = pyplot()
    fig = trajectory_figure(doc)
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_hessian_density(path: str, grid: np.ndarray, density: np.ndarray, lam_max: float,
                         lam_min: float, lr: float | None, bandwidth: float,
                         momentum: float = 0.0) -> None:
    """The Hessian's spectral density (log scale) with λ_max, λ_min, 2/lr and, with
    momentum μ, the heavy-ball edge 2(1+μ)/lr."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.semilogy(grid, np.maximum(density, 1e-300), lw=1.2, label="SLQ density")
    ax.axvline(lam_max, color="C3", ls="--", lw=1, label=f"λ_max = {lam_max:.4g}")
    ax.axvline(lam_min, color="C2", ls="--", lw=1, label=f"λ_min = {lam_min:.4g}")
    if lr:
        edge = 2 / lr
        if edge <= 3 * max(float(grid[-1]), 1e-300):
            ax.axvline(edge, color="k", ls=":", lw=1, label=f"2/lr = {edge:.4g} (EoS)")
        else:  # far off scale: say where it is instead of squashing the density
            ax.plot([], [], " ", label=f"2/lr = {edge:.4g} (off scale)")
        if momentum and 2 * (1 + momentum) / lr <= 3 * max(float(grid[-1]), 1e-300):
            ax.axvline(2 * (1 + momentum) / lr, color="0.4", ls="-.", lw=1,
                       label=f"2(1+μ)/lr = {2 * (1 + momentum) / lr:.4g} (momentum EoS)")
    peak = float(np.max(density))
    ax.set_ylim(max(peak * 1e-8, 1e-300), peak * 10)
    ax.set_xlabel("eigenvalue of the loss Hessian")
    ax.set_ylabel("density")
    ax.set_title(f"Hessian spectral density (Gaussian broadening, bandwidth {bandwidth:.3g})",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_entropy_histogram(path: str, entropies: np.ndarray) -> None:
    """Histogram of per-sample input-Jacobian spectral entropies."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    ax.hist(entropies, bins=min(40, max(5, entropies.size // 4)), color="C0", alpha=0.8)
    ax.set_xlabel("spectral entropy of J_f(x) (nats)")
    ax.set_ylabel("samples")
    ax.set_title(f"input-Jacobian entropy over {entropies.size} samples", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
