"""Non-normal diagnostics against closed forms and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrum_cli.core.eigen import eigenstructure
from spectrum_cli.core.nonnormal import analyze_square
from spectrum_cli.core.pseudospectra import (
    criss_cross, rank_one_iteration, sigma_min, smin_triangular,
)
from spectrum_cli.core.transient import kreiss_lower_bound, power_norms, transient_window
from tests.helpers import haar


def normal_matrix(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Q diag(blocks) Qᵀ with real 2x2 rotation-scaling blocks: a real normal matrix."""
    q = haar(rng, n, n)
    d = np.zeros((n, n))
    lam = []
    for i in range(0, n - 1, 2):
        r, th = rng.uniform(0.1, 1.5), rng.uniform(0, np.pi)
        c, s = r * np.cos(th), r * np.sin(th)
        d[i:i + 2, i:i + 2] = [[c, s], [-s, c]]
        lam += [complex(c, s), complex(c, -s)]
    if n % 2:
        d[-1, -1] = rng.uniform(-1, 1)
        lam.append(complex(d[-1, -1]))
    return q @ d @ q.T, np.array(lam)


def momentum_operator(h=10.0, lr=0.01, mu=0.9) -> np.ndarray:
    """operators.md §4: one parameter, loss (h/2)x², SGD with momentum."""
    return np.array([[1 - lr * h, -lr * mu], [h, mu]])


@pytest.mark.parametrize("n", [2, 5, 8])
@pytest.mark.parametrize("eps", [1e-6, 1e-3, 1e-1, 0.7])
def test_normal_matrices(rng, n, eps):
    a, lam = normal_matrix(rng, n)
    rho = float(np.max(np.abs(lam)))
    assert criss_cross(a, eps).value == pytest.approx(rho + eps, rel=1e-10)
    e = eigenstructure(a)
    assert e.kappa_V == pytest.approx(1.0, rel=1e-10) and e.kappa_V_well_defined
    assert e.henrici <= 1e-13 and e.max_eig_condition == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize("lam,eps", [(0.5, 1e-6), (0.5, 1e-3), (0.5, 0.1), (-2.0, 0.3)])
def test_jordan_block_closed_form(lam, eps):
    """For [[λ, 1], [0, λ]], σ_min(zI - J) depends on w = z - λ only and equals ε at
    |w|² = ε(1 + ε): the ε-pseudospectrum is a disk, ρ_ε = |λ| + sqrt(ε(1 + ε))."""
    j = np.array([[lam, 1.0], [0.0, lam]])
    want = abs(lam) + math.sqrt(eps * (1 + eps))
    assert criss_cross(j, eps).value == pytest.approx(want, rel=1e-10)
    assert rank_one_iteration(j, eps).value <= want * (1 + 1e-10)
    e = eigenstructure(j)
    assert e.kappa_V == math.inf and e.defective and e.clusters == [2]


def test_larger_jordan_and_similar_jordan_are_defective(rng):
    j = np.diag(np.full(4, 0.3)) + np.diag(np.ones(3), 1)
    assert eigenstructure(j).kappa_V == math.inf
    s = rng.standard_normal((3, 3))
    jj = s @ (np.diag([2.0, 2.0, 2.0]) + np.diag([1.0, 1.0], 1)) @ np.linalg.inv(s)
    e = eigenstructure(jj)
    assert e.defective and e.kappa_V == math.inf and e.clusters == [3]


@pytest.mark.parametrize("z", [1.5 + 0.3j, -0.2 + 2j, 0.4 + 0j])
def test_two_by_two_upper_triangular_sigma_min(z):
    a_, b, c = 0.3, 2.0, -0.7
    a = np.array([[a_, b], [0.0, c]])
    f = abs(z - a_) ** 2 + b**2 + abs(z - c) ** 2
    det = abs((z - a_) * (z - c))
    closed = math.sqrt((f - math.sqrt(f * f - 4 * det * det)) / 2)
    assert sigma_min(z, a) == pytest.approx(closed, rel=1e-12)
    assert smin_triangular(a.astype(complex), z, iters=500, rtol=1e-15) == pytest.approx(
        closed, rel=1e-8)
    assert smin_triangular(a.astype(complex), z, iters=2) >= closed * (1 - 1e-12)


