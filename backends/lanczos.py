"""Lanczos backend: extreme singular values and eigenvalues from matrix-vector products.

Algorithms (all with full reorthogonalization, classical Gram-Schmidt applied twice, and
a fixed start vector drawn from ``numpy.random.default_rng(seed)``):

- Golub-Kahan-Lanczos bidiagonalization (Golub & Kahan 1965; Golub & Van Loan,
  *Matrix Computations*, 4th ed., §10.4) for the largest or smallest singular values.
  After j steps ``A V_j = U_j B_j`` and ``Aᵀ U_j = V_j B_jᵀ + β_{j+1} v_{j+1} e_jᵀ``; for
  a Ritz triplet (θ, P e_i, Q e_i) of the bidiagonal ``B_j`` the residual is
  ``r_i = β_{j+1} |e_jᵀ P e_i|``, and some singular value of A lies within ``r_i`` of θ
  (the Jordan-Wielandt matrix is symmetric: Parlett, *The Symmetric Eigenvalue Problem*,
  Thm 4.5.1). These ``r_i`` are the reported ``error_bounds``; convergence means
  ``r_i <= tol · θ_i`` (or r_i under the rounding floor) for every requested value. The
  matrix is oriented tall first (A or Aᵀ), so the process sees no spurious zero singular
  values. A breakdown (an invariant subspace: all-ones and other exactly low-rank
  matrices reach one after rank-many steps) is convergence, not failure: the rounding-
  level coefficient is set to 0, its size is added to the bounds, and the process
  restarts from a random vector orthogonal to the basis, which finds the remaining
  (zero or repeated) singular values.
- Symmetric Lanczos (Lanczos 1950; Golub & Van Loan §10.1) for extreme eigenvalues of a
  symmetric operator, with the bound ``|λ - θ_i| <= β_{j+1} |e_jᵀ s_i|``.
- Stochastic Lanczos quadrature (Ubaru, Chen & Saad, SIMAX 38(4), 2017; Golub & Meurant,
  *Matrices, Moments and Quadrature*, 2010) for ``spectral_entropy``: Rademacher probes
  z (Hutchinson 1990) and the Gauss quadrature ``zᵀ f(AᵀA) z ≈ n Σ_k τ_k² f(θ_k²)`` from the
  GKL bidiagonal, with ``f(λ) = λ ln λ``; the error bar is Student's t quantile (99%
  two-sided by default) times the standard error over probes plus the change of the
  estimate from half to all the steps (a quadrature-error guard). The estimate is kept
  inside [0, ln min(m, n)]; when every probe breaks down (low-rank matrices) the Gauss
  nodes are eigenvalues of AᵀA and pin H down (see ``_invariant_interval``).

Why not scipy's ``svds``/``eigsh``: ARPACK's ``svds`` works on ``AᵀA`` (squaring κ, which
ruins the smallest singular values) and neither ARPACK nor PROPACK returns per-value
residual bounds; explicit full reorthogonalization keeps the bounds rigorous and the
runs reproducible for the moderate step counts (tens to a few hundred) used here.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from spectrum_backends._common import check_options, gap_refined
from spectrum_cli.core.backend import Capabilities, check_which
from spectrum_cli.core.estimators.lanczos1950 import (
    BREAKDOWN, Krylov, breakdown_tolerance, orthogonal_random, reorthogonalize,
    tridiagonalize,
)
from spectrum_cli.core.linear_operator import as_operator
from spectrum_cli.core.results import Eigenvalues, Estimate, SingularValues
from spectrum_cli.core.scaling import ldexp, scale_exponent

EXTREMES = ("largest", "smallest")
DEFAULT_TOL = 1e-10
DEFAULT_MAX_STEPS = 600
#: Rounding floor of the bounds, in units of the largest Ritz value times sqrt(steps).
ROUNDING = 8 * float(np.finfo(np.float64).eps)


class _Transposed:
    """Aᵀ as an operator (to orient GKL on the tall side)."""

    def __init__(self, op: Any) -> None:
        self.op = op
        self.shape = (op.shape[1], op.shape[0])

    def matmat(self, x):
        return self.op.rmatmat(x)

    def rmatmat(self, y):
        return self.op.matmat(y)


def _ritz_svd(alpha: list[float], beta: list[float]) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """Singular values (descending), left and right singular vectors of the j x j
    upper bidiagonal with diagonal alpha and superdiagonal beta[1:j]."""
    j = len(alpha)
    b = np.diag(alpha)
    if j > 1:
        b += np.diag(beta[1:j], 1)
    p, theta, qt = np.linalg.svd(b)
    return theta, p, qt.T


def _bidiagonalize(tall: Any, v0: np.ndarray, max_steps: int, rng: np.random.Generator,
                   done: Any = None) -> Krylov:
    """GKL from the unit vector v0 (full reorthogonalization of both bases). ``done(alpha,
    beta, dropped)`` is asked on a geometric schedule whether to stop. Returns alpha,
    beta (beta[0] = 0, beta[j] couples step j to j+1), the number of steps taken and the
    dropped residual.

    Breakdown: a new u (or v) whose norm after CGS2 is at the rounding level of the
    products (:func:`breakdown_tolerance`) means that A V_j (or Aᵀ U_j) lies in the span
    found so far, an invariant subspace: the exact coefficient is 0 (all-ones and other
    exactly low-rank matrices reach it in two steps). Normalizing the noise would put a
    non-orthogonal vector into the basis, and the coefficients then grow without bound
    (LAPACK's "SVD did not converge" on the bidiagonal). Instead the coefficient is set
    to 0, its norm d is recorded (``A V_j = U_j B_j + E``, ``Aᵀ U_j = V_j B_jᵀ + β v eᵀ +
    F`` with ‖E‖ + ‖F‖ <= (1 + √2)·sqrt(Σ d²)), and the process continues from a random
    unit vector orthogonal to that basis: the remaining singular values (the zeros of a
    low-rank matrix, the copies of a repeated one) are found the same way."""
    m, n = tall.shape
    V = np.empty((n, max_steps + 1))
    U = np.empty((m, max_steps))
    V[:, 0] = v0
    alpha: list[float] = []
    beta: list[float] = [0.0]
    u_prev = np.zeros(m)
    dropped_sq = 0.0
    scale = 0.0  # the largest product norm so far: a lower bound on ‖A‖
    next_check = 8
    j = 0
    for j in range(1, max_steps + 1):
        av = tall.matmat(V[:, j - 1:j]).ravel()
        scale = max(scale, float(np.linalg.norm(av)))
        u = reorthogonalize(av - beta[-1] * u_prev, U[:, : j - 1])
        a = float(np.linalg.norm(u))
        if a <= breakdown_tolerance(max(m, n), scale):  # A v_j in span(U_{j-1}): α_j = 0
            dropped_sq += a * a
            a = 0.0
            u = orthogonal_random(rng, U[:, : j - 1])  # m >= n >= j: always exists
        else:
            u = u / a
        alpha.append(a)
        U[:, j - 1] = u
        atu = tall.rmatmat(u.reshape(-1, 1)).ravel()
        scale = max(scale, float(np.linalg.norm(atu)))
        w = reorthogonalize(atu - a * V[:, j - 1], V[:, :j])
        b = float(np.linalg.norm(w))
        if j == max_steps:
            beta.append(b)
            break
        if b <= breakdown_tolerance(max(m, n), scale):  # Aᵀ u_j in span(V_j): β_j = 0
            dropped_sq += b * b
            beta.append(0.0)
            v = orthogonal_random(rng, V[:, :j])
            if v is None:  # V spans the whole space: the spectrum of B_j is complete
                break
            V[:, j] = v
        else:
            beta.append(b)
            V[:, j] = w / b
        u_prev = u
        if done is not None and j >= next_check:
            if done(alpha, beta, math.sqrt(dropped_sq)):
                break
            next_check = j + max(5, j // 8)
    return Krylov(alpha, beta, j, math.sqrt(dropped_sq))


#: Breakdown perturbations enter the residual with this factor (1 + √2, rounded up).
DROPPED_FACTOR = 2.5


def _gkl_bounds(alpha: list[float], beta: list[float], dropped: float, k: int, which: str,
                tol: float):
    theta, p, _ = _ritz_svd(alpha, beta)
    floor = ROUNDING * math.sqrt(len(alpha)) * theta[0]
    # Residual bound r_i = β_{j+1}|e_jᵀ p_i|, plus what breakdowns dropped, gap-refined,
    # plus a rounding floor (the backward error of the reorthogonalized process).
    resid = beta[-1] * np.abs(p[-1, :])
    bounds = gap_refined(theta, resid + DROPPED_FACTOR * dropped) + floor
    # Convergence: the part more steps can reduce meets tol (relative) or lies under the
    # rounding floor, below which no Krylov method resolves anything (zero singular
    # values of a low-rank matrix: bound ~ eps·σ_max, exact value 0).
    reducible = gap_refined(theta, resid)
    sel = slice(0, k) if which == "largest" else slice(len(theta) - k, None)
    ok = len(theta) >= k and bool(np.all(
        reducible[sel] <= np.maximum(tol * theta[sel], floor)))
    return theta[sel], bounds[sel], ok


def gkl(op: Any, k: int, which: str, tol: float = DEFAULT_TOL, max_steps: int | None = None,
        seed: int = 0) -> dict[str, Any]:
    """Golub-Kahan-Lanczos for the k largest or smallest singular values of ``op``."""
    tall = op if op.shape[0] >= op.shape[1] else _Transposed(op)
    n = tall.shape[1]
    max_steps = min(n, max_steps or DEFAULT_MAX_STEPS)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(n)
    run = _bidiagonalize(
        tall, v0 / np.linalg.norm(v0), max_steps, rng,
        done=lambda a, b, d: len(a) >= k + 2 and _gkl_bounds(a, b, d, k, which, tol)[2])
    values, bounds, ok = _gkl_bounds(run.alpha, run.beta, run.dropped, k, which, tol)
    exhausted = len(run.alpha) == n  # V spans the space: the whole spectrum was found
    return {"values": values, "bounds": bounds, "steps": run.steps,
            "converged": ok or exhausted}


def _lanczos_bounds(alpha: list[float], beta: list[float], dropped: float, k: int,
                    which: str, tol: float):
    """Ritz values (descending), their gap-refined bounds, and whether they converged."""
    t = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    theta, s = np.linalg.eigh(t)
    scale = max(abs(theta[0]), abs(theta[-1]))
    floor = ROUNDING * math.sqrt(len(alpha)) * scale
    resid = beta[-1] * np.abs(s[-1, :])
    reducible = gap_refined(theta, resid)
    sel = slice(len(theta) - k, None) if which == "largest" else slice(0, k)
    ok = len(theta) >= k and bool(np.all(reducible[sel] <= max(tol * scale, floor)))
    # A dropped breakdown residual d perturbs AQ = QT + ... by a matrix of norm <= d.
    bounds = gap_refined(theta, resid + dropped) + floor
    order = np.argsort(-theta[sel])
    return theta[sel][order], bounds[sel][order], ok


def lanczos_symmetric(op: Any, k: int, which: str, tol: float = DEFAULT_TOL,
                      max_steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Symmetric Lanczos for the k algebraically largest or smallest eigenvalues
    (restarted orthogonally at a breakdown, so that multiplicities are found)."""
    n = op.shape[0]
    max_steps = min(n, max_steps or DEFAULT_MAX_STEPS)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    q0 = rng.standard_normal(n)
    run = tridiagonalize(
        op, q0 / np.linalg.norm(q0), max_steps, rng=rng,
        done=lambda a, b, d: len(a) >= k + 2 and _lanczos_bounds(a, b, d, k, which, tol)[2])
    values, bounds, ok = _lanczos_bounds(run.alpha, run.beta, run.dropped, k, which, tol)
    exhausted = len(run.alpha) == n
    return {"values": values, "bounds": bounds, "steps": run.steps,
            "converged": ok or exhausted}


def slq_entropy(op: Any, frobenius_sq: float, probes: int = 24, steps: int = 40,
                seed: int = 0, confidence: float = 0.99) -> dict[str, Any]:
    """Spectral entropy H = ln F - tr(f(AᵀA))/F, f(λ) = λ ln λ, F = ‖A‖_F², by SLQ.

    All probes advance together (one product with a block of ``probes`` vectors per
    half-step, each probe reorthogonalized against its own basis), so the matrix is
    streamed ``2·steps`` times instead of ``2·steps·probes``.
    """
    from scipy.stats import t as student

    tall = op if op.shape[0] >= op.shape[1] else _Transposed(op)
    m, n = tall.shape
    rng = np.random.default_rng(seed)
    steps = min(steps, n)
    z = rng.choice([-1.0, 1.0], size=(n, probes)) / math.sqrt(n)
    alpha, beta, length, broke = _block_bidiagonalize(tall, z, steps)
    rules = [_gauss_rule(alpha[:, p], beta[:, p], int(length[p])) for p in range(probes)]
    full = np.array([n * _f_quadrature(*rule) for rule in rules])
    h = steps // 2 or 1
    half = np.array([n * _f_quadrature(*_gauss_rule(alpha[:, p], beta[:, p],
                                                      min(int(length[p]), h)))
                     for p in range(probes)])
    trace = float(full.mean())
    se = float(full.std(ddof=1) / math.sqrt(probes)) if probes > 1 else math.inf
    quantile = float(student.ppf(0.5 + confidence / 2, max(probes - 1, 1)))
    bar = quantile * se + abs(trace - float(half.mean()))
    value, bar = math.log(frobenius_sq) - trace / frobenius_sq, bar / frobenius_sq
    # Rounding floor: with zero sampling spread (a diagonal AᵀA makes every Rademacher
    # probe exact and identical) the bar would otherwise be 0 while ln F - trace/F still
    # carries the rounding of the nodes (~eps·|1 + ln λ| relative, times the steps).
    bar += 1e-10 * (1.0 + abs(math.log(frobenius_sq)))
    # H lies in [0, ln min(m, n)]: projecting the estimate onto that interval only moves
    # it towards the truth, and no honest bar needs to exceed the interval's length.
    top = math.log(n)
    lo, hi = (max(value - bar, 0.0), min(value + bar, top)) if math.isfinite(value) and \
        math.isfinite(bar) else (0.0, top)
    exact = _invariant_interval([rule[0] for rule in rules], frobenius_sq) \
        if bool(np.all(broke)) else None
    if exact is not None:
        # Every probe found an invariant subspace: Hutchinson's sampling error no longer
        # matters (it is large for low-rank matrices), the eigenvalues pin H down.
        lo, hi = (max(lo, exact[0]), min(hi, exact[1])) if lo <= exact[1] and \
            exact[0] <= hi else exact
    lo, hi = max(lo, 0.0), min(hi, top)
    if lo > hi:
        lo, hi = 0.0, top
    return {"value": (lo + hi) / 2, "error_bar": (hi - lo) / 2,
            "matvecs": 2 * int(length.max()) * probes}  # the block loop's products


def _invariant_interval(nodes: list[np.ndarray], frobenius_sq: float
                        ) -> tuple[float, float] | None:
    """An interval for H when every probe's GKL process broke down (found an invariant
    subspace of AᵀA). Its Gauss nodes are then eigenvalues of AᵀA, and a probe with a
    component in every eigenspace (Rademacher probes miss one only with probability
    <= 2^-probes for most eigenvectors) shows every distinct eigenvalue λ_i. With
    multiplicities m_i >= 1 and Σ m_i λ_i = F (= ‖A‖_F²), tr f(AᵀA) = Σ m_i λ_i ln λ_i is
    extreme when the spare mass F - Σ λ_i sits on the largest or the smallest λ_i; for a
    matrix with one distinct nonzero singular value (all ones, rank one, orthogonal) or
    with distinct ones (generic low rank) the interval has zero width, up to rounding.
    None when the nodes are inconsistent with F (then sampling decides)."""
    allv = np.concatenate([np.asarray(x, dtype=np.float64) for x in nodes])
    if allv.size == 0 or not np.all(np.isfinite(allv)) or frobenius_sq <= 0:
        return None
    top = float(allv.max())
    if top <= 0:
        return None
    rel = 1e-9
    # Zero nodes: under the square of the breakdown level (a true eigenvalue that small
    # carries mass < 1e-22·F, nothing an entropy can see); the rest descending.
    vals = np.sort(allv[allv > (1e3 * BREAKDOWN) ** 2 * top])[::-1]
    distinct: list[float] = []
    for v in vals:  # cluster nodes that agree to rounding
        if not distinct or distinct[-1] - v > rel * distinct[-1]:
            distinct.append(float(v))
    lam = np.array(distinct)
    spare = frobenius_sq - float(lam.sum())
    slack = 1e-8 * frobenius_sq  # rounding of the nodes and of F
    if spare < -slack:
        return None
    spare = max(spare, 0.0)
    base = float(np.sum(lam * np.log(lam)))
    t_hi = base + spare * math.log(float(lam.max()))
    t_lo = base + spare * math.log(float(lam.min()))
    log_f = math.log(frobenius_sq)
    # Allowance: node clustering (rel), slack on the spare mass, rounding of F.
    allowance = 1e-7 * (1.0 + abs(log_f) + abs(math.log(float(lam.min()))))
    return (log_f - t_hi / frobenius_sq - allowance, log_f - t_lo / frobenius_sq + allowance)


def _block_bidiagonalize(tall: Any, v0: np.ndarray, steps: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GKL run independently from each column of v0 (unit columns), in lockstep.
    Returns alpha (steps x P), beta (steps+1 x P, beta[0] = 0), each column's length
    (its number of steps) and whether it broke down. A column breaks down when a
    coefficient falls to the rounding level of its products (:func:`breakdown_tolerance`;
    the u side is not reorthogonalized, so a tiny α would otherwise be divided into noise
    and the coefficients explode): the coefficient is set to 0, the column stops, and its
    bidiagonal, including that zero α, is then exact (B_jᵀB_j is the Lanczos
    tridiagonal of AᵀA, whose coupling α_jβ_j vanishes), so its quadrature is exact."""
    m, n = tall.shape
    p = v0.shape[1]
    V = np.zeros((steps + 1, n, p))
    V[0] = v0
    alpha = np.zeros((steps, p))
    beta = np.zeros((steps + 1, p))
    length = np.full(p, steps)
    alive = np.ones(p, dtype=bool)
    broke = np.zeros(p, dtype=bool)
    u_prev = np.zeros((m, p))
    scale = np.zeros(p)
    for j in range(steps):
        # One-sided reorthogonalization (of the short-side vectors V only) keeps the
        # bidiagonal's singular values accurate (Simon & Zha, SISC 21(6), 2000) without
        # storing the long-side basis: memory steps·n·P instead of steps·(m+n)·P.
        av = tall.matmat(V[j])
        scale = np.maximum(scale, np.linalg.norm(av, axis=0))
        u = av - beta[j] * u_prev
        a = np.linalg.norm(u, axis=0) * alive
        stop = alive & (a <= breakdown_tolerance(max(m, n), scale))
        length[stop] = j + 1
        broke |= stop
        alive &= ~stop
        a = a * alive
        alpha[j] = a
        u_prev = np.divide(u, a, out=np.zeros_like(u), where=alive)
        atu = tall.rmatmat(u_prev)
        scale = np.maximum(scale, np.linalg.norm(atu, axis=0))
        w = atu - a * V[j]
        for _ in range(2):
            w -= np.einsum("jnp,jp->np", V[: j + 1], np.einsum("jnp,np->jp", V[: j + 1], w))
        b = np.linalg.norm(w, axis=0) * alive
        stop = alive & (b <= breakdown_tolerance(max(m, n), scale))
        length[stop] = j + 1
        broke |= stop
        alive &= ~stop
        b = b * alive
        beta[j + 1] = b
        if not alive.any():  # every column is exact already
            break
        V[j + 1] = np.divide(w, b, out=np.zeros_like(w), where=alive)
    return alpha, beta, length, broke


def _gauss_rule(alpha: np.ndarray, beta: np.ndarray, length: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """Gauss rule for vᵀ g(AᵀA) v from the first ``length`` GKL coefficients: nodes θ_k²
    (singular values of the bidiagonal B), weights (first components of its right
    singular vectors)², as BᵀB is the Lanczos tridiagonal of AᵀA."""
    j = max(int(length), 1)
    theta, _, q = _ritz_svd(list(alpha[:j]), list(beta[: j + 1]))
    return theta**2, q[0, :] ** 2


def _f_quadrature(lam: np.ndarray, weights: np.ndarray) -> float:
    """Σ weights · f(nodes), f(λ) = λ ln λ (f(0) = 0)."""
    f = np.where(lam > 0, lam * np.log(np.where(lam > 0, lam, 1.0)), 0.0)
    return float(weights @ f)


def _scaled(op: Any, frobenius_norm: float | None = None) -> tuple[Any, int]:
    """``(2^-e·A, e)`` for an explicit matrix whose entries are near the float64 limits
    (see :mod:`spectrum_cli.core.scaling`), else ``(op, 0)``; values and bounds of the
    scaled operator scale back exactly by ``2^e``. Matrix-free operators are not scaled."""
    dense = op.dense()
    if dense is None:
        return op, 0
    e = scale_exponent(dense, frobenius_norm)
    if e == 0:
        return op, 0
    return as_operator(ldexp(dense, -e), symmetric=op.symmetric), e


class LanczosBackend:
    """Krylov methods with full reorthogonalization: extremes, bounds, SLQ estimates."""

    name = "lanczos"
    description = ("Golub-Kahan-Lanczos / symmetric Lanczos (full reorthogonalization) "
                   "and stochastic Lanczos quadrature")
    capabilities = Capabilities(singular_values=EXTREMES, eigenvalues_symmetric=EXTREMES,
                                trace_functions=True, matrix_free=True, devices=("cpu",),
                                dtypes=("float64",), accuracy="bound")

    def available(self) -> tuple[bool, str]:
        return True, ""

    def device_support(self) -> str:
        return "cpu"

    def singular_values(self, op: Any, k: int | None = None, which: str = "largest", *,
                        tol: float = DEFAULT_TOL, max_steps: int | None = None,
                        seed: int = 0, dtype: str = "float64", device: str = "cpu",
                        frobenius_norm: float | None = None, **_: Any) -> SingularValues:
        """The k largest or smallest singular values with residual bounds.
        ``frobenius_norm``, if known, saves the scaling check a pass over A."""
        check_which(which, EXTREMES, "singular values", self.name)
        check_options(self.name, dtype, device, self.capabilities.devices)
        op, e = _scaled(as_operator(op), frobenius_norm)
        k = k or 1
        t0 = time.perf_counter()
        before = op.n_matvec
        out = gkl(op, k, which, tol=tol, max_steps=max_steps, seed=seed)
        out["values"], out["bounds"] = ldexp(out["values"], e), ldexp(out["bounds"], e)
        notes = () if out["converged"] else (
            f"lanczos ({which}) did not converge in {out['steps']} steps: residual bounds "
            f"up to {float(np.max(out['bounds'])):.2g}",)
        return SingularValues(out["values"], self.name, "golub-kahan-lanczos", "bound",
                              float(np.max(out["bounds"])), time.perf_counter() - t0, notes,
                              which=which, converged=out["converged"],
                              n_matvec=op.n_matvec - before, error_bounds=out["bounds"],
                              settings={"k": k, "tol": tol, "max_steps": max_steps or
                                        DEFAULT_MAX_STEPS, "steps": out["steps"],
                                        "seed": seed, "reorthogonalization": "full"})

    def eigenvalues_symmetric(self, op: Any, k: int | None = None, which: str = "largest",
                              *, tol: float = DEFAULT_TOL, max_steps: int | None = None,
                              seed: int = 0, **_: Any) -> Eigenvalues:
        """The k algebraically largest or smallest eigenvalues, descending, with bounds."""
        check_which(which, EXTREMES, "eigenvalues", self.name)
        op = as_operator(op, symmetric=True)
        if op.shape[0] != op.shape[1]:
            raise ValueError(f"op: expected a square symmetric operator, got {op.shape}")
        op, e = _scaled(op)
        t0 = time.perf_counter()
        before = op.n_matvec
        out = lanczos_symmetric(op, k or 1, which, tol=tol, max_steps=max_steps, seed=seed)
        out["values"], out["bounds"] = ldexp(out["values"], e), ldexp(out["bounds"], e)
        return Eigenvalues(out["values"], self.name, "lanczos", "bound",
                           time.perf_counter() - t0, which=which, converged=out["converged"],
                           n_matvec=op.n_matvec - before, error_bounds=out["bounds"],
                           settings={"k": k or 1, "tol": tol, "steps": out["steps"],
                                     "seed": seed})

    def spectral_entropy(self, op: Any, frobenius_sq: float, *, probes: int = 24,
                         steps: int = 40, seed: int = 0, confidence: float = 0.99,
                         **_: Any) -> Estimate:
        """Spectral entropy (nats) of p_i = σ_i²/‖A‖_F² by stochastic Lanczos quadrature."""
        op, e = _scaled(as_operator(op))
        if e:  # the entropy is scale-invariant; ‖A‖_F² of the scaled matrix is finite
            frobenius_sq = _frobenius_sq(op.dense())
        t0 = time.perf_counter()
        out = slq_entropy(op, frobenius_sq, probes=probes, steps=steps, seed=seed,
                          confidence=confidence)
        return Estimate(out["value"], out["error_bar"], confidence,
                        "stochastic-lanczos-quadrature",
                        self.name, time.perf_counter() - t0, out["matvecs"],
                        settings={"probes": probes, "steps": steps, "seed": seed,
                                  "probe_distribution": "rademacher"})


def _frobenius_sq(a: Any) -> float:
    """Σ a_ij² of a numpy array or torch tensor."""
    if type(a).__module__.startswith("torch"):
        return float((a.double() ** 2).sum())
    return float(np.einsum("ij,ij->", a, a))
