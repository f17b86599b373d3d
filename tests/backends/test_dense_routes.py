"""Accuracy contract of the dense backend (issue: foundation, item 5).

Every singular value within 1e-10·σ_max (absolute) of LAPACK float64 gesdd on the same
matrix, and κ within 1e-8 relative whenever κ <= 1e8, whatever the stored dtype, on
whichever route ran. The Gram route must notice when it cannot promise this.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from spectrum_backends import dense
from tests.helpers import oracle_svdvals, spectrum_of, with_spectrum

SHAPES = [(48, 48), (200, 60), (60, 200), (1200, 96), (7, 300), (300, 7), (130, 128)]
KAPPAS = [1.0, 1e2, 1e4, 1e6, 1e8]
PROFILES = ["geometric", "flat_one_small", "two_clusters", "decaying"]
STORED = ["float64", "float32", "float16", "bfloat16"]


def stored_as(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round ``a`` to ``dtype`` and upcast it back exactly (what a checkpoint holds)."""
    t = torch.from_numpy(a).to(getattr(torch, dtype))
    return t.to(torch.float64).numpy()


def assert_contract(a: np.ndarray, got: np.ndarray) -> None:
    ref = oracle_svdvals(a)
    assert got.shape == ref.shape
    assert np.all(np.diff(got) <= 0), "not descending"
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * ref[0])
    k_ref = ref[0] / ref[-1] if ref[-1] > 0 else math.inf
    if k_ref <= 1e8:
        k_got = got[0] / got[-1]
        assert abs(k_got - k_ref) <= 1e-8 * k_ref, (k_got, k_ref)