def test_criss_cross_point_is_on_the_boundary_and_nothing_is_farther(rng):
    a = rng.standard_normal((12, 12)) / 3
    a[0, 5] += 4  # some non-normality
    eps = 1e-2
    r = criss_cross(a, eps)
    assert abs(r.argmax) == pytest.approx(r.value, rel=1e-12)
    assert sigma_min(r.argmax, a) == pytest.approx(eps, rel=1e-8)
    # An independent polar scan just outside ρ_ε finds no point of the pseudospectrum.
    th = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    ring = (r.value * (1 + 1e-6)) * np.exp(1j * th)
    assert min(sigma_min(z, a) for z in ring) > eps
    assert rank_one_iteration(a, eps).value <= r.value * (1 + 1e-10)


def test_scalar_momentum_case_of_operators_md():
    j = momentum_operator()
    e = eigenstructure(j)
    np.testing.assert_allclose(np.sort_complex(e.eigenvalues), [0.9 - 0.3j, 0.9 + 0.3j],
                               atol=1e-14)
    assert e.spectral_radius == pytest.approx(math.sqrt(0.9), rel=1e-14)  # det = μ
    assert e.kappa_V == pytest.approx(100 / 3, rel=1e-12)  # 33.3 with unit columns
    p = power_norms(j, 100)
    assert p.max_power_norm == pytest.approx(25.9219825640504, rel=1e-12)
    assert p.argmax_power == 4 and p.exact
    assert p.last_above_one == 64 and p.norms[63] > 1 >= p.norms[64:].max()
    # J^k = α_k J - μ α_{k-1} I, α_k = μ^((k-1)/2) sin(kφ)/sin φ (operators.md §4).
    mu, phi = 0.9, math.acos((1 + 0.9 - 0.1) / (2 * math.sqrt(0.9)))
    for k in (1, 4, 29, 64):
        ak = mu ** ((k - 1) / 2) * math.sin(k * phi) / math.sin(phi)
        ak1 = mu ** ((k - 2) / 2) * math.sin((k - 1) * phi) / math.sin(phi)
        closed = np.linalg.norm(ak * j - mu * ak1 * np.eye(2), 2)
        assert p.norms[k - 1] == pytest.approx(closed, rel=1e-10)
    k = kreiss_lower_bound(j)
    # Kreiss matrix theorem: K <= sup_k ||J^k|| <= e n K.
    assert 1.0 <= k.value <= p.max_power_norm <= math.e * 2 * k.value
    assert transient_window(e.kappa_V, e.spectral_radius) == pytest.approx(
        math.log(100 / 3) / -math.log(math.sqrt(0.9)), rel=1e-12)


def test_nearly_repeated_pair_is_flagged(rng):
    q = haar(rng, 3, 3)
    a = q @ np.diag([0.5, 0.5 + 1e-15, 0.1]) @ q.T
    e = eigenstructure(a)
    assert not e.kappa_V_well_defined and e.kappa_V is None and e.clusters == [2]
    assert not e.defective
    assert e.kappa_V_cluster_orthonormal == pytest.approx(1.0, rel=1e-6)
    b = np.eye(4)  # exactly repeated and semisimple
    e = eigenstructure(b)
    assert e.kappa_V is None and e.clusters == [4] and not e.defective


def test_distinct_but_non_normal_pair_stays_defined():
    a = np.array([[1.0, 1.0], [0.0, 1.0 + 1e-6]])
    e = eigenstructure(a)
    assert e.kappa_V_well_defined and e.kappa_V == pytest.approx(2e6, rel=1e-4)


def test_henrici_is_read_from_the_schur_factor():
    a = np.array([[0.5, 3.0], [0.0, -0.25]])
    e = eigenstructure(a)
    assert e.henrici == pytest.approx(3.0, rel=1e-14)
    assert e.henrici_relative == pytest.approx(3.0 / np.linalg.norm(a), rel=1e-14)


def test_unitary_similarity_invariance(rng):
    a = rng.standard_normal((7, 7)) * 0.3
    a[0, 6] = 3.0
    q = haar(rng, 7, 7)
    one, two = analyze_square(a, eps=(1e-2,)), analyze_square(q @ a @ q.T, eps=(1e-2,))
    for key in ("spectral_radius", "kappa_V", "henrici", "max_eig_condition",
                "max_power_norm"):
        assert two.metrics()[key] == pytest.approx(one.metrics()[key], rel=1e-7), key
    assert two.pseudospectral[0].value == pytest.approx(one.pseudospectral[0].value,
                                                        rel=1e-9)
    assert two.kreiss.value == pytest.approx(one.kreiss.value, rel=1e-3)


