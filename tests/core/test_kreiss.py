"""The Kreiss lower bound (issue 10, item 16): closed forms, interior maxima found by a
brute-force oracle, K >= 1 always, and every value certified at a recorded z."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq, minimize_scalar

from spectrum_cli.core.pseudospectra import sigma_min
from spectrum_cli.core.transient import kreiss_lower_bound, numerical_radius_upper
from tests.helpers import haar


def jordan_ratio(lam: float, m: float, r: np.ndarray) -> np.ndarray:
    """(r-1)‖(rI - J)⁻¹‖₂ for J = [[λ, m], [0, λ]], 0 <= λ < 1, on the positive real axis
    (where |z - λ| is smallest for a given |z|): with s = r - λ the resolvent is
    [[1/s, m/s²], [0, 1/s]], of norm (m/s² + sqrt(m²/s⁴ + 4/s²))/2."""
    s = r - lam
    return (r - 1) * (m / s**2 + np.sqrt(m**2 / s**4 + 4 / s**2)) / 2


def jordan_kreiss(lam: float, m: float) -> tuple[float, float]:
    """K(J) and its argmax |z| by a fine 1-D maximization (the 2x2 closed form)."""
    r = 1 + np.logspace(-9, 5, 200001)
    v = jordan_ratio(lam, m, r)
    i = int(np.argmax(v))
    lo, hi = r[max(i - 1, 0)], r[min(i + 1, r.size - 1)]
    res = minimize_scalar(lambda x: -jordan_ratio(lam, m, np.array([x]))[0],
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-14})
    return max(float(-res.fun), float(v[i])), float(res.x)


def certified(a: np.ndarray, k) -> None:
    """The reported value is the evaluated ratio at the recorded z (or the limit 1)."""
    if k.argmax is None:
        assert k.value == 1.0
        return
    z = k.argmax
    assert abs(z) > 1
    assert k.value == pytest.approx((abs(z) - 1) / sigma_min(z, a), rel=1e-12)


@pytest.mark.parametrize("lam,m", [(0.0, 10.0), (0.9, 1.0), (0.99, 1.0), (0.5, 3.0),
                                   (-0.7, 2.0)])
def test_jordan_block_closed_form(lam, m):
    j = np.array([[lam, m], [0.0, lam]])
    want, _ = jordan_kreiss(abs(lam), m)
    k = kreiss_lower_bound(j)
    assert k.value == pytest.approx(want, rel=1e-8)
    assert k.value <= want * (1 + 1e-12)  # a lower bound
    certified(j, k)


@pytest.mark.parametrize("n,rho", [(2, 0.5), (5, 0.95), (9, 0.3), (80, 0.999)])
def test_normal_matrices_have_kreiss_one(rng, n, rho):
    """Normal, ρ < 1: (|z|-1)/dist(z, Λ) <= (|z|-1)/(|z|-ρ) < 1, sup = 1 at infinity.
    Never reported below the trivial bound 1 (the issue saw 0.993; the old search gave
    0.998 on the n = 80 case)."""
    q = haar(rng, n, n)
    lam = rng.uniform(-rho, rho, n)
    lam[0] = rho
    a = q @ np.diag(lam) @ q.T
    k = kreiss_lower_bound(a)
    assert k.value == 1.0 and k.argmax is None
    assert "|z| -> ∞" in k.notes[0]


@pytest.mark.parametrize("target", [1.009, 1.05])
@pytest.mark.parametrize("n", [2, 20, 100])
def test_interior_maximum_is_found(rng, target, n):
    """A hidden nilpotent block [[0, m], [0, 0]] whose ratio peaks at |z| ~ 4-9 with a
    value barely above 1 (the 1.0090 at |z| = 2.08 of the issue), rotated into a
    larger matrix: the bound must find it, as a dense brute-force oracle does."""
    r = 1 + np.logspace(-6, 4, 20001)
    m = brentq(lambda x: jordan_ratio(0.0, x, r).max() - target, 0.01, 10)
    d = np.zeros((n, n))
    d[0, 1] = m
    if n > 2:
        d[2:, 2:] = np.diag(rng.uniform(-0.2, 0.2, n - 2))
    q = haar(rng, n, n)
    a = q @ d @ q.T
    k = kreiss_lower_bound(a)
    # Brute-force oracle on a dense polar grid (the peak is rotationally symmetric).
    radii = 1 + np.logspace(-3, 3, 241)
    thetas = np.linspace(-np.pi, np.pi, 7, endpoint=False)
    oracle = max((rr - 1) / sigma_min(rr * np.exp(1j * t), a) for rr in radii for t in thetas)
    assert oracle > 1.0 + (target - 1) / 2
    assert k.value >= oracle * (1 - 1e-9)
    assert k.value == pytest.approx(target, rel=1e-7)
    certified(a, k)


def test_quasi_static_adam_like_operator(rng):
    """I - c P⁻¹H (similar to a symmetric matrix, non-normal in Euclidean norm) with ρ < 1:
    certified, >= 1 and >= what the oracle grid sees."""
    n = 40
    q = haar(rng, n, n)
    h = q @ np.diag(np.logspace(-3, 1, n)) @ q.T
    p = np.logspace(-2, 0, n)
    rng.shuffle(p)
    kmat = (1 / p)[:, None] * h
    a = np.eye(n) - 1.9 / np.max(np.linalg.eigvals(kmat).real) * kmat
    k = kreiss_lower_bound(a)
    radii = 1 + np.logspace(-6, 2, 60)
    oracle = max((rr - 1) / sigma_min(rr * np.exp(1j * t), a) for rr in radii
                 for t in (0.0, np.pi))
    assert k.value >= max(1.0, oracle) * (1 - 1e-9)
    certified(a, k)


def test_rho_at_least_one_is_infinite():
    assert kreiss_lower_bound(np.array([[1.0, 0.0], [0.0, 0.2]])).value == math.inf


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 7), st.integers(0, 10**6), st.floats(0.05, 0.99))
def test_kreiss_at_least_one_and_certified(n, seed, rho):
    r = np.random.default_rng(seed)
    a = r.standard_normal((n, n))
    lam = np.max(np.abs(np.linalg.eigvals(a)))
    if lam == 0:
        return
    a *= rho / lam
    k = kreiss_lower_bound(a)
    assert k.value >= 1.0
    certified(a, k)
    # Kreiss matrix theorem, lower half: K <= sup_k ‖A^k‖ (k >= 0).
    p, sup = np.eye(n), 1.0
    for _ in range(400):
        p = a @ p
        sup = max(sup, float(np.linalg.norm(p, 2)))
    assert k.value <= sup * (1 + 1e-9)


REFERENCE_ANGLES = 720


def numerical_radius_reference(a: np.ndarray, angles: int = REFERENCE_ANGLES) -> float:
    """w(A) from below: max over a θ grid of λ_max of the Hermitian part of e^{iθ}A. Each
    is a lower bound of w, and the x attaining w gives λ_max(H(θ)) >= w·cos(θ - θ*), so
    the grid's max is at least w·cos(π/angles)."""
    best = -math.inf
    for t in np.linspace(0, 2 * np.pi, angles, endpoint=False):
        b = np.exp(1j * t) * a
        best = max(best, float(np.linalg.eigvalsh((b + b.conj().T) / 2)[-1]))
    return best


