"""The 2x2 block formulas against dense float64 eigen-computations of the operators."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spectrum_cli.core.eigen import eigenstructure
from spectrum_cli.core.pseudospectra import criss_cross
from spectrum_cli.core.transient import power_norms
from spectrum_cli.core.update_blocks import (
    adam_form, analyze_blocks, sgd_form,
)
from tests.helpers import haar
from tests.optim.oracles import dense_operator


def random_h(rng, n, lo=0.05, hi=120.0):
    q = haar(rng, n, n)
    h = np.sort(rng.uniform(lo, hi, n))
    mat = (q * h) @ q.T
    return h, (mat + mat.T) / 2


FORMS = {
    "momentum": lambda: sgd_form(0.01, 0.9),
    "nesterov": lambda: sgd_form(0.01, 0.9, nesterov=True),
    "dampening": lambda: sgd_form(0.012, 0.8, dampening=0.3),
    "scaled": lambda: sgd_form(0.01, 0.9, coordinates="scaled"),
    "gd": lambda: sgd_form(0.01),
    "adam": lambda: adam_form(1e-3, 0.9, 7),
    "adamw": lambda: adam_form(1e-3, 0.9, 7, decoupled_wd=0.05),
    "adam-reduced": lambda: adam_form(1e-3, 0.9, 7, reduced=True),
}


@pytest.mark.parametrize("name", list(FORMS))
def test_blocks_match_dense_eig(rng, name):
    form = FORMS[name]()
    h, hmat = random_h(rng, 40)
    res = analyze_blocks(form, h, eps=(1e-3,), power_max=150)
    j = dense_operator(form, hmat)
    dense = eigenstructure(j)
    assert res.metrics["spectral_radius"] == pytest.approx(dense.spectral_radius, rel=1e-10)
    lam_blocks = np.sort_complex(res.eigenvalues)
    lam_dense = np.sort_complex(np.linalg.eigvals(j))
    np.testing.assert_allclose(lam_blocks, lam_dense, atol=1e-10)
    assert dense.kappa_V_well_defined
    assert res.metrics["kappa_V"] == pytest.approx(dense.kappa_V, rel=1e-8)
    pn = power_norms(j, 150)
    np.testing.assert_allclose(res.power_norms, pn.norms, rtol=1e-10)
    assert res.metrics["argmax_power"] == pn.argmax_power
    assert res.details["pseudospectral_radius"][0]["value"] == pytest.approx(
        criss_cross(j, 1e-3).value, rel=1e-10)


def test_scalar_momentum_case():
    res = analyze_blocks(sgd_form(0.01, 0.9), np.array([10.0]), power_max=100)
    m = res.metrics
    assert m["spectral_radius"] == pytest.approx(math.sqrt(0.9), rel=1e-14)
    assert m["kappa_V"] == pytest.approx(100 / 3, rel=1e-12)
    assert m["max_power_norm"] == pytest.approx(25.9219825640504, rel=1e-12)
    assert m["argmax_power"] == 4 and m["power_above_one_until"] == 64
    assert res.details["max_power_norm_exact"]
    assert 1 <= m["kreiss_lower_bound"] <= m["max_power_norm"] <= math.e * 2 * m[
        "kreiss_lower_bound"]


def test_scaled_coordinates_change_kappa_not_the_spectrum():
    h = np.array([10.0])
    stored = analyze_blocks(sgd_form(0.01, 0.9), h)
    scaled = analyze_blocks(sgd_form(0.01, 0.9, coordinates="scaled"), h)
    assert stored.metrics["spectral_radius"] == pytest.approx(
        scaled.metrics["spectral_radius"], rel=1e-14)
    assert scaled.metrics["kappa_V"] == pytest.approx(3.0, rel=1e-12)  # operators.md §3
    assert stored.form.coordinates == "(θ, buf)" and scaled.form.coordinates == "(θ, lr·buf)"


def test_degenerate_hessian_blocks_stay_defined_and_dense_eig_is_flagged(rng):
    n, rank = 60, 8
    q = haar(rng, n, n)
    h = np.zeros(n)
    h[:rank] = rng.uniform(1, 50, rank)
    hmat = (q * h) @ q.T
    hmat = (hmat + hmat.T) / 2
    form = sgd_form(0.01, 0.9)
    res = analyze_blocks(form, h)
    assert math.isfinite(res.metrics["kappa_V"]) and res.metrics["kappa_V"] >= 1
    dense = eigenstructure(dense_operator(form, hmat))
    assert not dense.kappa_V_well_defined and dense.kappa_V is None
    assert max(dense.clusters) >= n - rank - 1


def test_exceptional_point_is_infinite_and_named():
    form = sgd_form(0.01, 0.9)
    lo, hi = form.exceptional_points()
    assert form.alpha * lo == pytest.approx((1 - math.sqrt(0.9)) ** 2, rel=1e-12)
    assert form.alpha * hi == pytest.approx((1 + math.sqrt(0.9)) ** 2, rel=1e-12)
    res = analyze_blocks(form, np.array([1.0, lo, 30.0]))
    assert res.metrics["kappa_V"] == math.inf
    assert res.details["kappa_V_block"]["defective_blocks"] == 1


def test_indefinite_hessian_gives_rho_at_least_one_with_the_reason(rng):
    h = np.r_[-0.5, 0.0, rng.uniform(0.1, 10, 10)]
    res = analyze_blocks(sgd_form(0.01, 0.9), h)
    assert res.metrics["spectral_radius"] >= 1.0
    assert res.metrics["kreiss_lower_bound"] == math.inf
    assert "non-convex" in res.details["rho_note"]
    assert res.details["negative_curvature"] == 2


@pytest.mark.parametrize("chunk", [3, 4096])
def test_block_power_norms_by_doubling_equal_the_products_one_by_one(monkeypatch, chunk):
    """B^k by doubling (B^(m+j) = B^j B^m), chunked over the blocks, against B^k formed
    one product at a time and its σ_max by numpy's SVD; from the first power with an
    entry past the overflow bound the norms are inf, the block index carried."""
    from spectrum_cli.core import update_blocks as ub

    monkeypatch.setattr(ub, "POWER_CHUNK", chunk)
    rng = np.random.default_rng(7)
    b = rng.standard_normal((10, 2, 2)) * np.linspace(0.2, 1.2, 10)[:, None, None]
    b[4] = [[0.99, 5.0], [0.0, 0.99]]  # Jordan-like: a transient hump
    k_max = 37
    norms, which = ub.block_power_norms(b, k_max)
    p, expect = b.copy(), []
    for _ in range(k_max):
        s = np.linalg.svd(p, compute_uv=False)[:, 0]
        expect.append((s.max(), int(np.argmax(s))))
        p = np.einsum("nij,njk->nik", b, p)
    np.testing.assert_allclose(norms, [e for e, _ in expect], rtol=1e-13)
    assert list(which) == [i for _, i in expect]

    grows = b.copy()
    grows[9] = [[1e10, 0.0], [0.0, 0.5]]  # 1e10^k passes 1e70 at k = 8
    norms, which = ub.block_power_norms(grows, 12)
    assert np.all(np.isfinite(norms[:7])) and np.all(np.isinf(norms[7:]))
    assert list(which[6:]) == [9] * 6
