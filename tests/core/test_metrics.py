"""Each metric against an independent numpy float64 computation, closed forms and
properties (the contract names of the foundation issue, item 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spectrum_backends.dense import DenseBackend
from spectrum_cli.core.analyze import AnalyzeOptions, _Planned
from spectrum_cli.core.measure import analyze_matrix
from spectrum_cli.core.metrics import METRICS, NONNORMAL_METRICS, singular_value_metrics
from tests.helpers import spectrum_of, with_spectrum


def analyse(a: np.ndarray, **opts) -> dict:
    p = _Planned("w", a.shape, "float64", a.shape, "matrix")
    return analyze_matrix(p, a, AnalyzeOptions(**opts), DenseBackend()).metrics


def reference_metrics(a: np.ndarray, tau: float = 0.01) -> dict:
    """Straight from the definitions, with numpy only (no code shared with spectrum)."""
    s = np.linalg.svd(a, compute_uv=False)
    p = s**2 / np.sum(s**2)
    p = p[p > 0]
    h = -np.sum(p * np.log(p))
    rank = np.linalg.matrix_rank(a)  # numpy's default tolerance on the float64 matrix
    rows, cols = np.linalg.norm(a, axis=1), np.linalg.norm(a, axis=0)
    return {
        "sigma_max": s[0], "sigma_min": s[-1], "kappa": s[0] / s[-1],
        "numerical_rank": rank, "spectral_entropy": h,
        "spectral_entropy_normalized": h / np.log(rank),
        "entropy_effective_rank": np.exp(h),
        "stable_rank": np.linalg.norm(a, "fro") ** 2 / s[0] ** 2,
        "effective_rank": int(np.sum(s > tau * s[0])),
        "spectral_gap": (s[0] - s[1]) / s[0],
        "frobenius_norm": np.linalg.norm(a, "fro"),
        "row_norm_min": rows.min(), "row_norm_max": rows.max(), "row_norm_mean": rows.mean(),
        "col_norm_min": cols.min(), "col_norm_max": cols.max(), "col_norm_mean": cols.mean(),
    }


@pytest.mark.parametrize("shape", [(40, 40), (120, 30), (30, 120), (500, 64)])
@pytest.mark.parametrize("kappa", [1.0 + 1e-9, 30.0, 1e4, 1e8])
def test_every_metric_matches_numpy_float64(rng, shape, kappa):
    a = with_spectrum(rng, shape, spectrum_of("geometric", min(shape), kappa))
    got = analyse(a)
    ref = reference_metrics(a)
    for name, value in ref.items():
        if name == "kappa":
            assert got[name] == pytest.approx(value, rel=1e-8), name
        elif isinstance(value, (int, np.integer)):
            assert got[name] == value, name
        else:
            assert got[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name


def test_metric_names_are_the_contract(rng):
    from spectrum_cli import plugins
    from spectrum_cli.core.metrics import BUILTIN, COMPUTED, SQUARE_METRICS, builtin_metrics

    core = {m.name for m in BUILTIN} | set(COMPUTED)  # the built-ins alone (no registry)
    got = analyse(rng.standard_normal((12, 12)), square="all")
    assert set(got) == core
    got = analyse(rng.standard_normal((12, 7)))
    assert set(got) == core - set(SQUARE_METRICS)
    assert set(SQUARE_METRICS) == {"spectral_radius", *NONNORMAL_METRICS}
    p = _Planned("w", (30, 20), "float64", (30, 20), "matrix")
    opt_in = {m.name: m.opt_in for m in builtin_metrics() if m.opt_in}  # rand_distance..
    assert opt_in["rand_distance"] == "randomize"
    for randomize in (False, True):  # the registered metrics: every contract name
        got = analyze_matrix(p, rng.standard_normal((30, 20)),
                             AnalyzeOptions(randomize=randomize), DenseBackend(),
                             plugins.metric_plugins()).metrics
        asked = {"randomize"} if randomize else set()
        want = set(METRICS) - set(SQUARE_METRICS) - {
            name for name, setting in opt_in.items() if setting not in asked}
        assert set(got) == want


def test_closed_forms_flat_spectrum():
    # An orthogonal matrix: all sigma = 1, so kappa = 1, entropy = ln n, normalized = 1.
    q = np.linalg.qr(np.random.default_rng(1).standard_normal((50, 50)))[0]
    m = analyse(q, square="all")
    assert m["kappa"] == pytest.approx(1.0, abs=1e-13)
    assert m["spectral_entropy"] == pytest.approx(math.log(50), rel=1e-13)
    assert m["spectral_entropy_normalized"] == pytest.approx(1.0, rel=1e-13)
    assert m["entropy_effective_rank"] == pytest.approx(50, rel=1e-12)
    assert m["stable_rank"] == pytest.approx(50, rel=1e-12)
    assert m["spectral_gap"] == pytest.approx(0.0, abs=1e-13)
    assert m["spectral_radius"] == pytest.approx(1.0, rel=1e-13)


def test_closed_forms_rank_one(rng):
    a = np.outer(rng.standard_normal(30), rng.standard_normal(20))
    m = analyse(a)
    assert m["numerical_rank"] == 1
    assert m["spectral_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert m["spectral_entropy_normalized"] == 0.0
    assert m["stable_rank"] == pytest.approx(1.0, rel=1e-12)
    assert m["kappa"] > 1e12  # sigma_min is rounding noise, not exactly zero


def test_closed_forms_diagonal():
    a = np.diag([4.0, 2.0, 1.0, 0.5])
    m = analyse(a, square="all")
    assert m["kappa"] == 8.0 and m["sigma_max"] == 4.0 and m["sigma_min"] == 0.5
    p = np.array([16, 4, 1, 0.25]) / 21.25
    assert m["spectral_entropy"] == pytest.approx(-np.sum(p * np.log(p)), rel=1e-14)
    assert m["spectral_gap"] == 0.5
    assert m["effective_rank"] == 4
    assert analyse(a, effective_rank_tau=0.2)["effective_rank"] == 3  # > 0.8
    assert analyse(a, effective_rank_tau=0.3)["effective_rank"] == 2  # > 1.2
    assert m["spectral_radius"] == 4.0
    assert m["stable_rank"] == pytest.approx(21.25 / 16, rel=1e-15)


def test_zero_matrix_kappa_is_inf_and_entropy_undefined():
    m = analyse(np.zeros((5, 3)))
    assert m["kappa"] == math.inf and m["sigma_max"] == 0.0
    assert m["numerical_rank"] == 0 and m["effective_rank"] == 0
    for name in ("spectral_entropy", "spectral_entropy_normalized", "stable_rank",
                 "entropy_effective_rank", "spectral_gap"):
        assert m[name] is None


def test_exactly_singular_gives_inf():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert analyse(a)["kappa"] == math.inf


def test_spectral_radius_of_non_normal_matrix():
    # Jordan-like: eigenvalues 0.5 (twice), sigma_max much larger.
    a = np.array([[0.5, 100.0], [0.0, 0.5]])
    m = analyse(a, square="all")
    assert m["spectral_radius"] == pytest.approx(0.5, rel=1e-6)
    assert m["sigma_max"] > 100


def test_square_option_controls_eigenvalues(rng):
    a = rng.standard_normal((20, 20))
    assert "spectral_radius" not in analyse(a)  # auto: a feed-forward square, no powers
    assert "spectral_radius" in analyse(a, square_max_dim=20)
    assert "spectral_radius" not in analyse(a, square="none", square_max_dim=20)
    assert "spectral_radius" not in analyse(a, square_max_dim=10)
    assert "spectral_radius" in analyse(a, square="all")


def test_weightwatcher_entropy_formula(rng):
    """WeightWatcher 0.7.7 RMT_Util.matrix_entropy: p = σ²/Σσ² + 1e-10, rank += 1e-10,
    -Σ p ln p / ln(rank), with numpy's rank tolerance (re-typed here from its source)."""
    for shape in [(64, 32), (100, 100)]:
        a = with_spectrum(rng, shape, spectrum_of("decaying", min(shape), 1e3))  # 100: eig too
        s = np.linalg.svd(a, compute_uv=False)
        rank = np.count_nonzero(s > np.max(s) * max(shape) * np.finfo(s.dtype).eps)
        p = s * s / np.sum(s * s) + 1e-10
        ww = -np.sum(p * np.log(p)) / np.log(rank + 1e-10)
        assert analyse(a)["spectral_entropy_normalized"] == pytest.approx(ww, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.floats(-1e3, 1e3, allow_nan=False)))
