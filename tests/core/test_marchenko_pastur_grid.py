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


def test_fmin_is_scipys_nelder_mead_bit_for_bit():
    """The polish written out (no scipy.optimize import in a fitting process) takes
    scipy's fmin steps exactly: the same minimizer bits on smooth, flat, kinked and
    multi-dimensional functions, from zero and non-zero starts."""
    from scipy import optimize

    from spectrum_cli.core.marchenko_pastur import _fmin

    cases = [
        (lambda x: float((x[0] - 0.3) ** 2), [1.0]),
        (lambda x: float(abs(x[0] - 2.5) + 0.1 * x[0] ** 2), [0.0]),
        (lambda x: 1.0, [0.7]),  # flat: stops on the values at once
        (lambda x: float(np.sin(3 * x[0]) + 0.05 * x[0] ** 2), [4.0]),
        (lambda x: float(100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2), [-1.2, 1.0]),
        (lambda x: float(np.sum((x - np.arange(3)) ** 2)), [0.0, 0.0, 0.0]),
    ]
    for f, x0 in cases:
        want = optimize.fmin(f, np.array(x0), full_output=1, disp=False)[0]
        got = _fmin(f, np.array(x0))
        assert np.array_equal(np.ravel(want), got), (x0, want, got)
