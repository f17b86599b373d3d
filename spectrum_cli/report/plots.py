"""Pictures (matplotlib, an optional extra: ``pip install 'spectrum-cli[plot]'``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from spectrum_cli.core.errors import UsageError


def _pyplot():
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
    from spectrum_cli.core.pseudospectra import sigma_min_grid

    plt = _pyplot()
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


def plot_trajectory(path: str, doc: dict) -> None:
    """Stacked panels sharing the step axis: loss (log) with spikes, κ(V), ρ(J), the
    edge-of-stability ratios with their threshold 1; instability windows shaded."""
    plt = _pyplot()
    ok = [c for c in doc["checkpoints"] if c["status"] == "ok"]
    steps = np.array([c["step"] if c["step"] is not None else i for i, c in enumerate(ok)],
                     dtype=float)

    def series(name: str) -> np.ndarray:
        return np.array([float(c["indicators"].get(name, np.nan)) for c in ok], dtype=float)

    panels = [("loss", ["__loss__"], True, None),
              ("κ(V)", _pick(doc, [".kappa_V"]), True, None),
              ("ρ(J)", _pick(doc, [".spectral_radius"]), False, 1.0),
              ("EoS ratio", _pick(doc, [".eos_ratio_gd", ".eos_ratio_momentum",
                                        ".eos_ratio_adam"]), False, 1.0)]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(8, 2.1 * len(panels)),
                             dpi=110)
    axes = np.atleast_1d(axes)
    windows = doc["spikes"]["windows"]
    for ax, (title, names, log, threshold) in zip(axes, panels):
        for name in names:
            y = np.array([c["loss"] if c["loss"] is not None else np.nan for c in ok],
                         dtype=float) if name == "__loss__" else series(name)
            y = np.where(np.isfinite(y), y, np.nan)
            label = "loss" if name == "__loss__" else name
            if log and np.nanmin(np.where(y > 0, y, np.nan), initial=np.inf) < np.inf:
                ax.semilogy(steps, np.where(y > 0, y, np.nan), lw=1.1, label=label)
            else:
                ax.plot(steps, y, lw=1.1, label=label)
        if names == ["__loss__"] and doc["spikes"]["onsets"]:
            on = np.array(doc["spikes"]["onsets"], dtype=float)
            loss = np.array([c["loss"] if c["loss"] is not None else np.nan for c in ok])
            idx = [int(np.nonzero(steps == s)[0][0]) for s in on if s in steps]
            ax.plot(on[:len(idx)], loss[idx], "rv", ms=5, label="spike onset")
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=0.8)
        for start, end in windows:
            ax.axvspan(start, end, color="red", alpha=0.12, lw=0)
        ax.set_ylabel(title)
        ax.legend(loc="upper right", fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[0].set_title(f"{doc['source']}: spikes ({doc['spikes']['rule']}) shaded", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_hessian_density(path: str, grid: np.ndarray, density: np.ndarray, lam_max: float,
                         lam_min: float, lr: float | None, bandwidth: float,
                         momentum: float = 0.0) -> None:
    """The Hessian's spectral density (log scale) with λ_max, λ_min, 2/lr and, with
    momentum μ, the heavy-ball edge 2(1+μ)/lr."""
    plt = _pyplot()
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    ax.hist(entropies, bins=min(40, max(5, entropies.size // 4)), color="C0", alpha=0.8)
    ax.set_xlabel("spectral entropy of J_f(x) (nats)")
    ax.set_ylabel("samples")
    ax.set_title(f"input-Jacobian entropy over {entropies.size} samples", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