def test_properties(a):
    m = analyse(a)
    if m["sigma_max"] == 0:
        assert m["kappa"] == math.inf
        return
    assert m["kappa"] >= 1.0
    k = min(a.shape)
    assert 0.0 <= m["spectral_entropy"] <= math.log(k) + 1e-12
    assert 0.0 <= m["spectral_entropy_normalized"] <= 1.0
    assert 1.0 - 1e-12 <= m["stable_rank"] <= k + 1e-9
    assert 1.0 - 1e-12 <= m["entropy_effective_rank"] <= k + 1e-9
    assert 0 <= m["numerical_rank"] <= k and 1 <= m["effective_rank"] <= k
    assert m["frobenius_norm"] >= m["sigma_max"] * (1 - 1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 10), st.integers(2, 10), st.floats(1e-3, 1e3), st.integers(0, 10**6))
def test_invariances(m, n, scale, seed):
    """κ, entropies and ranks are invariant under scaling and orthogonal transforms."""
    r = np.random.default_rng(seed)
    a = r.standard_normal((m, n))
    u = np.linalg.qr(r.standard_normal((m, m)))[0]
    v = np.linalg.qr(r.standard_normal((n, n)))[0]
    base, moved = analyse(a), analyse(scale * u @ a @ v)
    for name in ("kappa", "spectral_entropy", "stable_rank", "spectral_gap"):
        assert moved[name] == pytest.approx(base[name], rel=1e-8, abs=1e-10), name
    assert moved["sigma_max"] == pytest.approx(scale * base["sigma_max"], rel=1e-10)


def test_tau_validated():
    with pytest.raises(ValueError, match="tau"):
        singular_value_metrics(np.ones(3), (3, 3), tau=1.5)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_extreme_scales_scale_exactly(rng, scale):
    a = rng.standard_normal((30, 10))
    base, big = analyse(a), analyse(a * scale)
    for name in ("sigma_max", "sigma_min", "frobenius_norm", "row_norm_max", "col_norm_min"):
        assert big[name] == pytest.approx(base[name] * scale, rel=1e-12), name
    for name in ("kappa", "spectral_entropy", "stable_rank"):
        assert big[name] == pytest.approx(base[name], rel=1e-12), name
