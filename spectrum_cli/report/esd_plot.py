"""The picture of ``spectrum esd --plot``: the ESD on log-log axes with its fits.

Drawn: the density of the eigenvalues λ_i = σ_i² above xmin/100 (WeightWatcher's
range) in logarithmic bins (per unit λ, relative to all eigenvalues), the fitted power law
p(λ) = (n/N)·(α - 1)/xmin·(λ/xmin)^(-α) from xmin on (the tail's share n/N of the
eigenvalues, so that it sits on the histogram), xmin, and the Marchenko-Pastur bulk
edge λ₊ with its Tracy-Widom margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spectrum_cli.report.plots import pyplot


def esd_histogram(evals: np.ndarray, bins: int = 80, lower: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(edges, density) of the eigenvalues above ``lower`` (and above 0) in ``bins``
    logarithmic bins; the density is per unit λ and relative to all eigenvalues, so it
    integrates to the share of them that is shown."""
    lam = np.asarray(evals, dtype=np.float64)
    pos = lam[(lam > 0) & (lam > lower)]
    if pos.size == 0:
        return np.array([1.0, 10.0]), np.zeros(1)
    lo, hi = float(pos.min()), float(pos.max())
    if hi <= lo * (1 + 1e-9):
        lo, hi = lo / 1.5, hi * 1.5
    edges = np.geomspace(lo, hi, bins + 1)
    counts, _ = np.histogram(pos, bins=edges)
    return edges, counts / (lam.size * np.diff(edges))


def default_bins(n: int) -> int:
    """4·√n logarithmic bins, between 10 and 100 (WeightWatcher draws 100)."""
    return int(min(100, max(10, round(4 * np.sqrt(max(n, 1))))))


def plot_esd(path: str, evals: np.ndarray, fit: Any, mp: Any = None, title: str = "",
             bins: int | None = None) -> None:
    """Write the ESD picture (module docstring) to ``path`` (PNG, PDF or SVG by its
    suffix). ``fit`` is a :class:`~spectrum_cli.core.esd.PowerLawFit` and ``mp`` a
    :class:`~spectrum_cli.core.marchenko_pastur.MarchenkoPasturFit` (either may be
    undefined: then it is not drawn, and the legend says why)."""
    plt = pyplot()
    lam = np.asarray(evals, dtype=np.float64)
    bins = default_bins(lam.size) if bins is None else bins
    # As WeightWatcher's plot: the eigenvalues above xmin/100 (0.004 λ_max without a fit).
    top_lam = float(lam.max()) if lam.size else 0.0
    lower = fit.xmin / 100 if fit is not None and fit.defined else 0.004 * top_lam
    edges, density = esd_histogram(lam, bins, lower)
    left_out = int(np.count_nonzero(lam <= lower))
    fig, ax = plt.subplots(figsize=(7.0, 5.0), dpi=120)
    shown = density > 0
    what = f"ESD: {lam.size - left_out} of {lam.size} eigenvalues"
    what += f" (those <= {lower:.3g} left out)" if left_out else ""
    if shown.any():
        ax.stairs(np.where(shown, density, np.nan), edges, fill=True, color="#9ecae1",
                  alpha=0.9, label=what)
        ax.stairs(np.where(shown, density, np.nan), edges, color="#3182bd", linewidth=0.8)
    else:
        ax.text(0.5, 0.5, "no positive eigenvalue", transform=ax.transAxes, ha="center")
        ax.set_xlim(edges[0], edges[-1])
    floor = float(density[shown].min()) / 10 if shown.any() else 1e-3
    top = float(density.max()) * 5 if shown.any() else 1.0
    if fit is not None and fit.defined:
        x = np.geomspace(fit.xmin, max(fit.xmax, fit.xmin * 1.01), 200)
        share = fit.tail_count / lam.size
        y = share * (fit.alpha - 1) / fit.xmin * (x / fit.xmin) ** (-fit.alpha)
        ax.plot(x, y, color="#d62728", linewidth=2,
                label=f"power law α = {fit.alpha:.3f} ± {fit.sigma:.3f} "
                      f"(D = {fit.ks_distance:.3f}, {fit.tail_count} in the tail)")
        ax.axvline(fit.xmin, color="#d62728", linestyle=":", linewidth=1.5,
                   label=f"xmin = {fit.xmin:.4g}")
        floor = min(floor, float(y.min()) / 3)
    elif fit is not None:
        ax.plot([], [], " ", label=f"no power law: {fit.reason}")
    if mp is not None and mp.defined:
        ax.axvline(mp.bulk_max, color="#ff7f0e", linestyle="--", linewidth=1.5,
                   label=f"MP bulk edge λ+ = {mp.bulk_max:.4g} ({mp.num_spikes} spikes "
                         f"beyond λ+ + TW margin)")
    elif mp is not None:
        ax.plot([], [], " ", label=f"no MP fit: {mp.reason}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(floor, top)
    ax.set_xlabel("eigenvalue λ = σ² of WᵀW")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
