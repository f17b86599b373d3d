"""The certified power curve (issue 24): the walk's intervals against the dense
computation (an SVD of every power, kept as the reference), closed forms, the early-stop
theorem, the shared Schur factor and the Neumann pruning of the Kreiss search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrum_cli.core.eigen import complex_schur, eigenstructure, spectral_radius_lower
from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.nonnormal import analyze_square
from spectrum_cli.core.pseudospectra import criss_cross, pseudospectral_radius, sigma_min
from spectrum_cli.core.transient import (
    FULL_CURVE_MAX_N, kreiss_lower_bound, neumann_bound, power_norms,
)
from tests.helpers import haar


def dense_curve(a: np.ndarray, k_max: int) -> np.ndarray:
    """Independent reference: ‖A^k‖₂ by numpy's SVD of every power (no scaling)."""
    p, out = np.eye(a.shape[0]), np.empty(k_max)
    for k in range(k_max):
        p = a @ p
        out[k] = np.linalg.norm(p, 2)
    return out


def check_against_dense(a: np.ndarray, k_max: int = 200, rho_lower: float = 0.0) -> None:
    p = power_norms(a, k_max, method="walk", rho_lower=rho_lower)
    ref = dense_curve(a, k_max)
    rtol = 1e-10
    assert np.all(p.lower <= ref * (1 + rtol)), "a lower bound above the true norm"
    assert np.all(ref <= p.upper * (1 + rtol)), "an upper bound below the true norm"
    ex = p.exact_points
    np.testing.assert_allclose(p.norms[ex], ref[ex], rtol=rtol)
    assert np.all(np.isnan(p.norms) | (p.norms <= ref * (1 + rtol)))
    i = int(np.argmax(ref))
    if p.max_kind == "exact":
        assert p.max_power_norm == pytest.approx(ref[i], rel=rtol)
        assert ref[p.argmax_power - 1] == pytest.approx(ref[i], rel=rtol)
        assert p.max_upper == p.max_power_norm
    else:
        # A lower bound of the max, always an exact norm at its k, and an upper bound.
        assert p.max_power_norm == pytest.approx(ref[p.argmax_power - 1], rel=rtol)
        assert p.max_power_norm <= ref[i] * (1 + rtol) <= p.max_upper * (1 + 2 * rtol)
        assert not p.exact
    if p.growth_rate is not None:  # reported only for a curve above 1 at k_max
        assert ref[-1] > 1
        rho = np.max(np.abs(np.linalg.eigvals(a)))
        assert p.growth_rate >= rho * (1 - 1e-9)
    above = np.nonzero(ref > 1 + 1e-9)[0]
    last = int(above[-1]) + 1 if above.size else 0
    if p.above_one_kind == "exact":
        assert abs(p.last_above_one - last) <= 0 or ref[max(p.last_above_one, last) - 1] == \
            pytest.approx(1.0, rel=1e-9)
    else:
        assert p.last_above_one <= last <= p.last_above_one_upper
    # exact: the max is the sup over every k (some ‖A^m‖ < 1 was certified).
    if p.exact:
        assert np.any(ref < 1)
        assert np.max(dense_curve(a, 2 * k_max)) <= p.max_power_norm * (1 + rtol)


def random_with_radius(rng, n: int, rho: float, hump: float = 0.0) -> np.ndarray:
    g = rng.standard_normal((n, n))
    g *= rho / np.max(np.abs(np.linalg.eigvals(g)))
    if hump:
        x, y = rng.standard_normal(n), rng.standard_normal(n)
        g = g + hump * np.outer(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))
    return g


@pytest.mark.parametrize("rho,hump", [(0.3, 0.0), (0.6, 0.0), (0.9, 0.0), (0.8, 3.0),
                                      (0.95, 2.0), (1.02, 0.0), (1.2, 1.0)])
def test_walk_against_the_dense_curve(rng, rho, hump):
    check_against_dense(random_with_radius(rng, 48, rho, hump))


def test_small_matrices_get_every_power_exactly(rng):
    a = random_with_radius(rng, 40, 0.9, 2.0)
    assert 40 <= FULL_CURVE_MAX_N
    p = power_norms(a, 100)
    assert p.exact_points.all() and p.svds == 100
    np.testing.assert_allclose(p.norms, dense_curve(a, 100), rtol=1e-12)