@pytest.mark.parametrize("m", [0.3, 1.8, 5.0])
def test_numerical_radius_of_a_jordan_block_closed_form(m):
    """W([[0, m], [0, 0]]) is the disk of radius m/2 (Horn & Johnson, Topics in Matrix
    Analysis, 1991, §1.3): every supporting line is at m/2, so the bound is exactly
    (m/2)/cos(π/8) up to the rounding slack."""
    a = np.array([[0.0, m], [0.0, 0.0]])
    got = numerical_radius_upper(a)
    assert got == pytest.approx(m / 2 / math.cos(math.pi / 8), rel=1e-12)
    assert numerical_radius_upper(a.astype(complex)) == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("n", [3, 17, 60])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_numerical_radius_upper_is_an_upper_bound_within_the_polygon_factor(rng, n, dtype):
    a = rng.standard_normal((n, n)) / math.sqrt(n)
    if dtype is np.complex128:
        a = a + 1j * rng.standard_normal((n, n)) / math.sqrt(n)
    a[0, -1] += 3.0  # strongly non-normal
    w = numerical_radius_reference(a)
    got = numerical_radius_upper(a)
    assert w <= got
    assert got <= w / math.cos(math.pi / REFERENCE_ANGLES) / math.cos(math.pi / 8) * (1 + 1e-9)
    assert max(abs(np.linalg.eigvals(a))) <= got  # ρ <= w