@pytest.mark.parametrize("route", ["auto", "gram", "gesdd"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kappa", KAPPAS)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_route_meets_the_contract(rng, route, shape, kappa, profile):
    a = with_spectrum(rng, shape, spectrum_of(profile, min(shape), kappa))
    sv = dense.singular_values(a, route=route)
    assert_contract(a, sv.values)
    assert sv.accuracy == "exact" and sv.backend == "dense"
    assert sv.route in ("gram", "gram+lu", "gram+qr", "gesdd")
    if route == "gesdd":
        assert sv.route == "gesdd"


@pytest.mark.parametrize("dtype", STORED)
@pytest.mark.parametrize("kappa", [10.0, 1e3, 1e5])
def test_contract_holds_whatever_the_stored_dtype(rng, dtype, kappa):
    a = stored_as(with_spectrum(rng, (240, 80), spectrum_of("geometric", 80, kappa)), dtype)
    assert_contract(a, dense.singular_values(a).values)


def test_gram_route_taken_when_safe_and_refused_when_not(rng):
    well = with_spectrum(rng, (600, 50), spectrum_of("geometric", 50, 10.0))
    sv = dense.singular_values(well, route="auto")
    assert sv.route == "gram" and sv.notes == ()
    # Too ill-conditioned for the Gram values alone, and too many small values (a
    # geometric spectrum down to 1e-7 has ~45% of them below the Gram route's reach)
    # to refine: gesdd, and the note says why.
    ill = with_spectrum(rng, (600, 50), spectrum_of("geometric", 50, 1e7))
    sv = dense.singular_values(ill, route="gram")
    assert sv.route == "gesdd"
    assert "gram route rejected" in sv.notes[0] and "estimated kappa" in sv.notes[0]
    assert "small singular values to refine" in sv.notes[0]


# --- The refined Gram route: the bottom of the spectrum by inverse subspace iteration --


def few_small(rng, shape, kappa, small=3, dtype="bfloat16"):
    """A matrix whose spectrum is a bulk in [0.5, 1] and ``small`` values down to
    1/kappa (what trained square projections look like: a few small values), rounded to
    a stored dtype."""
    k = min(shape)
    s = np.concatenate([np.linspace(1.0, 0.5, k - small),
                        np.geomspace(10.0 / kappa, 1.0 / kappa, small)])
    return stored_as(with_spectrum(rng, shape, s), dtype)


@pytest.mark.parametrize("shape,route", [((600, 600), "gram+lu"), ((700, 600), "gram+qr"),
                                         ((600, 1300), "gram+qr")])
@pytest.mark.parametrize("kappa", [1e3, 1e5, 1e7])
def test_refined_route_meets_the_contract(rng, shape, route, kappa):
    a = few_small(rng, shape, kappa)
    sv = dense.singular_values(a, route="auto")
    assert sv.route == route, sv.notes
    assert 1 <= sv.settings["refined"] <= dense.refine_limit(min(shape))
    assert_contract(a, sv.values)
    # The stated error bound holds against gesdd (whose own error is p·eps·σ_max).
    ref = oracle_svdvals(a)
    assert np.max(np.abs(sv.values - ref)) <= sv.error_estimate + max(shape) * dense.EPS * ref[0]


def test_refined_route_is_faster_than_its_fallback_would_suggest(rng):
    """The route's purpose: a square matrix of k >= 512 no longer needs gesdd. Not a
    timing test: it checks that auto takes the route and refines only a few values."""
    a = few_small(rng, (512, 512), 1e4, small=2)
    sv = dense.singular_values(a)
    assert sv.route == "gram+lu" and sv.settings["refined"] <= 4 and sv.notes == ()


@pytest.mark.parametrize("per_side,route", [(32, "gram+lu"), (300, "gesdd")])
def test_refinement_limit_grows_with_the_side(rng, monkeypatch, per_side, route):
    """Twelve small values on a 600 x 600 matrix (seven beyond the Gram route's reach),
    the floor lowered to 4: refined when the limit is one value per 32 of the side (18),
    gesdd with a note at one per 300 (4). (The real floor is 64 values and one per 64: a
    side of 8192 refines up to 128.)"""
    monkeypatch.setattr(dense, "REFINE_MAX", 4)
    monkeypatch.setattr(dense, "REFINE_PER_SIDE", per_side)
    a = few_small(rng, (600, 600), 1e5, small=12)
    sv = dense.singular_values(a)
    assert sv.route == route, sv.notes
    assert_contract(a, sv.values)
    if route == "gram+lu":
        assert sv.settings["refined"] > 4 and sv.notes == ()  # more than the floor
    else:
        assert "small singular values to refine" in sv.notes[0]


def test_refine_limit_values():
    assert dense.refine_limit(16) == 4  # k/4 caps a small matrix
    assert dense.refine_limit(2048) == 64 and dense.refine_limit(4096) == 64
    assert dense.refine_limit(8192) == 128 and dense.refine_limit(28672) == 448


@pytest.mark.parametrize("bottom,route", [(2e-4, "gram+lu"), (1e-5, "gesdd")])
def test_refined_values_of_a_cluster_at_the_bottom(rng, bottom, route):
    """Singular values closer together than the residuals: no Kato-Temple gap, only the
    linear residual bound (~sqrt(k)·eps·σ_max). It certifies σ_min to 1e-10 at 2e-4,
    not at 1e-5, where gesdd takes over. Either way the result is sorted and true."""
    k = 400
    cluster = np.full(4, bottom) * (1 + 1e-13 * np.arange(4))
    a = with_spectrum(rng, (k, k), np.concatenate([np.linspace(1.0, 0.5, k - 4), cluster]))
    sv = dense.singular_values(a, route="gram")
    assert sv.route == route, sv.notes
    assert_contract(a, sv.values)


def test_refinement_is_deterministic(rng):
    a = few_small(rng, (600, 600), 1e5)
    one, two = dense.singular_values(a), dense.singular_values(a.copy())
    assert one.route == "gram+lu" and np.array_equal(one.values, two.values)


def test_singular_square_matrix_falls_back(rng):
    a = few_small(rng, (600, 600), 1e3, dtype="float64")
    a[:, 17] = 0.0  # an exactly zero column: the LU factor has a zero pivot
    sv = dense.singular_values(a, route="gram")
    assert sv.route == "gesdd" and sv.values[-1] <= 1e-15 * sv.values[0]
    assert "gram route rejected" in sv.notes[0]


def test_refinement_that_does_not_converge_falls_back(rng, monkeypatch):
    monkeypatch.setattr(dense, "REFINE_MAX_STEPS", 1)  # Rayleigh-Ritz starts at step 2
    a = few_small(rng, (600, 600), 1e5)
    sv = dense.singular_values(a)
    assert sv.route == "gesdd" and "did not converge in 1 steps" in sv.notes[0]
    assert_contract(a, sv.values)


def test_refined_values_must_lie_in_their_gram_enclosures(rng, monkeypatch):
    """A Gram eigensolver that is wrong at the bottom (beyond its modelled error) is
    caught by the cross-check, not reported."""
    real = dense._eigvalsh

    def wrong(g):
        lam = real(g)
        lam[0] *= 4.0  # σ_min doubled
        return lam

    monkeypatch.setattr(dense, "_eigvalsh", wrong)
    a = few_small(rng, (600, 600), 1e4)
    sv = dense.singular_values(a)
    assert sv.route == "gesdd" and "leave their Gram enclosures" in sv.notes[0]
    assert_contract(a, sv.values)


def test_refinement_under_extreme_scaling(rng):
    a = few_small(rng, (600, 600), 1e5, dtype="float64") * 1e-250
    sv = dense.singular_values(a, route="gram")
    assert sv.route == "gram+lu"
    np.testing.assert_allclose(sv.values, oracle_svdvals(a), rtol=0,
                               atol=1e-10 * oracle_svdvals(a)[0])


def test_gram_limit_leaves_margin_below_the_contract(rng):
    """At the acceptance limit, the real κ error is well inside 1e-8 (measured here)."""
    k = 128
    kappa = 0.99 * dense.gram_kappa_limit(k)
    worst = 0.0
    for profile in ("geometric", "flat_one_small", "two_clusters"):
        a = with_spectrum(rng, (4 * k, k), spectrum_of(profile, k, kappa))
        sv = dense.singular_values(a, route="gram")
        assert sv.route == "gram"
        ref = oracle_svdvals(a)
        worst = max(worst, abs(sv.values[0] / sv.values[-1] - ref[0] / ref[-1])
                    / (ref[0] / ref[-1]))
    assert worst < 1e-9


def test_auto_prefers_gesdd_for_near_square(rng):
    a = with_spectrum(rng, (64, 64), spectrum_of("geometric", 64, 10.0))
    assert dense.singular_values(a).route == "gesdd"


def test_zero_and_rank_deficient_fall_back(rng):
    z = np.zeros((40, 10))
    sv = dense.singular_values(z, route="gram")
    assert sv.route == "gesdd" and np.all(sv.values == 0)
    u = rng.standard_normal((40, 1))
    r1 = u @ rng.standard_normal((1, 10))
    sv = dense.singular_values(r1, route="gram")
    assert sv.route == "gesdd"
    assert_contract(r1, sv.values)


@pytest.mark.parametrize("shape", [(1, 50), (50, 1), (1, 1)])
def test_vectors_as_matrices(rng, shape):
    a = rng.standard_normal(shape)
    sv = dense.singular_values(a)
    assert sv.values.shape == (1,)
    assert sv.values[0] == pytest.approx(np.linalg.norm(a), rel=1e-15)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_extreme_scales_do_not_overflow_the_gram_route(rng, scale):
    a = with_spectrum(rng, (300, 20), spectrum_of("geometric", 20, 10.0)) * scale
    sv = dense.singular_values(a, route="gram")
    assert sv.route == "gram"
    np.testing.assert_allclose(sv.values, oracle_svdvals(a), rtol=1e-12)


def test_gesvd_fallback_when_gesdd_fails(rng, monkeypatch):
    a = rng.standard_normal((30, 20))

    def boom(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(np.linalg, "svd", boom)
    sv = dense.singular_values(a, route="gesdd")
    assert sv.route == "gesvd" and "gesvd" in sv.notes[0]
    np.testing.assert_allclose(sv.values, np.sort(np.sqrt(np.linalg.eigvalsh(a.T @ a)))[::-1],
                               rtol=1e-10)


def test_eigenvalues_match_independent_computation(rng):
    # A normal matrix with known eigenvalues: Q diag(blocks) Qᵀ (real 2x2 rotation-scalings).
    q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    lam = np.array([0.9 + 0.3j, 0.9 - 0.3j, -2.0, 0.5, 0.1 + 1j, 0.1 - 1j])
    d = np.zeros((6, 6))
    d[0:2, 0:2] = [[0.9, 0.3], [-0.3, 0.9]]
    d[2, 2], d[3, 3] = -2.0, 0.5
    d[4:6, 4:6] = [[0.1, 1.0], [-1.0, 0.1]]
    ev = dense.eigenvalues(q @ d @ q.T)
    assert np.all(np.diff(np.abs(ev.values)) <= 1e-12)
    np.testing.assert_allclose(np.sort_complex(ev.values), np.sort_complex(lam), atol=1e-13)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="a: expected a 2-D"):
        dense.singular_values(np.zeros(3))
    with pytest.raises(ValueError, match="float64"):
        dense.singular_values(np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="route"):
        dense.singular_values(np.eye(3), route="fast")
    with pytest.raises(ValueError, match="square"):
        dense.eigenvalues(np.zeros((3, 4)))


@settings(max_examples=60, deadline=None)
@given(k=st.integers(8, 160), extra=st.integers(0, 40), small=st.integers(0, 12),
       log_kappa=st.floats(1.0, 8.0), spread=st.floats(0.0, 1.0),
       dtype=st.sampled_from(["float64", "bfloat16"]), seed=st.integers(0, 2**31))
def test_gram_route_contract_property(k, extra, small, log_kappa, spread, dtype, seed):
    """Whatever the spectrum (a bulk, a few small values, clusters: spread 0 makes
    the small ones equal), the Gram route, refined or not, meets the contract or falls
    back to gesdd."""
    rng = np.random.default_rng(seed)
    small = min(small, k - 1)
    bottom = 10.0 ** -log_kappa * (1.0 + spread * np.arange(small, 0, -1))
    s = np.sort(np.concatenate([np.linspace(1.0, 0.3, k - small), bottom]))[::-1]
    a = stored_as(with_spectrum(rng, (k + extra, k), s), dtype)
    sv = dense.singular_values(a, route="gram")
    assert sv.route in ("gram", "gram+lu", "gram+qr", "gesdd")
    assert_contract(a, sv.values)