def test_rho_at_least_one_gives_infinite_kreiss_and_inexact_powers():
    a = np.array([[1.01, 1.0], [0.0, 0.5]])
    k = kreiss_lower_bound(a)
    assert k.value == math.inf
    p = power_norms(a, 50)
    assert not p.exact and p.argmax_power == 50


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(0, 10**6), st.floats(1e-4, 0.5))
def test_properties(n, seed, eps):
    r = np.random.default_rng(seed)
    a = r.standard_normal((n, n)) * r.uniform(0.1, 1.0)
    e = eigenstructure(a)
    lo = criss_cross(a, eps).value
    hi = criss_cross(a, 2 * eps).value
    assert e.spectral_radius + eps * (1 - 1e-9) <= lo <= hi * (1 + 1e-12)  # monotone in ε
    if e.kappa_V is not None and math.isfinite(e.kappa_V):
        assert e.kappa_V >= 1 - 1e-12
        assert lo <= e.spectral_radius + eps * e.kappa_V * (1 + 1e-8)  # Bauer-Fike
    assert 0 <= e.henrici_relative <= 1 + 1e-12
    assert e.max_eig_condition >= 1 - 1e-12


def test_schur_of_entries_far_below_the_others_converges():
    """zgees failed on this matrix (found by hypothesis in test_metrics): 1.0 beside
    entries of 5e-299. The matrix is diagonal up to entries below eps²: ρ = 1 and
    Henrici's departure is zero to within the decomposition's backward error."""
    from spectrum_cli.core.eigen import eigenstructure

    a = np.full((11, 11), 4.91498492e-299)
    a[3, 0] = 3.85207393e-68
    a[4, 4] = 1.0
    out = eigenstructure(a)
    assert out.spectral_radius == pytest.approx(1.0, rel=1e-15)
    assert 0.0 <= out.henrici <= 11 * np.finfo(float).eps


def _by_geev(monkeypatch, a):
    """The eigen-structure as geev gives it (the route used before the Schur one)."""
    import spectrum_cli.core.eigen as E

    with monkeypatch.context() as m:
        m.setattr(E, "schur_eigenvectors", lambda t: None)
        return E.eigenstructure(a)


@pytest.mark.parametrize("kind", ["gauss", "hump", "orthogonal", "companion", "pairs"])
@pytest.mark.parametrize("n", [3, 40, 130])
def test_schur_route_agrees_with_geev(rng, monkeypatch, kind, n):
    """κ(V), the condition numbers, Henrici and the eigenvalues from T's eigenvectors
    equal LAPACK geev's (left and right vectors of A itself) to rounding; T is kept
    for the Kreiss search."""
    g = rng.standard_normal((n, n)) / math.sqrt(n)
    if kind == "gauss":
        a = g
    elif kind == "hump":
        x, y = rng.standard_normal(n), rng.standard_normal(n)
        a = 0.9 * g + 3 * np.outer(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))
    elif kind == "orthogonal":
        a = haar(rng, n, n) + 0.01 * g
    elif kind == "companion":
        a = np.diag(np.ones(n - 1), -1)
        a[0, :] = rng.uniform(-0.3, 0.3, n)
    else:
        a = normal_matrix(rng, n)[0] + 0.05 * g
    new, old = eigenstructure(a), _by_geev(monkeypatch, a)
    assert new.schur is not None
    assert np.allclose(np.sort_complex(new.eigenvalues), np.sort_complex(old.eigenvalues),
                       rtol=0, atol=1e-10 * max(1.0, old.spectral_radius))
    assert new.clusters == old.clusters and new.defective == old.defective
    for key in ("kappa_V", "kappa_V_cluster_orthonormal", "max_eig_condition", "henrici"):
        assert getattr(new, key) == pytest.approx(getattr(old, key), rel=1e-9), key
    # real A: the eigenvalues come in exact conjugate pairs, real ones exactly real
    lam = new.eigenvalues
    assert np.array_equal(np.sort_complex(lam), np.sort_complex(lam.conj()))


def test_schur_route_falls_back_to_geev_where_eigenvectors_overflow(rng):
    """A strictly upper triangular T with large entries: its eigenvectors by plain back
    substitution overflow (all eigenvalues 0, perturbed to tiny), so geev's scaled
    ones are used; the result is flagged defective, as before."""
    a = np.triu(rng.standard_normal((30, 30)), 1) * 10
    e = eigenstructure(a)
    assert e.schur is None  # the geev route
    assert e.defective and e.kappa_V == math.inf and e.clusters == [30]