@pytest.mark.parametrize("m", [1.2, 1.8])
def test_kreiss_one_certified_by_the_numerical_range(rng, m):
    """‖A‖ > 1 (no contraction), ρ < 1 and w(A) < cos(π/8): K(A) = 1 with no search, and a
    dense brute-force grid of SVDs never sees a ratio above 1 (a rotated Jordan-type block
    plus a small normal part)."""
    n = 30
    d = np.zeros((n, n))
    d[0, 1] = m
    d[2:, 2:] = np.diag(rng.uniform(-0.3, 0.3, n - 2))
    q = haar(rng, n, n)
    a = q @ d @ q.T
    assert np.linalg.norm(a, 2) > 1
    k = kreiss_lower_bound(a, spectral_radius=float(max(abs(np.linalg.eigvals(a)))))
    assert k.value == 1.0 and k.argmax is None and k.evaluations == 0
    assert "numerical radius" in k.notes[0]
    radii = 1 + np.logspace(-4, 4, 81)
    thetas = np.linspace(-np.pi, np.pi, 12, endpoint=False)
    oracle = max((rr - 1) / sigma_min(rr * np.exp(1j * t), a) for rr in radii for t in thetas)
    assert oracle <= 1.0 + 1e-12


@pytest.mark.parametrize("peak", [-0.93, -0.2, 0.0, 0.37, 0.999])
@pytest.mark.parametrize("shape", ["smooth", "kink", "flat-top"])
def test_brent_max_finds_the_peak_and_never_loses_the_start(peak, shape):
    """The refinement's 1-D search (Brent's localmin on -f): the best point it returns is
    within a few ``tol`` of the true maximizer on [-1, 1] (interior, kinked, or at the
    edge), its value is f there, it never returns less than the start, and it stops
    within ``max_evals`` evaluations."""
    from spectrum_cli.core.transient import _brent_max

    funcs = {"smooth": lambda x: 2.0 - (x - peak) ** 2 + 0.1 * (x - peak) ** 3,
             "kink": lambda x: 1.0 - abs(x - peak),
             "flat-top": lambda x: 1.0 - (x - peak) ** 4}
    f = funcs[shape]
    calls = []

    def counted(x):
        calls.append(x)
        return f(x)

    x0 = 0.5 if peak < 0.25 else -0.5
    tol = 1e-6
    value, arg = _brent_max(counted, -1.0, 1.0, x0, f(x0), tol, max_evals=60)
    assert len(calls) <= 60
    assert value == f(arg) and value >= f(x0)
    assert all(-1.0 <= c <= 1.0 for c in calls)
    assert abs(arg - peak) <= {"smooth": 1e-5, "kink": 1e-5, "flat-top": 0.05}[shape]
    capped, _ = _brent_max(f, -1.0, 1.0, x0, f(x0), tol, max_evals=3)
    assert capped >= f(x0)
    if shape == "smooth" and abs(peak) < 0.5:  # parabolic steps: a handful, not ~30
        calls.clear()
        _brent_max(counted, -1.0, 1.0, x0, f(x0), tol)
        assert len(calls) <= 10
