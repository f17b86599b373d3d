"""Stochastic Lanczos quadrature (Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 38(4),
2017; Golub & Meurant, *Matrices, Moments and Quadrature*, 2010).

For a symmetric n x n operator A and a Rademacher probe z (entries ±1/√n), m Lanczos
steps from z give the tridiagonal T_m = Q Θ Qᵀ; the Gauss rule with nodes θ_k and
weights τ_k = Q_{0k}² satisfies zᵀ f(A) z ≈ Σ_k τ_k f(θ_k), exactly for polynomials of
degree < 2m. Averaging over probes estimates tr f(A)/n; the spread across probes gives
the standard error. The lanczos backend's spectral entropy uses the same rule on AᵀA
through Golub-Kahan bidiagonalization (nodes θ², see backends/lanczos.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spectrum_cli.core.estimators.lanczos1950 import tridiagonalize


def gauss_rule(alpha: list[float], beta: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (eigenvalues of the tridiagonal) and weights (first eigenvector components,
    squared) of the Gauss quadrature from Lanczos coefficients α, β."""
    m = len(alpha)
    t = np.diag(np.asarray(alpha, dtype=np.float64))
    if m > 1:
        off = np.asarray(beta[:m - 1], dtype=np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    theta, vecs = np.linalg.eigh(t)
    return theta, vecs[0, :] ** 2


def slq_nodes(op: Any, n: int, probes: int, steps: int, seed: int = 0
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """One Gauss rule (nodes, weights) per Rademacher probe, ``min(steps, n)`` Lanczos
    steps each; Σ weights f(nodes), averaged over the probes, estimates tr f(A)/n."""
    rng = np.random.default_rng(seed)
    m = min(steps, n)
    rules = []
    for _ in range(probes):
        z = rng.choice([-1.0, 1.0], size=n) / math.sqrt(n)
        alpha, beta, *_ = tridiagonalize(op, z, m)  # stops at a breakdown: exact rule
        rules.append(gauss_rule(alpha, beta))
    return rules
