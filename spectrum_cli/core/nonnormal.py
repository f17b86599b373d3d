"""The non-normal analysis of one square matrix: eigen-structure, pseudospectral radii,
Kreiss bound and transient growth, as one typed result (see eigen.py, pseudospectra.py
and transient.py for the formulas and their sources)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from spectrum_cli.core.eigen import EigenStructure, eigenstructure, spectral_radius_lower
from spectrum_cli.core.pseudospectra import PseudospectralRadius, pseudospectral_radius
from spectrum_cli.core.transient import (
    KreissBound, PowerNorms, kreiss_lower_bound, power_norms, transient_window,
)


@dataclass(frozen=True)
class NonNormal:
    eigen: EigenStructure
    powers: PowerNorms
    kreiss: KreissBound
    pseudospectral: list[PseudospectralRadius] = field(default_factory=list)
    transient_window: float | None = None
    eps_relative: bool = False
    eps_given: tuple[float, ...] = ()

    def metrics(self) -> dict[str, Any]:
        e = self.eigen
        return {
            "spectral_radius": e.spectral_radius,
            "kappa_V": e.kappa_V,
            "kappa_V_well_defined": e.kappa_V_well_defined,
            "kappa_V_cluster_orthonormal": e.kappa_V_cluster_orthonormal,
            "max_eig_condition": e.max_eig_condition,
            "henrici": e.henrici,
            "henrici_relative": e.henrici_relative,
            "kreiss_lower_bound": self.kreiss.value,
            "max_power_norm": self.powers.max_power_norm,
            "argmax_power": self.powers.argmax_power,
            "power_above_one_until": self.powers.last_above_one,
            "transient_window": self.transient_window,
        }

    @property
    def notes(self) -> tuple[str, ...]:
        """What a reader must know: values past the float64 range reported as inf."""
        return self.powers.notes + tuple(n for n in self.kreiss.notes if "float64" in n)

    def details(self) -> dict[str, Any]:
        """The structured part of the result (lists, flags, provenance)."""
        return {
            "pseudospectral_radius": [
                {"eps": given, "eps_absolute": p.eps, "value": p.value, "kind": p.kind,
                 "method": p.method, "iterations": p.iterations}
                for given, p in zip(self.eps_given, self.pseudospectral)],
            "eps_relative": self.eps_relative,
            "eigenvalue_clusters": list(self.eigen.clusters),
            "defective": self.eigen.defective,
            "max_power_norm_exact": self.powers.exact,
            "power_max": int(self.powers.norms.size),
            "power_norms": self.powers.details(),
            "kreiss": {"value": self.kreiss.value, "kind": "lower_bound",
                       "argmax": None if self.kreiss.argmax is None else
                       [self.kreiss.argmax.real, self.kreiss.argmax.imag],
                       "evaluations": self.kreiss.evaluations,
                       "notes": list(self.kreiss.notes),
                       "relation": "K <= sup_{k>=0} ||A^k|| <= e*n*K (Kreiss matrix theorem)"},
        }


def analyze_square(a: np.ndarray, eps: Sequence[float] = (), eps_relative: bool = False,
                   power_max: int = 200, sigma_max: float | None = None) -> NonNormal:
    """Everything non-normal about the square matrix ``a``: one complex Schur
    factorization (of 2^-e·A, the exact scaling of :mod:`spectrum_cli.core.scaling`)
    gives the eigenvalues, ρ (which decides K = inf before any search), κ(V) and the
    condition numbers (from T's eigenvectors), Henrici's departure and the Kreiss
    search's triangular factor; a certified ρ(A) > 1 spares the power curve its walk;
    the certified power curve's ‖A‖₂ bound and Neumann bound spare the Kreiss search an
    SVD and prune its grid."""
    eig = eigenstructure(a)
    scale = (sigma_max if sigma_max is not None else float(np.linalg.norm(a, 2))) \
        if eps_relative else 1.0
    ps = [pseudospectral_radius(a, e * scale, eigenvalues=eig.eigenvalues)
          for e in eps] if scale > 0 else []
    rho_lower = spectral_radius_lower(eig, a)
    powers = power_norms(a, power_max, rho_lower=rho_lower)
    norm_upper = None
    if powers.upper is not None and powers.upper.size:
        norm_upper = float(powers.upper[0])
    kreiss = kreiss_lower_bound(a, schur=eig.schur, norm_upper=norm_upper, powers=powers,
                                spectral_radius=eig.spectral_radius)
    window = transient_window(eig.kappa_V, eig.spectral_radius)
    return NonNormal(eig, powers, kreiss, ps, window, eps_relative, tuple(eps))
