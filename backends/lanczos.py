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
  ``r_i <= tol · θ_i`` for every requested value. The matrix is oriented tall first
  (A or Aᵀ), so the process sees no spurious zero singular values.
- Symmetric Lanczos (Lanczos 1950; Golub & Van Loan §10.1) for extreme eigenvalues of a
  symmetric operator, with the bound ``|λ - θ_i| <= β_{j+1} |e_jᵀ s_i|``.
- Stochastic Lanczos quadrature (Ubaru, Chen & Saad, SIMAX 38(4), 2017; Golub & Meurant,
  *Matrices, Moments and Quadrature*, 2010) for ``spectral_entropy``: Rademacher probes
  z (Hutchinson 1990) and the Gauss quadrature ``zᵀ f(AᵀA) z ≈ n Σ_k τ_k² f(θ_k²)`` from the
  GKL bidiagonal, with ``f(λ) = λ ln λ``; the error bar is Student's t quantile (99%
  two-sided by default) times the standard error over probes plus the change of the
  estimate from half to all the steps (a quadrature-error guard).

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
from spectrum_cli.core.estimators.lanczos1950 import reorthogonalize, tridiagonalize
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


def _bidiagonalize(tall: Any, v0: np.ndarray, max_steps: int,
                   done: Any = None) -> tuple[list[float], list[float], int]:
    """GKL from the unit vector v0 (full reorthogonalization). ``done(alpha, beta)`` is
    asked on a geometric schedule whether to stop. Returns alpha, beta (beta[0] = 0,
    beta[j] couples step j to j+1) and the number of steps taken."""
    m, n = tall.shape
    V = np.empty((n, max_steps + 1))
    U = np.empty((m, max_steps))
    V[:, 0] = v0
    alpha: list[float] = []
    beta: list[float] = [0.0]
    u_prev = np.zeros(m)
    next_check = 8
    j = 0
    for j in range(1, max_steps + 1):
        u = tall.matmat(V[:, j - 1:j]).ravel() - beta[-1] * u_prev
        u = reorthogonalize(u, U[:, : j - 1])
        a = float(np.linalg.norm(u))
        alpha.append(a)
        if a == 0.0:  # invariant subspace: the spectrum of B_j is exact
            beta.append(0.0)
            break
        u /= a
        U[:, j - 1] = u
        w = tall.rmatmat(u.reshape(-1, 1)).ravel() - a * V[:, j - 1]
        w = reorthogonalize(w, V[:, :j])
        b = float(np.linalg.norm(w))
        beta.append(b)
        if b == 0.0 or j == max_steps:
            break
        V[:, j] = w / b
        u_prev = u
        if done is not None and j >= next_check:
            if done(alpha, beta):
                break
            next_check = j + max(5, j // 8)
    return alpha, beta, j


def _gkl_bounds(alpha: list[float], beta: list[float], k: int, which: str, tol: float):
    theta, p, _ = _ritz_svd(alpha, beta)
    # Gap-refined residual bound (convergence is judged on it) plus a rounding floor
    # (the backward error of the reorthogonalized process).
    resid = gap_refined(theta, beta[-1] * np.abs(p[-1, :]))
    sel = slice(0, k) if which == "largest" else slice(len(theta) - k, None)
    ok = len(theta) >= k and bool(np.all(
        resid[sel] <= tol * np.maximum(theta[sel], tol * theta[0])))
    bounds = resid + ROUNDING * math.sqrt(len(alpha)) * theta[0]
    return theta[sel], bounds[sel], ok


def gkl(op: Any, k: int, which: str, tol: float = DEFAULT_TOL, max_steps: int | None = None,
        seed: int = 0) -> dict[str, Any]:
    """Golub-Kahan-Lanczos for the k largest or smallest singular values of ``op``."""
    tall = op if op.shape[0] >= op.shape[1] else _Transposed(op)
    n = tall.shape[1]
    max_steps = min(n, max_steps or DEFAULT_MAX_STEPS)
    k = min(k, n)
    v0 = np.random.default_rng(seed).standard_normal(n)
    alpha, beta, steps = _bidiagonalize(
        tall, v0 / np.linalg.norm(v0), max_steps,
        done=lambda a, b: len(a) >= k + 2 and _gkl_bounds(a, b, k, which, tol)[2])
    values, bounds, ok = _gkl_bounds(alpha, beta, k, which, tol)
    exhausted = beta[-1] == 0.0 or len(alpha) == n  # the whole spectrum was found
    return {"values": values, "bounds": bounds, "steps": steps, "converged": ok or exhausted}


def _lanczos_bounds(alpha: list[float], beta: list[float], k: int, which: str, tol: float):
    """Ritz values (descending), their gap-refined bounds, and whether they converged."""
    t = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    theta, s = np.linalg.eigh(t)
    scale = max(abs(theta[0]), abs(theta[-1]))
    resid = gap_refined(theta, beta[-1] * np.abs(s[-1, :]))
    sel = slice(len(theta) - k, None) if which == "largest" else slice(0, k)
    ok = len(theta) >= k and bool(np.all(resid[sel] <= tol * scale))
    bounds = resid + ROUNDING * math.sqrt(len(alpha)) * scale
    order = np.argsort(-theta[sel])
    return theta[sel][order], bounds[sel][order], ok


def lanczos_symmetric(op: Any, k: int, which: str, tol: float = DEFAULT_TOL,
                      max_steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Symmetric Lanczos for the k algebraically largest or smallest eigenvalues."""
    n = op.shape[0]
    max_steps = min(n, max_steps or DEFAULT_MAX_STEPS)
    k = min(k, n)
    q0 = np.random.default_rng(seed).standard_normal(n)
    alpha, beta, steps = tridiagonalize(
        op, q0 / np.linalg.norm(q0), max_steps,
        done=lambda a, b: len(a) >= k + 2 and _lanczos_bounds(a, b, k, which, tol)[2])
    values, bounds, ok = _lanczos_bounds(alpha, beta, k, which, tol)
    exhausted = beta[-1] == 0.0 or len(alpha) == n
    return {"values": values, "bounds": bounds, "steps": steps, "converged": ok or exhausted}


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
    alpha, beta = _block_bidiagonalize(tall, z, steps)
    full = np.array([n * _quadrature(alpha[:, p], beta[:, p]) for p in range(probes)])
    half = np.array([n * _quadrature(alpha[: steps // 2 or 1, p], beta[: (steps // 2 or 1) + 1, p])
                     for p in range(probes)])
    trace = float(full.mean())
    se = float(full.std(ddof=1) / math.sqrt(probes)) if probes > 1 else math.inf
    quantile = float(student.ppf(0.5 + confidence / 2, max(probes - 1, 1)))
    bar = quantile * se + abs(trace - float(half.mean()))
    return {"value": math.log(frobenius_sq) - trace / frobenius_sq,
            "error_bar": bar / frobenius_sq, "matvecs": 2 * steps * probes}


def _block_bidiagonalize(tall: Any, v0: np.ndarray, steps: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """GKL run independently from each column of v0 (unit columns), in lockstep.
    Returns alpha (steps x P) and beta (steps+1 x P, beta[0] = 0); a column whose
    process breaks down keeps zeros from there on (its quadrature is then exact)."""
    m, n = tall.shape
    p = v0.shape[1]
    V = np.zeros((steps + 1, n, p))
    V[0] = v0
    alpha = np.zeros((steps, p))
    beta = np.zeros((steps + 1, p))
    alive = np.ones(p, dtype=bool)
    u_prev = np.zeros((m, p))
    for j in range(steps):
        # One-sided reorthogonalization (of the short-side vectors V only) keeps the
        # bidiagonal's singular values accurate (Simon & Zha, SISC 21(6), 2000) without
        # storing the long-side basis: memory steps·n·P instead of steps·(m+n)·P.
        u = tall.matmat(V[j]) - beta[j] * u_prev
        a = np.linalg.norm(u, axis=0) * alive
        alive &= a > 0
        alpha[j] = a
        u_prev = np.divide(u, a, out=np.zeros_like(u), where=alive)
        w = tall.rmatmat(u_prev) - a * V[j]
        for _ in range(2):
            w -= np.einsum("jnp,jp->np", V[: j + 1], np.einsum("jnp,np->jp", V[: j + 1], w))
        b = np.linalg.norm(w, axis=0) * alive
        alive &= b > 0
        beta[j + 1] = b
        V[j + 1] = np.divide(w, b, out=np.zeros_like(w), where=alive)
    return alpha, beta


def _quadrature(alpha: np.ndarray, beta: np.ndarray) -> float:
    """Gauss quadrature of vᵀ f(AᵀA) v, f(λ) = λ ln λ, from GKL coefficients: nodes θ_k²
    (singular values of the bidiagonal B), weights (first components of its right
    singular vectors)², as BᵀB is the Lanczos tridiagonal of AᵀA."""
    j = int(np.count_nonzero(alpha)) or 1
    theta, _, q = _ritz_svd(list(alpha[:j]), list(beta[: j + 1]))
    lam = theta**2
    f = np.where(lam > 0, lam * np.log(np.where(lam > 0, lam, 1.0)), 0.0)
    return float((q[0, :] ** 2) @ f)


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
