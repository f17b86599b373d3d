"""Symmetric Lanczos with full reorthogonalization (Lanczos, J. Res. NBS 45(4), 1950;
Golub & Van Loan, *Matrix Computations*, 4th ed., §10.1).

From a unit vector q₀, ``steps`` products with a symmetric operator A give the
coefficients α (diagonal) and β (off-diagonal) of the tridiagonal T = QᵀAQ. Every new
vector is orthogonalized twice against the whole basis (classical Gram-Schmidt, CGS2),
which keeps Q orthonormal to working precision at the cost of storing it. Shared by the
``lanczos`` backend (extreme eigenvalues with bounds) and the SLQ estimator.

Breakdown (an invariant subspace found). When the new vector's norm after CGS2 is at
the rounding level of the products, ``β <= BREAKDOWN·sqrt(n)·‖A q‖_max`` (the largest
product norm seen so far, a lower bound on ‖A‖), the vector is noise: normalizing it
would put a non-orthogonal direction into the basis and ruin every later coefficient
(the all-ones matrix broke the process this way). The residual is then dropped: β is
set to 0, which perturbs the relation ``AQ = QT + β q eᵀ`` by at most the dropped
norm (reported as ``dropped``, the square root of the sum of the dropped norms
squared, so that eigenvalue bounds can include it). With a generator ``rng`` the
process restarts from a random unit vector orthogonal to the basis (T becomes block
diagonal: this is how repeated eigenvalues and the null space of a low-rank operator
are found); without one it stops there, which makes a Gauss quadrature exact.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

EPS = float(np.finfo(np.float64).eps)
#: A Krylov vector with ``‖w‖ <= BREAKDOWN·sqrt(n)·scale`` after CGS2 is rounding noise
#: (``scale``: the largest product norm seen, ``n``: the vector length).
BREAKDOWN = 16 * EPS


class Krylov(NamedTuple):
    """The coefficients of a Lanczos run: ``alpha``, ``beta`` (``beta[j]`` couples step
    j+1 to j+2; the last one is the residual coupling), the number of ``steps`` and
    ``dropped``, sqrt(Σ d²) of the residual norms d set to zero at breakdowns."""

    alpha: list[float]
    beta: list[float]
    steps: int
    dropped: float


def reorthogonalize(w: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """w without its components along the orthonormal columns of ``basis`` (CGS2)."""
    if basis.shape[1]:
        w = w - basis @ (basis.T @ w)
        w = w - basis @ (basis.T @ w)
    return w


def breakdown_tolerance(n: int, scale: float) -> float:
    """The norm below which a reorthogonalized Krylov vector of length ``n`` is noise,
    for products of norm up to ``scale`` (0 for a zero operator: then only an exact 0)."""
    return BREAKDOWN * math.sqrt(n) * scale


def orthogonal_random(rng: np.random.Generator, basis: np.ndarray) -> np.ndarray | None:
    """A random unit vector orthogonal to the orthonormal columns of ``basis`` (None when
    they span the whole space)."""
    n, j = basis.shape
    if j >= n:
        return None
    for _ in range(4):
        x = rng.standard_normal(n)
        x0 = float(np.linalg.norm(x))
        x = reorthogonalize(x, basis)
        nx = float(np.linalg.norm(x))
        # A Gaussian keeps about sqrt((n-j)/n) of its norm: far above the noise level.
        if nx > 1e-6 * x0:
            if nx < 0.5 * x0:  # a third pass, as in DGKS / ARPACK's getv0
                x = reorthogonalize(x, basis)
                nx = float(np.linalg.norm(x))
            return x / nx
    return None


def tridiagonalize(op: Any, q0: np.ndarray, max_steps: int,
                   done: Callable[[list[float], list[float], float], bool] | None = None,
                   rng: np.random.Generator | None = None) -> Krylov:
    """α, β, the number of steps taken and the dropped residual (see the module
    docstring) from the unit vector ``q0`` (``op.matmat`` on an n x 1 block).
    ``done(alpha, beta, dropped)`` is asked on a geometric schedule (after 8 steps, then
    every max(5, j/8)) and stops the process early. A breakdown stops the process (β = 0:
    the quadrature is exact) or, with ``rng``, restarts it orthogonally."""
    n = op.shape[0]
    basis = np.empty((n, max_steps + 1))
    basis[:, 0] = q0
    alpha: list[float] = []
    beta: list[float] = []
    dropped_sq = 0.0
    scale = 0.0
    next_check = 8
    j = 0
    for j in range(1, max_steps + 1):
        w = op.matmat(basis[:, j - 1:j]).ravel()
        scale = max(scale, float(np.linalg.norm(w)))
        alpha.append(float(basis[:, j - 1] @ w))
        w = reorthogonalize(w, basis[:, :j])
        b = float(np.linalg.norm(w))
        if j == max_steps:
            beta.append(b)
            break
        if b <= breakdown_tolerance(n, scale):
            dropped_sq += b * b
            beta.append(0.0)
            q = None if rng is None else orthogonal_random(rng, basis[:, :j])
            if q is None:
                break
            basis[:, j] = q
        else:
            beta.append(b)
            basis[:, j] = w / b
        if done is not None and j >= next_check:
            if done(alpha, beta, math.sqrt(dropped_sq)):
                break
            next_check = j + max(5, j // 8)
    return Krylov(alpha, beta, j, math.sqrt(dropped_sq))
