"""WeightWatcher's randomization (``randomize=True``): the distance between the ESD of a
matrix and that of the same entries in a random order.

Permuting the entries of W keeps them (and ‖W‖_F) but destroys their correlations: the
result is an i.i.d. matrix with W's entry distribution, whose ESD is Marchenko-Pastur
like. ``rand_distance`` is the Jensen-Shannon distance between the two sets of
eigenvalues, each sorted ascending and read as a probability vector λ_(i)/Σλ, as
WeightWatcher 0.7.7 compares them (``apply_random_esd``; Martin & Mahoney, JMLR 22(165),
2021, use the randomized ESD to find correlation traps). Seeded here; WeightWatcher
shuffles with numpy's unseeded global generator.
"""

from __future__ import annotations

import math

import numpy as np


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """√((KL(p̂‖m̂) + KL(q̂‖m̂))/2) in nats, p̂, q̂, m̂ the vectors p, q, (p + q)/2 divided
    by their sums (Lin, IEEE Trans. Inf. Theory 37(1), 1991; the square root is a
    metric, Endres & Schindelin, IEEE Trans. Inf. Theory 49(7), 2003). In [0, √ln 2].
    This is WeightWatcher's ``jensen_shannon_distance`` (scipy's ``entropy`` normalizes
    its arguments)."""
    from scipy.special import rel_entr

    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = (p + q) / 2
    pn, qn, mn = p / np.sum(p), q / np.sum(q), m / np.sum(m)
    div = (float(np.sum(rel_entr(pn, mn))) + float(np.sum(rel_entr(qn, mn)))) / 2
    return math.sqrt(max(div, 0.0))


def gram_eigenvalues(a: np.ndarray) -> np.ndarray:
    """All min(m, n) eigenvalues σ_i² of a float64 matrix, ascending, from the Gram
    matrix of its smaller side (``eigvalsh``; absolute error about min(m, n)·eps·σ_max²,
    Demmel, *Applied Numerical Linear Algebra*, Thm 5.5), clipped at 0."""
    a = np.asarray(a, dtype=np.float64)
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return np.maximum(np.linalg.eigvalsh(g), 0.0)


def permuted(a: np.ndarray, seed: int = 0) -> np.ndarray:
    """``a`` with its entries in a random order (numpy's ``default_rng(seed)``): the
    i.i.d. matrix with the same entries, WeightWatcher's ``randomize``."""
    flat = np.array(a, dtype=np.float64).ravel()  # a copy, shuffled in place
    np.random.default_rng(seed).shuffle(flat)
    return flat.reshape(np.shape(a))


def rand_distance(a: np.ndarray, seed: int = 0, evals: np.ndarray | None = None
                  ) -> float | None:
    """Jensen-Shannon distance between the ESD of ``a`` and that of ``a`` with its
    entries permuted (seeded), WeightWatcher's ``rand_distance``: both sets of
    eigenvalues sorted ascending and compared as probability vectors (λ_(i)/Σλ; the
    sums are equal, ‖A‖_F², since a permutation keeps the entries). 0 when the ESD is
    that of an i.i.d. matrix; up to √ln 2 ≈ 0.83 when structure (correlations) moves
    the spectrum. ``evals`` are the eigenvalues of ``a`` when known (saves an
    eigen-decomposition). None for a zero matrix. Costs a shuffled copy of ``a`` and
    one or two Gram eigen-decompositions."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"a: expected a non-empty matrix, got shape {a.shape}")
    lam = gram_eigenvalues(a) if evals is None else np.sort(
        np.asarray(evals, dtype=np.float64).ravel())
    if lam.size != min(a.shape):
        raise ValueError(f"evals: expected {min(a.shape)} eigenvalues, got {lam.size}")
    if not np.isfinite(lam).all() or not np.sum(lam) > 0:
        return None
    return jensen_shannon_distance(lam, gram_eigenvalues(permuted(a, seed)))
