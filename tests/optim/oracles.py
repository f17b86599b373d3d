"""Dense float64 oracles for the optimizer tests (and bench/bench_operators.py): the
explicit update operator a block form stands for, built without the block theorem."""

from __future__ import annotations

import numpy as np


def dense_operator(form, hmat: np.ndarray) -> np.ndarray:
    """The explicit operator for a symmetric matrix (H, or K for Adam):
    [[wI - αH, -βI], [γH, μI]] (2n x 2n), or wI - αH without a second state."""
    n = hmat.shape[0]
    eye = np.eye(n)
    top_left = form.w * eye - form.alpha * hmat
    if form.beta == 0.0 and form.gamma == 0.0:
        return top_left
    return np.block([[top_left, -form.beta * eye], [form.gamma * hmat, form.mu * eye]])
