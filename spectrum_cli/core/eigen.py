"""Eigen-structure of a square matrix and how far it is from normal.

- ``kappa_V`` = ‖V‖₂‖V⁻¹‖₂ with unit 2-norm eigenvector columns (EigTool / MATLAB
  ``cond(V)``; Trefethen & Embree, *Spectra and Pseudospectra*, 2005, §2 and §52).
- ``max_eig_condition`` = max_i 1/|y_iᴴx_i| with unit left and right eigenvectors
  (Wilkinson's eigenvalue condition numbers; Golub & Van Loan, *Matrix Computations*,
  4th ed., §7.2.2).
- ``henrici`` = ‖N‖_F for the complex Schur form A = Q(D + N)Qᴴ, N strictly upper
  triangular (Henrici's departure from normality, 1962): ``sqrt(‖A‖_F² - Σ|λ_i|²)``
  where that difference is at least 1% of ‖A‖_F² (then exact to n·eps/0.01 relative,
  below 1e-11 for n <= 450), read off the Schur factor where it would cancel digits
  (nearly normal matrices).

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

from spectrum_cli.core.lapack import flapack
from spectrum_cli.core.scaling import ldexp, scale_exponent

EPS = float(np.finfo(np.float64).eps)
CLUSTER_SAFETY = 100.0
DEFECTIVE_TOL = math.sqrt(EPS)
#: Henrici's departure from ‖A‖_F² - Σ|λ|² when it is at least this fraction of ‖A‖_F²
#: (and n·eps/fraction <= 1e-11); else from the Schur factor.
HENRICI_DIFFERENCE_MIN = 0.01


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
    #: The complex Schur factor T of 2^-scale·A, from which the eigenvalues and vectors
    #: came (None where they came from geev): shared with Henrici's departure and the
    #: Kreiss search. Not part of any report.
    schur: np.ndarray | None = field(default=None, repr=False, compare=False)
    scale: int = 0


def _linked_groups(lam: np.ndarray, radius: np.ndarray) -> list[list[int]]:
    """The connected groups of the discs |z - λ_i| <= radius_i (single linkage: two discs
    that touch are in one group); every index in exactly one group."""
    n = lam.size
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dist = np.abs(lam[:, None] - lam[None, :])
    for i, j in zip(*np.nonzero(np.triu(dist <= radius[:, None] + radius[None, :], 1))):
        parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _clusters(lam: np.ndarray, cond: np.ndarray, scale: float) -> list[list[int]]:
    """Groups of indices whose eigenvalues are indistinguishable: discs of radius
    CLUSTER_SAFETY·eps·scale·c_i that touch (c_i the condition number, 1/eps if none)."""
    c = np.where(np.isfinite(cond), cond, 1.0 / EPS)
    return [g for g in _linked_groups(lam, CLUSTER_SAFETY * EPS * scale * c) if len(g) > 1]


def _cond2_eigenvectors(v: np.ndarray, lam: np.ndarray) -> float:
    """cond₂(V) for the unit eigenvector columns of a real matrix by a real SVD: a
    conjugate pair v, v̄ = x ± iy spans [v v̄] = [x y]·[[1, 1], [i, -i]] and that 2x2
    factor is √2 times a unitary one, so V = W·D·U with W real (x, y in place of the
    pair), D = √2 on the pair's columns, U unitary: σ(V) = σ(W·D). Falls back to the
    complex SVD when the columns are not in exact conjugate pairs (a complex matrix)."""
    if not np.iscomplexobj(v):
        return _cond2(v)
    w = np.empty(v.shape, dtype=np.float64)
    j, n = 0, v.shape[1]
    while j < n:
        if lam[j].imag == 0.0 and not np.any(v[:, j].imag):
            w[:, j] = v[:, j].real
            j += 1
        elif (j + 1 < n and lam[j + 1] == lam[j].conjugate()
              and np.array_equal(v[:, j + 1], v[:, j].conj())):
            w[:, j] = math.sqrt(2) * v[:, j].real
            w[:, j + 1] = math.sqrt(2) * v[:, j].imag
            j += 2
        else:
            return _cond2(v)
    return _cond2(w)


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
                   henrici=ldexp(out.henrici, e), scale=e)


def complex_schur(a: np.ndarray) -> np.ndarray:
    """The complex Schur form T of ``a``: for a real matrix, LAPACK dgees without Schur
    vectors (real arithmetic, about 3x faster than zgees on the complex copy) and each
    standardized 2x2 block of the quasi-triangular form rotated to triangular by one
    complex Givens rotation (what ``scipy.linalg.rsf2csf`` does, without the vectors),
    so T is unitarily similar to ``a`` with the same backward error; for a complex
    matrix (or if dgees fails) zgees.

    zgees can fail to converge when entries many orders of magnitude below the others
    sit next to them (subnormal arithmetic in the QR sweeps); then entries below
    eps²·max|a_ij| are set to zero and it is tried again: a perturbation of norm
    <= n·eps²·max|a_ij|, far below the decomposition's own backward error O(n·eps·‖A‖)
    (Golub & Van Loan, *Matrix Computations*, 4th ed., §7.5.6), so T is as exact as it
    would have been."""
    a = np.asarray(a)
    if not np.iscomplexobj(a) and a.shape[0] > 0:
        real = _real_schur_complex(np.asarray(a, dtype=np.float64))
        if real is not None:
            return real[0]
    return _zgees(a)


def _zgees(a: np.ndarray) -> np.ndarray:
    """zgees on the complex copy, retried without the entries below eps²·max|a_ij| if it
    does not converge (see :func:`complex_schur`)."""
    import scipy.linalg as sla

    z = np.asarray(a).astype(np.complex128)
    try:
        return sla.schur(z, output="complex", check_finite=False)[0]
    except np.linalg.LinAlgError:
        eps = np.finfo(np.float64).eps
        cleaned = np.where(np.abs(z) < eps * eps * np.max(np.abs(z)), 0.0, z)
        return sla.schur(cleaned.astype(np.complex128), output="complex",
                         check_finite=False)[0]


#: The rotations of :func:`_real_schur_complex`: (k, cs, sn), one per 2x2 block (k, k+1),
#: G_k = [[conj(cs), sn], [-sn, cs]] (sn real); T = R·T_real·Rᴴ, R the product of the G_k.
Rotations = tuple[np.ndarray, np.ndarray, np.ndarray]


def _real_schur_complex(a: np.ndarray) -> tuple[np.ndarray, Rotations] | None:
    """dgees (no vectors) and the 2x2 blocks rotated to triangular: (T, the rotations);
    None if dgees fails."""
    dgees = flapack().dgees
    n = a.shape[0]
    if not np.all(np.isfinite(a)):
        return None

    def select(x, y):  # no sorting
        return 0

    work = dgees(select, a, compute_v=0, lwork=-1)[-2]
    lwork = max(int(work[0].real), 3 * n, 1)
    t, _, wr, wi, _, _, info = dgees(select, a, compute_v=0, lwork=lwork)
    if info != 0:
        return None
    tc = np.triu(t, -1).astype(np.complex128)
    k = np.nonzero(np.diag(t, -1))[0]  # the 2x2 blocks: disjoint pairs (k, k+1)
    lam = wr[k] + 1j * wi[k]
    mu = lam - t[k + 1, k + 1]
    c = t[k + 1, k]
    r = np.hypot(np.abs(mu), np.abs(c))
    cs, sn = mu / r, c / r
    # G = [[conj(cs), sn], [-sn, cs]] on rows k, k+1, then Gᴴ on columns k, k+1; the
    # pairs are disjoint, so all rotations apply at once.
    top, bottom = tc[k].copy(), tc[k + 1].copy()
    tc[k] = cs.conj()[:, None] * top + sn[:, None] * bottom
    tc[k + 1] = -sn[:, None] * top + cs[:, None] * bottom
    left, right = tc[:, k].copy(), tc[:, k + 1].copy()
    tc[:, k] = left * cs[None, :] + right * sn[None, :]
    tc[:, k + 1] = -left * sn[None, :] + right * cs.conj()[None, :]
    tc[k + 1, k] = 0.0
    tc[k, k], tc[k + 1, k + 1] = lam, lam.conj()  # dgees's pairs, exactly
    return np.triu(tc), (k, cs, sn)


def _real_schur_vectors(x: np.ndarray, lam: np.ndarray, rotations: Rotations
                        ) -> tuple[np.ndarray, np.ndarray]:
    """T's unit eigenvectors ``x`` taken to the real quasi-triangular form (Rᴴx, see
    :func:`_real_schur_complex`), where a real matrix's eigenvectors are real for a
    real eigenvalue and conjugate for a conjugate pair: the imaginary rounding of the
    first is dropped and the second of each pair set to the conjugate of the first
    (what dgeev returns); and the real W with σ(V) = σ(W) of
    :func:`_cond2_eigenvectors` (a pair's columns √2·Re v, √2·Im v)."""
    k, cs, sn = rotations
    v = x.copy()
    top, bottom = v[k].copy(), v[k + 1].copy()  # Gᴴ = [[cs, -sn], [sn, conj(cs)]]
    v[k] = cs[:, None] * top - sn[:, None] * bottom
    v[k + 1] = sn[:, None] * top + cs.conj()[:, None] * bottom
    v[:, k + 1] = v[:, k].conj()
    real = lam.imag == 0.0
    v[:, real] = v[:, real].real
    w = v.real.copy()  # V = W·D·U (see _cond2_eigenvectors)
    w[:, k] *= math.sqrt(2)
    w[:, k + 1] = math.sqrt(2) * v[:, k].imag
    return v, w


def schur_eigenvectors(t: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Unit right eigenvectors and eigenvalue condition numbers of the upper triangular
    ``t``, or None where they overflow.

    X (upper triangular, unit diagonal) holds the eigenvectors: column j solves
    (T - λ_j I)x = 0 with x_j = 1, by back substitution, here one row of X at a time
    for every column at once: x_ij = Σ_{i<k<=j} t_ik x_kj / (λ_j - t_ii). A difference
    λ_j - t_ii smaller than max(eps·|λ_j|₁, tiny) is replaced by that (LAPACK ztrevc's
    perturbation of a repeated eigenvalue; |z|₁ = |Re z| + |Im z|). The left eigenvectors
    are the rows of X⁻¹ (X⁻¹T = ΛX⁻¹) and row j of X⁻¹ times x_j is 1, so the condition
    number of λ_j is ‖x_j‖·‖(X⁻¹)_j‖ (Golub & Van Loan, *Matrix Computations*, 4th ed.,
    §7.2.2 and §7.6.4)."""
    ztrtri = flapack().ztrtri
    n = t.shape[0]
    lam = np.diag(t)
    small = np.maximum(EPS * (np.abs(lam.real) + np.abs(lam.imag)), np.finfo(float).tiny)
    den = lam[None, :] - lam[:, None]  # den[i, j] = λ_j - t_ii
    den = np.where(np.abs(den.real) + np.abs(den.imag) < small[None, :], small[None, :],
                   den)
    x = np.zeros((n, n), dtype=np.complex128)
    x[np.diag_indices(n)] = 1.0
    with np.errstate(all="ignore"):
        for i in range(n - 2, -1, -1):
            x[i, i + 1:] = (t[i, i + 1:] @ x[i + 1:, i + 1:]) / den[i, i + 1:]
        if not np.all(np.isfinite(x)):
            return None
        xinv, info = ztrtri(x, lower=0, unitdiag=1)
        if info != 0 or not np.all(np.isfinite(xinv)):
            return None
        norms = np.linalg.norm(x, axis=0)
        cond = norms * np.linalg.norm(xinv, axis=1)
        if not np.all(np.isfinite(cond)):
            return None
    return x / norms, cond


def _eigenstructure(a: np.ndarray) -> EigenStructure:
    # One complex Schur form T = QᴴAQ serves everything: the eigenvalues, the eigenvectors
    # (those of T: κ(V) and the condition numbers are unitarily invariant, so Q is never
    # formed), Henrici's departure and, through ``schur``, the Kreiss search. Where T's
    # eigenvectors overflow (a Jordan-like T), LAPACK geev's scaled ones are used instead.
    real = _real_schur_complex(a) if a.shape[0] else None
    # zgees where dgees failed: its T is not R·T_real·Rᴴ, so no rotations
    t, rotations = real if real is not None else (_zgees(a), None)
    real_w = None
    found = schur_eigenvectors(t) if np.all(np.isfinite(t)) else None
    if found is not None:
        lam = np.diag(t).copy()
        vr, cond = found
        if rotations is not None:
            vr, real_w = _real_schur_vectors(vr, lam, rotations)
    else:
        t = None
        lam, vr, cond = _geev(a)
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
    elif groups:
        kappa_o, kappa = _cond2(vo), None
    elif real_w is not None:  # no cluster, the Schur route of a real matrix
        kappa = kappa_o = _cond2(real_w)
    else:  # no cluster: vo is vr
        kappa = kappa_o = _cond2_eigenvectors(vr, lam)
    # Henrici: ‖N‖_F² = ‖A‖_F² - Σ|λ_i|² holds for the matrix A + E whose eigenvalues
    # LAPACK returns (‖E‖ ~ eps·‖A‖), so the difference carries an absolute error of
    # ~HENRICI_ROUNDING·n·eps·‖A‖_F²: relative n·eps/h² in h = ‖N‖_F/‖A‖_F. Where h² >=
    # HENRICI_DIFFERENCE_MIN that is below 1e-11 and the difference is used; a nearly
    # normal matrix (smaller h, where the difference cancels) reads it off the Schur
    # factor instead.
    lam_sq = float(np.sum(np.abs(lam) ** 2))
    diff = fro * fro - lam_sq if fro > 0 else 0.0
    if fro > 0 and diff >= HENRICI_DIFFERENCE_MIN * fro * fro and \
            math.isfinite(diff) and a.shape[0] * EPS / HENRICI_DIFFERENCE_MIN <= 1e-11:
        henrici = math.sqrt(diff)
    else:
        if t is None:
            t = complex_schur(a)
        henrici = float(np.linalg.norm(np.triu(t, 1)))
    order = np.argsort(-np.abs(lam), kind="stable")
    return EigenStructure(
        eigenvalues=lam[order], spectral_radius=float(np.max(np.abs(lam))),
        kappa_V=kappa, kappa_V_well_defined=not groups, kappa_V_cluster_orthonormal=kappa_o,
        defective=defective, clusters=sorted((len(g) for g in groups), reverse=True),
        eig_conditions=cond[order], max_eig_condition=float(np.max(cond)),
        henrici=henrici, henrici_relative=henrici / fro if fro > 0 else 0.0, schur=t)


#: The backward error of the Schur factorization, as a multiple of n·eps·‖A‖_F, that
#: :func:`spectral_radius_lower` allows for (generous: Golub & Van Loan, *Matrix
#: Computations*, 4th ed., §7.5.6, give O(n·eps·‖A‖) for the QR algorithm).
BACKWARD_ERROR_FACTOR = 64.0


def spectral_radius_lower(eig: EigenStructure, a: np.ndarray) -> float:
    """A lower bound of ρ(A) from ``eig = eigenstructure(a)`` (0: nothing certified).

    The computed Schur form T = XΛX⁻¹ (unit eigenvector columns x_i, λ̂_i = Λ_ii) is exact
    for A + E with ‖E‖₂ <= δ = BACKWARD_ERROR_FACTOR·n·eps·‖A‖_F, so A's eigenvalues are
    those of Λ - X⁻¹FX for some ‖F‖₂ <= δ. By Gershgorin's theorem each lies in a disc about
    some λ̂_i of radius r_i = Σ_j |(X⁻¹FX)_ij| <= √n·‖y_i‖·‖F‖·‖X‖₂ <= n·c_i·δ (y_i row i
    of X⁻¹, c_i = ‖y_i‖ the condition number of λ̂_i, ‖X‖₂ <= √n), and a connected group
    of m discs holds exactly m of them (Golub & Van Loan, *Matrix Computations*, 4th ed.,
    §7.2.1, Theorem 7.2.1 and the counting argument after it). Every group therefore
    gives ρ(A) >= min over its discs of |λ̂_j| - r_j, and the bound is the best group's:
    rigorous up to the rounding of the computed X and c_i (second order in eps).
    Overlapping discs (a cluster) are one group, not a failure; an eigenvalue without a
    finite condition number (defective, or overflowing eigenvectors) has an unbounded
    disc that joins every group, and then nothing is certified. Computed for 2^-e·A, the
    exact scaling the eigen-analysis used, so no norm under- or overflows."""
    lam, cond = eig.eigenvalues, eig.eig_conditions
    n = lam.size
    if cond is None or n == 0 or not np.all(np.isfinite(cond)):
        return 0.0
    b = ldexp(np.asarray(a), -eig.scale)
    fro = float(np.linalg.norm(b))
    if not math.isfinite(fro) or fro == 0.0:
        return 0.0
    lam = ldexp(lam, -eig.scale)
    r = n * cond * (BACKWARD_ERROR_FACTOR * n * EPS * fro)
    if not np.all(np.isfinite(r)):
        return 0.0
    low = np.abs(lam) - r
    best = max(float(np.min(low[g])) for g in _linked_groups(lam, r))
    return max(0.0, float(ldexp(best, eig.scale)))


def _geev(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues, unit right eigenvectors and condition numbers by LAPACK geev (left
    and right vectors, scaled against overflow by trevc)."""
    import scipy.linalg as sla

    lam, vl, vr = sla.eig(a, left=True, right=True, check_finite=False)
    vr = vr / np.linalg.norm(vr, axis=0)
    vl = vl / np.linalg.norm(vl, axis=0)
    yx = np.abs(np.einsum("ij,ij->j", vl.conj(), vr))
    with np.errstate(divide="ignore"):
        cond = np.where(yx > 0, 1.0 / yx, math.inf)
    return lam, vr, cond
