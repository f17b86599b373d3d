"""Symmetric Lanczos with full reorthogonalization (Lanczos, J. Res. NBS 45(4), 1950;
Golub & Van Loan, *Matrix Computations*, 4th ed., §10.1).

From a unit vector q₀, ``steps`` products with a symmetric operator A give the
coefficients α (diagonal) and β (off-diagonal) of the tridiagonal T = QᵀAQ. Every new
vector is orthogonalized twice against the whole basis (classical Gram-Schmidt, CGS2),
which keeps Q orthonormal to working precision at the cost of storing it. Shared by the
``lanczos`` backend (extreme eigenvalues with bounds) and the SLQ estimator.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def reorthogonalize(w: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """w without its components along the orthonormal columns of ``basis`` (CGS2)."""
    if basis.shape[1]:
        w = w - basis @ (basis.T @ w)
        w = w - basis @ (basis.T @ w)
    return w


def tridiagonalize(op: Any, q0: np.ndarray, max_steps: int,
                   done: Callable[[list[float], list[float]], bool] | None = None
                   ) -> tuple[list[float], list[float], int]:
    """α, β and the number of steps taken from the unit vector ``q0`` (``op.matmat``
    on an n x 1 block). ``done(alpha, beta)`` is asked on a geometric schedule (after 8
    steps, then every max(5, j/8)) and stops the process early; a zero β (an invariant
    subspace) stops it too, making the quadrature exact."""
    n = op.shape[0]
    basis = np.empty((n, max_steps + 1))
    basis[:, 0] = q0
    alpha: list[float] = []
    beta: list[float] = []
    next_check = 8
    j = 0
    for j in range(1, max_steps + 1):
        w = op.matmat(basis[:, j - 1:j]).ravel()
        alpha.append(float(basis[:, j - 1] @ w))
        w = reorthogonalize(w, basis[:, :j])
        b = float(np.linalg.norm(w))
        beta.append(b)
        if b == 0.0 or j == max_steps:
            break
        basis[:, j] = w / b
        if done is not None and j >= next_check:
            if done(alpha, beta):
                break
            next_check = j + max(5, j // 8)
    return alpha, beta, j
