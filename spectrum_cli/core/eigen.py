"""Eigen-structure of a square matrix and how far it is from normal.

- ``kappa_V`` = ‖V‖₂‖V⁻¹‖₂ with unit 2-norm eigenvector columns (EigTool / MATLAB
  ``cond(V)``; Trefethen & Embree, *Spectra and Pseudospectra*, 2005, §2 and §52).
- ``max_eig_condition`` = max_i 1/|y_iᴴx_i| with unit left and right eigenvectors
  (Wilkinson's eigenvalue condition numbers; Golub & Van Loan, *Matrix Computations*,
  4th ed., §7.2.2).
- ``henrici`` = ‖N‖_F for the complex Schur form A = Q(D + N)Qᴴ, N strictly upper
  triangular (Henrici's departure from normality, 1962): read off the Schur factor, not
  ``sqrt(‖A‖_F² - Σ|λ_i|²)``, which cancels away half the digits.

Clusters. A backward-stable ``eig`` returns each eigenvalue with an error of about
``eps·‖A‖·c_i`` (c_i its condition number; Golub & Van Loan §7.2.2). Two computed
eigenvalues closer than ``CLUSTER_SAFETY·eps·‖A‖_F·(c_i + c_j)`` cannot be told apart
at working precision, so the eigenvector basis inside such a cluster is not determined
by the matrix: ``kappa_V`` is then reported as undefined (``kappa_V_well_defined =
False``, with the cluster sizes), never as a number. A cluster whose computed
eigenvectors are numerically dependent (σ_min of their unit-column block below
``sqrt(eps)``) is defective: ``kappa_V = inf``. For reference we also give
``kappa_V_cluster_orthonormal``: κ(V) after replacing each cluster's columns by an
orthonormal basis of their span (docs/operators.md §2), one particular choice, labelled so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from spectrum_cli.core.scaling import ldexp, scale_exponent

EPS = float(np.finfo(np.float64).eps)
CLUSTER_SAFETY = 100.0
DEFECTIVE_TOL = math.sqrt(EPS)


@dataclass(frozen=True)
class EigenStructure:
    eigenvalues: np.ndarray
    spectral_radius: float
    kappa_V: float | None
    kappa_V_well_defined: bool
    kappa_V_cluster_orthonormal: float
    defective: bool
    clusters: list[int] = field(default_factory=list)
    eig_conditions: np.ndarray | None = None
    max_eig_condition: float = math.nan
    henrici: float = math.nan
    henrici_relative: float = math.nan


def _clusters(lam: np.ndarray, cond: np.ndarray, scale: float) -> list[list[int]]:
    """Groups of indices whose eigenvalues are indistinguishable (single linkage)."""
    n = lam.size
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    c = np.where(np.isfinite(cond), cond, 1.0 / EPS)
    dist = np.abs(lam[:, None] - lam[None, :])
    tol = CLUSTER_SAFETY * EPS * scale * (c[:, None] + c[None, :])
    for i, j in zip(*np.nonzero(np.triu(dist <= tol, 1))):
        parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _cond2(v: np.ndarray) -> float:
    s = np.linalg.svd(v, compute_uv=False)
    return math.inf if s[-1] == 0 else float(s[0] / s[-1])


def eigenstructure(a: np.ndarray) -> EigenStructure:
    """Eigenvalues, κ(V), eigenvalue condition numbers and Henrici's departure.

    Entries near the float64 limits are scaled by 2^-e first (exact; see
    :mod:`spectrum_cli.core.scaling`): eigenvalues, ρ and Henrici's ‖N‖_F scale back by
    2^e, the condition numbers and relative quantities are scale-invariant."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"a: expected a square matrix, got shape {a.shape}")
    e = scale_exponent(a)
    out = _eigenstructure(ldexp(a, -e))
    if e == 0:
        return out
    return replace(out, eigenvalues=ldexp(out.eigenvalues, e),
                   spectral_radius=ldexp(out.spectral_radius, e),
                   henrici=ldexp(out.henrici, e))


def complex_schur(a: np.ndarray) -> np.ndarray:
    """The complex Schur form T of ``a`` (LAPACK zgees). zgees can fail to converge when
    entries many orders of magnitude below the others sit next to them (subnormal
    arithmetic in the QR sweeps); then entries below eps²·max|a_ij| are set to zero and
    it is tried again: a perturbation of norm <= n·eps²·max|a_ij|, far below the
    decomposition's own backward error O(n·eps·‖A‖) (Golub & Van Loan, *Matrix
    Computations*, 4th ed., §7.5.6), so T is as exact as it would have been."""
    import scipy.linalg as sla

    z = np.asarray(a).astype(np.complex128)
    try:
        return sla.schur(z, output="complex", check_finite=False)[0]
    except np.linalg.LinAlgError:
        eps = np.finfo(np.float64).eps
        cleaned = np.where(np.abs(z) < eps * eps * np.max(np.abs(z)), 0.0, z)
        return sla.schur(cleaned.astype(np.complex128), output="complex",
                         check_finite=False)[0]


def _eigenstructure(a: np.ndarray) -> EigenStructure:
    import scipy.linalg as sla

    lam, vl, vr = sla.eig(a, left=True, right=True, check_finite=False)
    vr = vr / np.linalg.norm(vr, axis=0)
    vl = vl / np.linalg.norm(vl, axis=0)
    yx = np.abs(np.einsum("ij,ij->j", vl.conj(), vr))
    with np.errstate(divide="ignore"):
        cond = np.where(yx > 0, 1.0 / yx, math.inf)
    fro = float(np.linalg.norm(a))
    groups = _clusters(lam, cond, max(fro, np.finfo(float).tiny))
    defective = False
    vo = vr.copy()
    for g in groups:
        block = vr[:, g]
        s = np.linalg.svd(block, compute_uv=False)
        if s[-1] <= DEFECTIVE_TOL * s[0]:
            defective = True
        q, _ = np.linalg.qr(block)
        vo[:, g] = q
    if defective:
        kappa, kappa_o = math.inf, math.inf
    else:
        kappa_o = _cond2(vo)
        kappa = None if groups else _cond2(vr)
    t = complex_schur(a)
    henrici = float(np.linalg.norm(np.triu(t, 1)))
    order = np.argsort(-np.abs(lam), kind="stable")
    return EigenStructure(
        eigenvalues=lam[order], spectral_radius=float(np.max(np.abs(lam))),
        kappa_V=kappa, kappa_V_well_defined=not groups, kappa_V_cluster_orthonormal=kappa_o,
        defective=defective, clusters=sorted((len(g) for g in groups), reverse=True),
        eig_conditions=cond[order], max_eig_condition=float(np.max(cond)),
        henrici=henrici, henrici_relative=henrici / fro if fro > 0 else 0.0)
