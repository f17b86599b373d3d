"""One matrix's ESD with every fit together: what ``spectrum esd`` shows.

The power-law fit of the tail with its exact interval (:mod:`spectrum_cli.core.esd`),
optionally a bootstrap interval, WeightWatcher's log norms, the Marchenko-Pastur fit of
the bulk (:mod:`spectrum_cli.core.marchenko_pastur`) and ``rand_distance``
(:mod:`spectrum_cli.core.randomization`), computed from the matrix and its float64
singular values. Pure numerics: the caller reads the matrix and computes the singular
values (``spectrum_cli.api.analyze_matrix``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spectrum_cli.core import esd
from spectrum_cli.core.marchenko_pastur import MarchenkoPasturFit, fit_marchenko_pastur
from spectrum_cli.core.randomization import rand_distance


@dataclass(frozen=True)
class ESDAnalysis:
    """Every fit of one matrix's ESD (λ = σ² of the float64 matrix, ascending)."""

    shape: tuple[int, int]
    evals: np.ndarray
    power_law: esd.PowerLawFit
    norms: esd.LogNorms
    marchenko_pastur: MarchenkoPasturFit
    rand_distance: float | None
    seed: int
    bootstrap: esd.BootstrapInterval | None = None

    @property
    def notes(self) -> list[str]:
        """What a reader should know beside the numbers."""
        fit = self.power_law
        if fit.variant != "small-n":
            return []
        return [f"small-n fit (WeightWatcher's variant for fewer than {esd.SMALL_N} "
                f"eigenvalues above {fit.threshold:g}): tails of at least "
                f"{esd.SMALL_N_MIN_TAIL}, alpha = 1 + (n-1)/S"]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready document (None for undefined values, with the reasons)."""
        fit = self.power_law
        power_law = asdict(fit)
        power_law["interval"] = None if fit.interval is None else {
            "low": fit.interval[0], "high": fit.interval[1], "level": fit.level,
            "method": esd.INTERVAL_METHOD}
        return {
            "matrix_shape": list(self.shape), "n_eigenvalues": int(self.evals.size),
            "eigenvalues": "lambda = sigma^2 of the float64 matrix (not normalized)",
            "power_law": power_law,
            "bootstrap": None if self.bootstrap is None else asdict(self.bootstrap),
            "norms": asdict(self.norms),
            "marchenko_pastur": asdict(self.marchenko_pastur),
            "rand_distance": {"value": self.rand_distance, "seed": self.seed},
            "notes": self.notes,
        }


def analyze_esd(a: np.ndarray, singular_values: np.ndarray, *, seed: int = 0,
                n_boot: int = 0, level: float = esd.DEFAULT_LEVEL) -> ESDAnalysis:
    """Every fit of the ESD of the float64 matrix ``a`` from its singular values (all
    min(m, n) of them); ``n_boot`` > 0 adds the bootstrap interval of α (``n_boot``
    fits), ``seed`` seeds the bootstrap and the permutation of ``rand_distance``."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"a: expected a matrix, got shape {a.shape}")
    lam = esd.eigenvalues(singular_values)
    if lam.size != min(a.shape):
        raise ValueError(f"singular_values: expected {min(a.shape)}, got {lam.size}")
    fit = esd.fit_power_law(lam, level=level)
    boot = esd.bootstrap_alpha(lam, n_boot, seed=seed, level=level) if n_boot else None
    return ESDAnalysis(shape=(int(a.shape[0]), int(a.shape[1])), evals=lam, power_law=fit,
                       norms=esd.log_norms(lam, fit.alpha),
                       marchenko_pastur=fit_marchenko_pastur(lam, a.shape),
                       rand_distance=rand_distance(a, seed, lam), seed=seed,
                       bootstrap=boot)