def test_normal_matrix_closed_form(rng):
    """Normal A = Q diag Qᵀ: ‖A^k‖ = ρ^k; with ρ < 1 the sup is ‖A‖ = ρ at k = 1."""
    n = 64
    q = haar(rng, n, n)
    lam = rng.uniform(-0.7, 0.7, n)
    lam[3] = 0.9
    a = q @ np.diag(lam) @ q.T
    p = power_norms(a, method="walk")
    assert p.max_power_norm == pytest.approx(0.9, rel=1e-12)
    assert p.argmax_power == 1 and p.exact and p.last_above_one == 0
    assert p.svds <= 2  # certified by bounds, not by 200 SVDs
    assert np.all(p.upper[4:] <= 0.9 ** np.arange(5, 201) * (1 + 1e-9) + 1e-300) or \
        np.all(p.upper <= 0.9 * (1 + 1e-12))


def test_shift_matrix_is_nilpotent():
    """The n x n shift: ‖N^k‖ = 1 for k < n, 0 from k = n on."""
    n = 40
    p = power_norms(np.diag(np.ones(n - 1), 1), 100, method="walk")
    np.testing.assert_array_equal(p.norms[n - 1:], 0.0)
    assert p.max_power_norm == pytest.approx(1.0, rel=1e-12) and p.argmax_power == 1
    assert p.exact and p.last_above_one == 0


def test_jordan_hump_is_found_exactly():
    """J = 0.6(I + N) (n = 40): the transient peaks then decays below 1 by k = 200
    (‖J^200‖ <= Σ_{j<40} C(200, j) 0.6^200 < 1e-3); the walk must certify the peak and
    the last k above 1 like the dense curve. (0.9I + 0.35N would still grow at 200.)"""
    j = 0.6 * (np.eye(40) + np.diag(np.ones(39), 1))
    check_against_dense(j, 200)
    p = power_norms(j, 200, method="walk")
    ref = dense_curve(j, 200)
    assert ref[-1] < 1 and p.growth_rate is None
    # The walk's work budget may end it before the curve falls below 1 (then the max is
    # a lower bound); either way the reported maximum is an exact norm at its k.
    assert p.max_power_norm == pytest.approx(ref[p.argmax_power - 1], rel=1e-10)


def test_growing_curve_is_reported_by_its_rate(rng):
    a = random_with_radius(rng, 64, 1.1)
    p = power_norms(a, method="walk")
    assert p.max_kind == "lower_bound" and not p.exact
    assert p.svds < 10 and p.evaluations < 40
    assert p.last_above_one == 200 and p.above_one_kind == "exact"
    assert any("growth rate" in n for n in p.notes)
    check_against_dense(a)


def certified_rho(a: np.ndarray) -> float:
    return spectral_radius_lower(eigenstructure(a), a)


@pytest.mark.parametrize("rho,hump", [(1.0002, 0.0), (1.02, 1.0), (1.05, 0.0), (1.2, 1.0)])
def test_certified_growth_skips_the_walk(rng, rho, hump):
    """ρ(A) > 1 certified by the eigen-analysis: ‖A^k‖ >= ρ^k > 1 for every k, so the
    curve needs only the powers 2^i and k_max: the bounds still enclose the dense
    curve, the last k above 1 is k_max exactly, the growth rate is ‖A^200‖^(1/200)."""
    a = random_with_radius(rng, 48, rho, hump)
    true = float(np.max(np.abs(np.linalg.eigvals(a))))
    assert true > 1.0001  # the case is what it says
    lower = certified_rho(a)
    assert 1.0 < lower <= true and lower == pytest.approx(true, rel=1e-9)
    check_against_dense(a, rho_lower=lower)
    p = power_norms(a, method="walk", rho_lower=lower)
    ref = dense_curve(a, 200)
    assert p.evaluations == 9 and p.svds <= 2  # k = 1, 2, 4, ..., 128, 200
    assert p.last_above_one == 200 and p.above_one_kind == "exact"
    assert p.growth_rate == pytest.approx(ref[-1] ** (1 / 200), rel=1e-12)
    assert any("ρ(A) >=" in n for n in p.notes)
    assert np.isnan(p.norms[2])  # k = 3 not evaluated
    # Below 1 the walk runs as before (k = 1, 2, 3, ...).
    assert not np.isnan(power_norms(a, method="walk", rho_lower=0.999).norms[2])


