"""The Marchenko-Pastur fit evaluates scipy's brute-force grid in one vectorized pass
(issue 24): the values must be bit-identical to WeightWatcher's scalar ``resid_mp``, and
the fitted σ identical to ``optimize.brute`` over that scalar function."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from spectrum_cli.core import marchenko_pastur as mp


def resid_mp(sigma: float, r: mp._Residual, q: float) -> float:
    """WeightWatcher 0.7.7's ``resid_mp`` (weightwatcher/RMT_Util.py), one σ at a time,
    on the density that ``_Residual`` computed once."""
    x, y = r.x, r.y
    with np.errstate(all="ignore"):
        if q == 1:
            resid = np.nan_to_num((1 / (np.pi * sigma * sigma)) * np.sqrt(4 - x ** 2)) - y
        else:
            b = np.power(sigma * (1 + np.sqrt(1 / q)), 2)
            a = np.power(sigma * (1 - np.sqrt(1 / q)), 2)
            if b < r.peak or b > r.xmax or a > r.peak:
                resid = np.zeros(y.size) + 1000.0
            else:
                resid = np.nan_to_num((1 / (2 * np.pi * sigma * sigma * x * (1 / q)))
                                      * np.sqrt((b - x) * (x - a))) - y
    return float(np.sum(np.concatenate((resid, np.zeros(r.n_bad))) ** 2))


@pytest.mark.parametrize("trial", range(16))
def test_vectorized_grid_is_bit_identical_to_the_scalar_residual(trial):
    rng = np.random.default_rng(trial)
    m, n = (int(v) for v in rng.integers(20, 400, 2))
    if trial % 4 == 0:
        n = m  # the quarter-circle law
    w = rng.standard_normal((m, n)) * rng.uniform(0.01, 5)
    if trial % 3 == 0:  # a spike
        w += 5 * np.outer(rng.standard_normal(m), rng.standard_normal(n)) / np.sqrt(m * n)
    if trial % 4 == 1:  # heavy-tailed columns
        w = w @ np.diag(rng.pareto(2.0, n) + 0.1)
    lam = np.sort(np.linalg.svd(w, compute_uv=False) ** 2)
    q = max(m, n) / min(m, n)
    scaled = lam * (lam.size / lam.sum())
    s0 = np.sqrt(scaled.max() / np.square(1 + 1 / np.sqrt(q)))
    r = mp._Residual(np.sqrt(scaled) if q == 1 else scaled, q)
    assert r.x.size
    grid = np.mgrid[slice(0.05 * s0, 2 * s0, 0.01 * s0)]
    want = np.array([resid_mp(float(g), r, q) for g in grid])
    np.testing.assert_array_equal(r.many(grid), want)
    assert r(np.array([grid[7]])) == want[7]
    brute = optimize.brute(lambda p: resid_mp(float(np.ravel(p)[0]), r, q),
                           (slice(0.05 * s0, 2 * s0, 0.01 * s0),), full_output=True)[0]
    assert mp._brute(r, 0.05 * s0, 2 * s0, 0.01 * s0) == float(np.ravel(brute)[0])
