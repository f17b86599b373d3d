"""Transient growth and the Kreiss constant of a square matrix (discrete time).

- Kreiss constant K(A) = sup_{|z|>1} (|z| - 1)‖(zI - A)⁻¹‖₂ = sup_ε (ρ_ε(A) - 1)/ε, and
  the Kreiss matrix theorem K <= sup_k ‖A^k‖₂ <= e·n·K (LeVeque & Trefethen 1984,
  Spijker 1991; Trefethen & Embree, *Spectra and Pseudospectra*, §18). We evaluate
  (|z| - 1)/σ_min(zI - A) on a polar grid outside the unit disk (radii 1 + d with d
  log-spaced, the angles of the outermost eigenvalues included), then refine the best points with
  Nelder-Mead: a sup over points actually evaluated, hence a *lower bound* of K.
- Power norms ‖A^k‖₂, k = 1..k_max. If ‖A^m‖ < 1 then for k > m,
  ‖A^k‖ <= ‖A^m‖‖A^{k-m}‖ < ‖A^{k-m}‖, so sup_{k>=1} ‖A^k‖ = max_{k<=m} ‖A^k‖: the maximum
  is then exact. Otherwise (ρ >= 1, or k_max too small) it is the max over the k
  computed, a lower bound, and said so. (The norms may rise above 1 again after m; the
  curve is kept to k_max and ``last_above_one`` reports the last such k seen.)
  The Kreiss relation uses sup over k >= 0, which includes ‖A⁰‖ = 1.
- Transient window ln κ(V)/(-ln ρ) (ρ < 1): the k at which the bound κ(V)ρ^k reaches 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_POWER_MAX = 200
#: Matrices up to this size get exact (batched) SVDs in the Kreiss search.
SMALL = 32


@dataclass(frozen=True)
class PowerNorms:
    norms: np.ndarray  # norms[k-1] = ‖A^k‖₂, k = 1..k_max
    max_power_norm: float
    argmax_power: int
    exact: bool  # some ‖A^m‖ < 1 was seen: the max over k <= k_max is the sup over k >= 1
    last_above_one: int  # the largest k <= k_max with ‖A^k‖ > 1 (0 if none)


@dataclass(frozen=True)
class KreissBound:
    value: float  # a lower bound of K(A); inf when ρ(A) >= 1
    argmax: complex | None
    evaluations: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def power_norms(a: np.ndarray, k_max: int = DEFAULT_POWER_MAX) -> PowerNorms:
    """‖A^k‖₂ for k = 1..k_max (the curve), its maximum, and whether that maximum is the
    exact supremum over all k >= 1 (it is once some ‖A^m‖ < 1, see the module docstring)."""
    if k_max < 1:
        raise ValueError(f"k_max: expected >= 1, got {k_max}")
    a = np.asarray(a, dtype=np.float64)
    p = a.copy()
    log_scale = 0.0  # p holds A^k / exp(log_scale), to survive growth past 1e308
    norms = np.empty(k_max)
    for k in range(k_max):
        nrm = float(np.linalg.norm(p, 2))
        norms[k] = nrm * math.exp(log_scale) if log_scale < 700 else math.inf
        if nrm == 0.0:  # nilpotent: every later power is zero
            norms[k + 1:] = 0.0
            break
        if k + 1 < k_max:
            p = a @ p
            if nrm > 1e100:
                p /= nrm
                log_scale += math.log(nrm)
    i = int(np.argmax(norms))
    above = np.nonzero(norms > 1.0)[0]
    return PowerNorms(norms, float(norms[i]), i + 1, bool(np.any(norms < 1.0)),
                      int(above[-1]) + 1 if above.size else 0)


def transient_window(kappa_v: float | None, rho: float) -> float | None:
    """ln κ(V) / (-ln ρ) for 0 < ρ < 1 and a defined κ(V); None otherwise."""
    if kappa_v is None or not (0.0 < rho < 1.0) or not math.isfinite(kappa_v):
        return None
    return math.log(kappa_v) / -math.log(rho)


def kreiss_lower_bound(a: np.ndarray, radial: int = 16, angular: int = 64,
                       refine: int = 2) -> KreissBound:
    """A lower bound of the Kreiss constant; inf when ρ(A) >= 1.

    Grid and refinement use σ_min estimates from inverse iteration on the Schur factor
    (never below the true σ_min, so every ratio is a valid lower bound); the winning
    point is re-evaluated with an exact SVD."""
    import scipy.linalg as sla
    from scipy.optimize import minimize

    from spectrum_cli.core.pseudospectra import sigma_min, smin_triangular

    a = np.asarray(a, dtype=np.float64)
    t, _ = sla.schur(a.astype(np.complex128), output="complex")
    lam = np.diag(t)
    rho = float(np.max(np.abs(lam)))
    if rho >= 1.0:
        return KreissBound(math.inf, None, 0, ("ρ(A) >= 1: K(A) = inf",))
    norm = float(np.linalg.norm(a, 2))
    n = a.shape[0]
    evaluations = 0

    def ratio(z: complex, iters: int) -> float:
        nonlocal evaluations
        evaluations += 1
        s = sigma_min(z, a) if n <= SMALL else smin_triangular(t, z, iters=iters)
        return (abs(z) - 1) / max(s, 1e-300)

    d = np.logspace(-6, math.log10(max(norm, 1.0) + 1.0), radial)
    outer = lam[np.argsort(-np.abs(lam))[:16]]  # angles of the 16 outermost eigenvalues
    angles = np.unique(np.r_[np.linspace(0, 2 * np.pi, angular, endpoint=False),
                             np.mod(np.angle(outer), 2 * np.pi)])
    zs = ((1 + d)[:, None] * np.exp(1j * angles)[None, :]).ravel()
    if n <= SMALL:  # one batched SVD for the whole grid
        m = np.broadcast_to(-t, (zs.size, n, n)).copy()
        m[:, np.arange(n), np.arange(n)] += zs[:, None]
        vals = (np.abs(zs) - 1) / np.maximum(np.linalg.svd(m, compute_uv=False)[:, -1], 1e-300)
        evaluations += zs.size
    else:  # coarse σ_min estimates: never below the truth, so still lower bounds
        vals = np.array([ratio(z, 6) for z in zs])
    best_z, best = complex(zs[int(np.argmax(vals))]), float(np.max(vals))
    for i in np.argsort(-vals)[:refine]:
        z0 = zs[i]
        res = minimize(lambda x: -ratio((1 + math.exp(x[0])) * np.exp(1j * x[1]), 30),
                       [math.log(abs(z0) - 1), float(np.angle(z0))], method="Nelder-Mead",
                       options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 150})
        if -res.fun > best:
            best = float(-res.fun)
            best_z = complex((1 + math.exp(res.x[0])) * np.exp(1j * res.x[1]))
    exact = (abs(best_z) - 1) / max(sigma_min(best_z, a), 1e-300)
    return KreissBound(max(exact, best), best_z, evaluations + 1)