def test_spectral_radius_lower_bound(rng):
    """Known eigenvalues (A = S·diag(λ)·S⁻¹): the bound is below ρ and within the
    Gershgorin radius n·c·δ of it; exact scaling by 2^±600 scales it exactly; a
    defective spectrum certifies nothing."""
    n = 30
    s = rng.standard_normal((n, n)) + 3 * np.eye(n)
    lam = rng.uniform(-1.0, 1.0, n)
    lam[7] = -1.3
    a = s @ np.diag(lam) @ np.linalg.inv(s)
    lower = certified_rho(a)
    assert 1.3 * (1 - 1e-6) <= lower <= 1.3 * (1 + 1e-13)
    for e in (-600, 600):  # ‖2^-600·A‖_F² underflows: the bound must not lose δ
        assert certified_rho(np.ldexp(a, e)) == pytest.approx(np.ldexp(lower, e), rel=1e-12)
    jordan = 1.1 * np.eye(n) + np.diag(np.ones(n - 1), 1)
    assert certified_rho(jordan) == 0.0


def test_an_ill_conditioned_eigenvalue_just_above_one_is_not_certified():
    """|λ̂| = 1 + 1e-12 with condition number ~2e6: the rounding of the factorization
    could move it by far more than 1e-12, so ρ > 1 must not be claimed; the same shape
    with a clear margin is certified, and tightly."""
    a = np.array([[1.0 + 1e-12, 1e6], [0.0, 0.5]])
    assert max(abs(np.linalg.eigvals(a))) > 1.0
    assert certified_rho(a) < 1.0
    b = np.array([[1.01, 1.0], [0.0, 0.5]])
    assert 1.0 < certified_rho(b) <= 1.01 and certified_rho(b) == pytest.approx(1.01, rel=1e-12)


def test_a_cluster_is_one_group_not_a_failure():
    """Two eigenvalues 1e-13 apart (their discs overlap) still certify ρ > 1: the group's
    smallest |λ̂| - r, not nothing."""
    a = np.diag([1.2, 1.2 + 1e-13, 0.3, -0.5])
    a[0, 2] = a[1, 3] = 0.7
    lower = certified_rho(a)
    assert 1.2 * (1 - 1e-9) <= lower <= 1.2 + 1e-13


def test_scaled_matrix_beyond_float64_range(rng):
    """2^600·A: the walk works on the exactly scaled matrix; the norms are inf beyond the
    range (with a note), never NaN or a crash."""
    a = random_with_radius(rng, 40, 0.9, 1.0)
    big = np.ldexp(a, 600)
    p = power_norms(big, 5, method="walk")
    np.testing.assert_array_equal(np.isinf(p.norms[1:]), True)
    true = np.ldexp(np.linalg.norm(a, 2), 600)
    assert p.lower[0] <= true * (1 + 1e-10) and true <= p.upper[0] * (1 + 1e-10)
    assert not np.any(np.isnan(p.norms))
    assert any("float64 range" in n for n in p.notes)


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 44), st.integers(0, 10**6), st.floats(0.2, 1.1),
       st.floats(0.0, 4.0))
def test_bounds_always_enclose(n, seed, rho, hump):
    check_against_dense(random_with_radius(np.random.default_rng(seed), n, rho, hump), 120)


def test_complex_schur_real_path_matches_zgees(rng):
    for n in (2, 3, 9, 50):
        a = rng.standard_normal((n, n))
        t = complex_schur(a)
        tz = sla.schur(a.astype(complex), output="complex")[0]
        assert np.all(np.tril(t, -1) == 0)
        d, dz = np.diag(t), np.diag(tz)
        gap = np.abs(d[:, None] - dz[None, :]).min(axis=1)  # each eigenvalue in the other set
        assert gap.max() <= 1e-12 * np.linalg.norm(a)
        assert np.linalg.norm(np.triu(t, 1)) == pytest.approx(
            np.linalg.norm(np.triu(tz, 1)), rel=1e-10)
        assert np.linalg.norm(t) == pytest.approx(np.linalg.norm(a), rel=1e-13)


def test_kappa_v_by_the_real_svd_matches_the_complex_one(rng):
    import spectrum_cli.core.eigen as E

    for n in (2, 7, 40):
        a = rng.standard_normal((n, n))
        lam, v = sla.eig(a)
        v = v / np.linalg.norm(v, axis=0)
        assert E._cond2_eigenvectors(v, lam) == pytest.approx(E._cond2(v), rel=1e-10)


