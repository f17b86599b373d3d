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
