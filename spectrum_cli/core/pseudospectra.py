"""Pseudospectral radius ρ_ε(A) = max{|z| : σ_min(zI - A) <= ε}.

``criss_cross`` (dense, exact to ~1e-10 relative): Mengi & Overton, "Algorithms for the
computation of the pseudospectral radius and the numerical radius of a matrix", IMA J.
Numer. Anal. 25 (2005). Alternate

- a *circular search*: on the circle |z| = r, ε is a singular value of r e^{iθ}I - A
  exactly when λ = e^{iθ} is a unit-modulus eigenvalue of the 2n x 2n pencil
  ``[[A, εI], [0, rI]] - λ [[rI, 0], [εI, Aᴴ]]`` (from (rλI - A)v = εu and
  (rλI - A)ᴴu = εv); those angles cut the circle into arcs inside and outside the
  ε-pseudospectrum;
- a *radial search*: along each inside arc's mid-angle ψ, the crossing of the boundary
  outward from the circle, by safeguarded Newton on σ_min(ρe^{iψ}I - A) = ε with
  dσ/dρ = Re(e^{iψ} uᴴv) (a few SVDs of A's size instead of Mengi-Overton's 2n x 2n
  eigenproblem; a crossing that is not the outermost only costs one more circular
  search, which sees every arc at the new radius);

until the radius stops growing (the iteration converges quadratically). A final polish
takes one parabolic step in angle on the boundary radius.

``rank_one_iteration`` (large or matrix-free A, a lower bound): Guglielmi & Overton,
"Fast algorithms for the approximation of the pseudospectral abscissa and pseudospectral
radius of a matrix", SIMAX 32(4) (2011): λ_{k+1} = the eigenvalue of largest modulus of
A + ε (λ_k/|λ_k|) y_k x_kᴴ, with unit right/left eigenvectors x_k, y_k (y_kᴴx_k > 0). Every
λ_k lies in the ε-pseudospectrum, so |λ_k| <= ρ_ε: the result is a lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from spectrum_cli.core.eigen import complex_schur
from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.lapack import flapack
from spectrum_cli.core.scaling import ldexp, scale_exponent

EPS = float(np.finfo(np.float64).eps)
#: Largest n for the dense criss-cross (its eigenproblems are 2n x 2n).
CRISS_CROSS_MAX_N = 2000


@dataclass(frozen=True)
class PseudospectralRadius:
    eps: float
    value: float
    kind: str  # "exact" or "lower_bound"
    method: str
    iterations: int
    argmax: complex


def sigma_min(z: complex, a: np.ndarray) -> float:
    """σ_min(zI - A) by a dense SVD."""
    m = -a.astype(np.complex128)
    m[np.diag_indices_from(m)] += z
    return float(np.linalg.svd(m, compute_uv=False)[-1])


def _sigma_min_vectors(z: complex, a: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    m = -a.astype(np.complex128)
    m[np.diag_indices_from(m)] += z
    u, s, vh = np.linalg.svd(m)
    return float(s[-1]), u[:, -1], vh[-1].conj()


def _circle_angles(a: np.ndarray, eps: float, r: float) -> np.ndarray:
    """Angles θ in [0, 2π) where ε is a singular value of r e^{iθ}I - A (real QZ for a
    real A: 3-4x faster than complex)."""
    import scipy.linalg as sla

    n = a.shape[0]
    eye = np.eye(n)
    zero = np.zeros((n, n))
    m = np.block([[a, eps * eye], [zero, r * eye]])
    nn = np.block([[r * eye, zero], [eps * eye, a.conj().T]])
    lam = sla.eigvals(m, nn, check_finite=False)
    lam = lam[np.isfinite(lam)]
    on = np.abs(np.abs(lam) - 1.0) <= 1e-6
    return np.sort(np.mod(np.angle(lam[on]), 2 * np.pi))


def _outer_crossing(a: np.ndarray, eps: float, psi: float, r_in: float,
                    r_max: float) -> float:
    """The first ρ > r_in with σ_min(ρe^{iψ}I - A) = ε, given σ_min < ε at r_in:
    safeguarded Newton (dσ/dρ = Re(e^{iψ} uᴴv)) inside the bracket [r_in, r_max], where
    r_max = ‖A‖₂ + ε is outside the pseudospectrum (σ_min(zI - A) >= |z| - ‖A‖₂).
    A crossing found this way may not be the outermost on the ray; the next circular
    search then finds the remaining arcs, so the criss-cross stays globally correct."""
    e = np.exp(1j * psi)
    lo, hi = r_in, r_max
    rho = r_in
    for _ in range(100):
        s, u, v = _sigma_min_vectors(rho * e, a)
        if s < eps:
            lo = rho
        else:
            hi = rho
        if abs(s - eps) <= 4 * EPS * max(1.0, rho) or hi - lo <= 4 * EPS * max(1.0, hi):
            return rho
        d = float(np.real(np.vdot(u, e * v)))
        step = rho - (s - eps) / d if d > 0 else math.nan
        rho = step if lo < step < hi else (lo + hi) / 2
    return rho


def criss_cross(a: np.ndarray, eps: float, tol: float = 1e-12,
                max_iter: int = 50, *, eigenvalues: np.ndarray | None = None
                ) -> PseudospectralRadius:
    """ρ_ε(A) for a dense square A by the Mengi-Overton criss-cross algorithm.

    Entries near the float64 limits: ρ_ε(A) = 2^e·ρ_{ε/2^e}(2^-e·A), with the exact
    scaling of :mod:`spectrum_cli.core.scaling`. An ε beyond ‖A‖_F/eps₆₄ gives ρ_ε = ε to
    working precision (ε <= ρ + ε <= ρ_ε <= ‖A‖₂ + ε); an ε that the scaling turns into
    zero is below A's resolution: ρ(A) is returned as a lower bound. ``eigenvalues`` (of
    A, when the caller has them) spare the start its eigenvalue computation. A matrix
    with NaN or infinite entries has no defined ρ_ε: a :class:`UsageError` (a
    ValueError) says so."""
    a = np.asarray(a)
    if eps <= 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    _require_finite(a)
    e = scale_exponent(a)
    b, eps_b = ldexp(a, -e), ldexp(float(eps), -e)
    fro = float(np.linalg.norm(b))
    if eps_b * EPS > fro:
        return PseudospectralRadius(eps, float(eps), "exact", "ε dwarfs ‖A‖: ρ_ε = ε to "
                                    "working precision", 0, complex(eps))
    if eps_b < np.finfo(np.float64).tiny:
        lam = ldexp(np.linalg.eigvals(b), e)
        top = complex(lam[np.argmax(np.abs(lam))])
        return PseudospectralRadius(eps, abs(top), "lower_bound", "ε below the float64 "
                                    "resolution of A: ρ(A) < ρ_ε(A)", 0, top)
    lam_b = None if eigenvalues is None else ldexp(np.asarray(eigenvalues), -e)
    out = _criss_cross(b, eps_b, tol, max_iter, lam_b)
    if e == 0:
        return out
    return PseudospectralRadius(eps, ldexp(out.value, e), out.kind, out.method,
                                out.iterations, complex(ldexp(np.array([out.argmax]), e)[0]))


def _criss_cross(a: np.ndarray, eps: float, tol: float, max_iter: int,
                 lam: np.ndarray | None = None) -> PseudospectralRadius:
    if lam is None:
        lam = np.linalg.eigvals(a)
    best = lam[np.argmax(np.abs(lam))]
    psi = float(np.angle(best)) if abs(best) > 0 else 0.0
    r_max = float(np.linalg.norm(a, 2)) + eps
    r = _outer_crossing(a, eps, psi, float(abs(best)), r_max)
    it = 0
    for it in range(1, max_iter + 1):
        angles = _circle_angles(a, eps, r * (1 + 1e-13))
        if angles.size == 0:
            break
        # Inside arcs: consecutive crossing angles whose mid-point lies inside.
        ext = np.r_[angles, angles[0] + 2 * np.pi]
        mids = [(ext[i] + ext[i + 1]) / 2 for i in range(angles.size)
                if ext[i + 1] - ext[i] > 1e-14]
        inside = [m for m in mids if sigma_min(r * np.exp(1j * m), a) < eps]
        if not inside:
            break
        r_new, psi_new = max((_outer_crossing(a, eps, m, r, r_max), m) for m in inside)
        if r_new <= r * (1 + tol):
            if r_new > r:
                r, psi = r_new, psi_new
            break
        r, psi = r_new, psi_new
    value, psi = _polish(a, eps, psi, r, r_max)
    return PseudospectralRadius(eps, value, "exact", "criss-cross (Mengi-Overton 2005)", it,
                                complex(value * np.exp(1j * psi)))


def _polish(a: np.ndarray, eps: float, psi: float, r: float,
            r_max: float) -> tuple[float, float]:
    """One parabolic step on the boundary radius R(ψ) around the final angle. R is flat
    at the maximum, so after the criss-cross has converged (the circle at r(1 + 1e-13)
    enters no arc) this moves the radius by rounding only; it matters when the loop
    stopped at max_iter."""
    def radius(angle: float) -> float:
        start = r * (1 - 1e-6)
        if sigma_min(start * np.exp(1j * angle), a) >= eps:
            return -math.inf
        return _outer_crossing(a, eps, angle, start, r_max)

    best = radius(psi)
    h = 1e-5
    left, right = radius(psi - h), radius(psi + h)
    denom = left - 2 * best + right
    if math.isfinite(left) and math.isfinite(right) and denom < 0:
        cand = psi + max(-h, min(h, 0.5 * h * (left - right) / denom))
        val = radius(cand)
        if val > best:
            psi, best = cand, val
    for angle, val in ((psi - h, left), (psi + h, right)):
        if val > best:
            psi, best = angle, val
    return max(best, r), psi


def rank_one_iteration(op: Any, eps: float, tol: float = 1e-10,
                       max_iter: int = 200) -> PseudospectralRadius:
    """Guglielmi-Overton lower bound of ρ_ε for a large or matrix-free operator."""
    import scipy.sparse.linalg as spla

    n = op.shape[0]
    a_op = spla.aslinearoperator(op) if not hasattr(op, "matvec") else op
    dense = op if isinstance(op, np.ndarray) and n <= CRISS_CROSS_MAX_N else None

    def top_pair(u: np.ndarray | None, v: np.ndarray | None, c: complex):
        """Largest-modulus eigenvalue of A + c·u vᴴ with unit right/left vectors."""
        if dense is not None:
            import scipy.linalg as sla

            b = dense.astype(np.complex128)
            if u is not None:
                b = b + c * np.outer(u, v.conj())
            w, vl, vr = sla.eig(b, left=True, right=True)
            i = int(np.argmax(np.abs(w)))
            return w[i], vr[:, i], vl[:, i]

        def mv(x):
            y = a_op.matvec(x).astype(np.complex128)
            return y if u is None else y + c * u * np.vdot(v, x)

        def rmv(x):
            y = a_op.rmatvec(x).astype(np.complex128)
            return y if u is None else y + np.conj(c) * v * np.vdot(u, x)

        b = spla.LinearOperator((n, n), matvec=mv, dtype=np.complex128)
        bh = spla.LinearOperator((n, n), matvec=rmv, dtype=np.complex128)
        w, x = spla.eigs(b, k=1, which="LM")
        wl, y = spla.eigs(bh, k=1, which="LM")
        return w[0], x[:, 0], y[:, 0]

    lam, x, y = top_pair(None, None, 0)
    it = 0
    for it in range(1, max_iter + 1):
        x = x / np.linalg.norm(x)
        y = y / np.linalg.norm(y)
        phase = np.vdot(y, x)
        y = y * (phase / abs(phase)) if abs(phase) > 0 else y  # y^H x > 0
        direction = lam / abs(lam) if abs(lam) > 0 else 1.0
        new, x, y = top_pair(y, x, eps * direction)
        if abs(abs(new) - abs(lam)) <= tol * max(abs(new), 1e-300):
            lam = new
            break
        lam = new
    return PseudospectralRadius(eps, float(abs(lam)), "lower_bound",
                                "rank-one iteration (Guglielmi-Overton 2011)", it, complex(lam))


def pseudospectral_radius(a: Any, eps: float, *,
                          eigenvalues: np.ndarray | None = None) -> PseudospectralRadius:
    """Exact (criss-cross) for dense n <= CRISS_CROSS_MAX_N, else a lower bound. A dense
    matrix with NaN or infinite entries: :class:`UsageError` (ρ_ε is undefined)."""
    if isinstance(a, np.ndarray):
        _require_finite(a)
        if a.shape[0] <= CRISS_CROSS_MAX_N:
            return criss_cross(a, eps, eigenvalues=eigenvalues)
    return rank_one_iteration(a, eps)


def _require_finite(a: np.ndarray) -> None:
    """NaN or ±inf entries leave σ_min(zI - A), hence ρ_ε, undefined (LAPACK would fail
    with 'did not converge' deep inside): said at the edge instead."""
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise UsageError(f"a: {bad} non-finite entr{'y' if bad == 1 else 'ies'} (NaN or "
                         "inf): the pseudospectral radius is undefined")


def sigma_min_grid(a: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                   chunk: int = 256) -> np.ndarray:
    """σ_min(zI - A) on the grid z = x + iy (rows: ys, columns: xs), by batched SVDs of
    the triangular Schur factor (unitarily invariant, so equal to those of A)."""

    t = complex_schur(a)
    zs = (xs[None, :] + 1j * ys[:, None]).ravel()
    out = np.empty(zs.size)
    n = t.shape[0]
    idx = np.arange(n)
    for start in range(0, zs.size, chunk):
        z = zs[start:start + chunk]
        m = np.broadcast_to(-t, (z.size, n, n)).copy()
        m[:, idx, idx] += z[:, None]
        out[start:start + chunk] = np.linalg.svd(m, compute_uv=False)[:, -1]
    return out.reshape(ys.size, xs.size)


def smin_triangular(t: np.ndarray, z: complex, iters: int = 60, rtol: float = 1e-8) -> float:
    """An upper estimate of σ_min(zI - T) for upper-triangular T (its Schur factor), by
    inverse iteration on (zI - T)ᴴ(zI - T) with two triangular solves per step (the
    method EigTool uses; Trefethen & Embree §39). The estimate 1/sqrt(Rayleigh quotient)
    never falls below the true σ_min, so ratios built on it stay lower bounds."""
    ztrtrs = flapack().ztrtrs
    m = np.array(-t, dtype=np.complex128, order="F")  # LAPACK wants Fortran order
    m[np.diag_indices_from(m)] += z
    if np.any(np.diag(m) == 0):
        return 0.0
    x = np.ones(t.shape[0], dtype=np.complex128) / math.sqrt(t.shape[0])
    est = math.inf
    for _ in range(iters):
        y, info = ztrtrs(m, x, trans=2)  # Mᴴ y = x
        w, info2 = ztrtrs(m, y)          # M w = y
        nrm = float(np.linalg.norm(w))
        if info or info2 or not math.isfinite(nrm) or nrm == 0.0:
            return 0.0
        new = 1.0 / math.sqrt(nrm)  # ‖(MᴴM)⁻¹x‖ for unit x -> λ_max((MᴴM)⁻¹) from below
        x = w / nrm
        if abs(new - est) <= rtol * new:
            return new
        est = new
    return est