def test_shared_schur_gives_the_same_kreiss_bound(rng):
    a = random_with_radius(rng, 60, 0.9, 1.5)
    e = eigenstructure(a)
    one = kreiss_lower_bound(a)
    two = kreiss_lower_bound(a, schur=complex_schur(a), spectral_radius=e.spectral_radius,
                             powers=power_norms(a))
    assert two.value == pytest.approx(one.value, rel=1e-12)
    z = two.argmax
    assert two.value == pytest.approx((abs(z) - 1) / sigma_min(z, a), rel=1e-10)


def test_neumann_bound_bounds_the_resolvent_ratio(rng):
    a = random_with_radius(rng, 40, 0.7, 2.0)
    p = power_norms(a, method="walk")
    assert p.exact
    for r in (1.0 + 1e-6, 1.01, 1.3, 2.0, 10.0, 1e3):
        g = float(neumann_bound(p, np.array([r]))[0])
        for th in np.linspace(0, 2 * np.pi, 9):
            z = r * np.exp(1j * th)
            assert (r - 1) / sigma_min(z, a) <= g * (1 + 1e-10)


def test_pruned_kreiss_search_agrees_with_the_full_one(rng):
    """The pruned search (analyze_square: shared Schur, ‖A‖ bound, Neumann pruning) is
    still a certified lower bound, and finds the interior peak the full grid finds."""
    n = 50
    d = np.zeros((n, n))
    d[0, 1] = 3.0  # a hidden nilpotent block, numerical radius 1.5: K > 1
    d[2:, 2:] = np.diag(rng.uniform(-0.2, 0.2, n - 2))
    q = haar(rng, n, n)
    a = q @ d @ q.T
    full = kreiss_lower_bound(a)
    fast = analyze_square(a).kreiss
    assert full.value > 1.05
    assert fast.value == pytest.approx(full.value, rel=1e-6)
    z = fast.argmax
    assert fast.value == pytest.approx((abs(z) - 1) / sigma_min(z, a), rel=1e-10)


def test_nan_matrix_pseudospectral_radius_is_a_usage_error():
    a = np.eye(3)
    a[1, 2] = np.nan
    with pytest.raises(UsageError, match="non-finite"):
        pseudospectral_radius(a, 1e-2)
    with pytest.raises(ValueError):
        criss_cross(np.full((2, 2), np.inf), 1e-2)


def test_nan_matrix_through_the_api_is_a_usage_error():
    import spectrum_cli

    with pytest.raises(UsageError):
        spectrum_cli.pseudospectral_radius(np.full((4, 4), np.nan), 0.1)


def test_criss_cross_with_given_eigenvalues_is_unchanged(rng):
    a = random_with_radius(rng, 12, 0.8, 2.0)
    lam = np.linalg.eigvals(a)
    assert criss_cross(a, 1e-2, eigenvalues=lam).value == pytest.approx(
        criss_cross(a, 1e-2).value, rel=1e-12)
    assert math.isfinite(criss_cross(a, 1e-2).value)


def test_kreiss_shortcuts_need_no_factorization(monkeypatch):
    """ρ >= 1 from the caller's eigenvalues: inf; ‖A‖ <= 1 certified by the power curve:
    K = 1 exactly; neither computes a Schur factor."""
    import spectrum_cli.core.transient as T

    def fail(_):
        raise AssertionError("no Schur factor needed")

    monkeypatch.setattr(T, "complex_schur", fail)
    a = np.array([[1.01, 1.0], [0.0, 0.5]])
    assert kreiss_lower_bound(a, spectral_radius=1.01).value == math.inf
    b = np.array([[0.5, 0.3], [0.0, 0.2]])
    k = kreiss_lower_bound(b, spectral_radius=0.5, norm_upper=float(np.linalg.norm(b, 2)))
    assert k.value == 1.0 and k.argmax is None


def test_henrici_from_the_difference_matches_the_schur_factor(rng):
    """Henrici's departure: ‖A‖_F² - Σ|λ|² where it does not cancel, the Schur factor
    where it would (nearly normal); both agree with zgees' strictly upper part."""
    for a in (random_with_radius(rng, 30, 0.9, 2.0),  # far from normal: the difference
              haar(rng, 30, 30) * 0.9 + 1e-3 * rng.standard_normal((30, 30))):  # nearly
        e = eigenstructure(a)
        tz = sla.schur(a.astype(complex), output="complex")[0]
        assert e.henrici == pytest.approx(np.linalg.norm(np.triu(tz, 1)), rel=1e-10)
