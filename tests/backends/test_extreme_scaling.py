"""Entries near the float64 limits (issue 10, item 9): 1e300, 1e-300 and both at once.

Scaling by 2^k is exact in binary floating point, so the oracle is numpy on the
moderate matrix B with the result multiplied by 2^k: every backend, every dense route,
the square (eigen, non-normal) path and the metrics must agree with it to the
project's float64 standard, and nothing may crash, print or turn into NaN.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from spectrum_backends import dense
from spectrum_backends.dense import DenseBackend
from spectrum_backends.lanczos import LanczosBackend
from spectrum_backends.randomized import RandomizedSVDBackend
from spectrum_cli.core import metrics as M
from spectrum_cli.core.eigen import eigenstructure
from spectrum_cli.core.nonnormal import analyze_square
from spectrum_cli.core.pseudospectra import criss_cross
from spectrum_cli.core.transient import power_norms
from tests.helpers import run_json, spectrum_of, with_spectrum

#: 2^k near 1e300 and 1e-300 (and one near the very top of the range).
EXPONENTS = [997, -997, 1015]


def base(shape=(60, 40), kappa=1e3, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return with_spectrum(rng, shape, spectrum_of("geometric", min(shape), kappa))


def mixed(b: np.ndarray) -> np.ndarray:
    """Rows alternately near 1e300 and 1e-300."""
    a = b.copy()
    a[::2] = np.ldexp(a[::2], 997)
    a[1::2] = np.ldexp(a[1::2], -997)
    return a


@pytest.mark.parametrize("k", EXPONENTS)
@pytest.mark.parametrize("route", ["gram", "gesdd", "auto"])
def test_dense_routes_scale_exactly(k, route):
    b = base((120, 40))
    got = dense.singular_values(np.ldexp(b, k), route=route)
    ref = np.linalg.svd(b, compute_uv=False)
    np.testing.assert_allclose(np.ldexp(got.values, -k), ref, rtol=0, atol=1e-13 * ref[0])
    assert got.route == ("gram" if route in ("gram", "auto") else "gesdd")
    assert math.isfinite(got.error_estimate)


@pytest.mark.parametrize("k", EXPONENTS)
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_lanczos_scales_exactly(k, which):
    b = base()
    ref = np.linalg.svd(b, compute_uv=False)
    sv = LanczosBackend().singular_values(np.ldexp(b, k), k=3, which=which)
    want = ref[:3] if which == "largest" else ref[-3:]
    assert sv.converged
    np.testing.assert_allclose(np.ldexp(sv.values, -k), want, rtol=1e-10)
    assert np.all(np.ldexp(sv.error_bounds, -k) <= 1e-9 * ref[0])


@pytest.mark.parametrize("k", EXPONENTS)
def test_randomized_scales_exactly(k):
    b = base()
    ref = np.linalg.svd(b, compute_uv=False)
    sv = RandomizedSVDBackend().singular_values(np.ldexp(b, k), k=4)
    np.testing.assert_allclose(np.ldexp(sv.values, -k), ref[:4], rtol=1e-10)
    sv32 = RandomizedSVDBackend().singular_values(np.ldexp(b, k), k=2, dtype="float32")
    np.testing.assert_allclose(np.ldexp(sv32.values, -k), ref[:2], rtol=1e-4)


def test_symmetric_and_general_eigenvalues_scale_exactly():
    b = base((30, 30))
    s = b + b.T
    for k in EXPONENTS[:2]:
        ev = DenseBackend().eigenvalues_symmetric(np.ldexp(s, k))
        ref = np.linalg.eigvalsh(s)[::-1]
        np.testing.assert_allclose(np.ldexp(ev.values, -k), ref, rtol=0,
                                   atol=1e-13 * abs(ref).max())
        lan = LanczosBackend().eigenvalues_symmetric(np.ldexp(s, k), k=2)
        np.testing.assert_allclose(np.ldexp(lan.values, -k), ref[:2], rtol=1e-10)
        lam = dense.eigenvalues(np.ldexp(b, k)).values
        want = np.linalg.eigvals(b)
        want = want[np.argsort(-np.abs(want), kind="stable")]
        np.testing.assert_allclose(np.ldexp(lam.real, -k), want.real, atol=1e-12)
        np.testing.assert_allclose(np.ldexp(lam.imag, -k), want.imag, atol=1e-12)


@pytest.mark.parametrize("k", EXPONENTS[:2])
def test_square_path_eigenstructure_and_pseudospectra(k):
    rng = np.random.default_rng(3)
    b = rng.standard_normal((12, 12)) / 6
    b[0, 5] += 2.0
    a = np.ldexp(b, k)
    one, two = eigenstructure(b), eigenstructure(a)
    assert two.spectral_radius == pytest.approx(math.ldexp(one.spectral_radius, k),
                                                rel=1e-13)
    assert two.henrici == pytest.approx(math.ldexp(one.henrici, k), rel=1e-12)
    assert two.kappa_V == pytest.approx(one.kappa_V, rel=1e-9)
    assert two.max_eig_condition == pytest.approx(one.max_eig_condition, rel=1e-9)
    assert two.clusters == one.clusters  # cluster tolerances scale with the matrix
    eps = 1e-2
    r_b, r_a = criss_cross(b, eps), criss_cross(a, math.ldexp(eps, k))
    assert r_a.value == pytest.approx(math.ldexp(r_b.value, k), rel=1e-12)
    assert abs(r_a.argmax) == pytest.approx(r_a.value, rel=1e-12)


def test_power_norms_overflow_to_inf_honestly():
    b = np.array([[0.5, 1.0], [0.0, 0.25]])
    p = power_norms(np.ldexp(b, 997), 10)
    ref = power_norms(b, 10)
    assert p.norms[0] == pytest.approx(math.ldexp(ref.norms[0], 997), rel=1e-14)
    assert np.all(np.isinf(p.norms[1:])) and not np.any(np.isnan(p.norms))
    assert p.max_power_norm == math.inf and "float64 range" in p.notes[0]
    tiny = power_norms(np.ldexp(b, -997), 3)  # A^2 ~ 1e-600: underflows to 0, no crash
    assert tiny.norms[0] == pytest.approx(math.ldexp(ref.norms[0], -997), rel=1e-14)
    assert tiny.norms[1] == 0.0 and tiny.exact
    # Growth past 1e308 from moderate entries: inf from the k it happens, not NaN.
    grow = power_norms(np.array([[3.0, 1.0], [0.0, 2.0]]), 700)
    k = int(np.argmax(np.isinf(grow.norms)))
    assert grow.norms[k - 1] > 1e300 and np.all(np.isinf(grow.norms[k:]))


def test_analyze_square_at_the_limits():
    b = np.array([[0.5, 4.0], [0.0, 0.25]])
    nn = analyze_square(np.ldexp(b, 1015), eps=(1e-3,), eps_relative=True)
    m = nn.metrics()
    assert m["spectral_radius"] == pytest.approx(math.ldexp(0.5, 1015), rel=1e-14)
    assert m["max_power_norm"] == math.inf and m["kreiss_lower_bound"] == math.inf
    assert nn.notes and "inf" in nn.notes[0]
    ref = analyze_square(b, eps=(1e-3,), eps_relative=True)
    assert nn.pseudospectral[0].value == pytest.approx(
        math.ldexp(ref.pseudospectral[0].value, 1015), rel=1e-10)


def test_metrics_from_huge_singular_values_do_not_overflow():
    s = np.ldexp(np.array([4.0, 2.0, 1.0]), 1020)
    m = M.singular_value_metrics(s, (3, 3))
    ref = M.singular_value_metrics(np.array([4.0, 2.0, 1.0]), (3, 3))
    for key in ("kappa", "spectral_entropy", "stable_rank", "spectral_gap",
                "numerical_rank", "effective_rank"):
        assert m[key] == pytest.approx(ref[key], rel=1e-15), key
    e = M.entry_metrics(np.full((4, 4), 1.5e308))
    assert e["frobenius_norm"] == math.inf and e["row_norm_max"] == math.inf


@pytest.mark.parametrize("backend", ["dense", "lanczos", "randomized-svd"])
@pytest.mark.parametrize("kind", ["big", "tiny", "mixed"])
def test_cli_every_backend(tmp_path, backend, kind):
    b = base()
    a = {"big": np.ldexp(b, 997), "tiny": np.ldexp(b, -997), "mixed": mixed(b)}[kind]
    np.save(tmp_path / "w.npy", a)
    doc, result = run_json(tmp_path / "w.npy", "--backend", backend, "--no-progress")
    assert result.exit_code == 0, result.stderr
    (t,) = doc["tensors"]
    m = t["metrics"]
    ref = np.linalg.svd(a if kind == "mixed" else b, compute_uv=False)
    scale = 0 if kind == "mixed" else (997 if kind == "big" else -997)
    assert np.ldexp(m["sigma_max"], -scale) == pytest.approx(ref[0], rel=1e-12)
    if kind != "mixed":  # κ, stable rank: ratios, exact to rounding
        assert m["stable_rank"] == pytest.approx(float(np.sum((ref / ref[0]) ** 2)),
                                                 rel=1e-10)
        if backend != "randomized-svd":
            assert m["kappa"] == pytest.approx(ref[0] / ref[-1], rel=1e-8)
            assert np.ldexp(m["sigma_min"], -scale) == pytest.approx(ref[-1], rel=1e-8)
    if backend == "dense":
        full = dense.singular_values(b)
        p = (full.values / full.values[0]) ** 2
        p /= p.sum()
        if kind != "mixed":
            assert m["spectral_entropy"] == pytest.approx(float(-np.sum(p * np.log(p))),
                                                          rel=1e-12)


@pytest.mark.parametrize("kind", ["big", "tiny", "mixed", "top"])
def test_cli_square_matrices_json_stays_clean(tmp_path, kind):
    """The console script in a subprocess: exit 0, stdout exactly one JSON document
    (no LAPACK text), honest inf for ‖A^k‖ past the float64 range."""
    import json
    import shutil

    rng = np.random.default_rng(1)
    b = rng.standard_normal((30, 30))
    a = {"big": np.ldexp(b, 997), "tiny": np.ldexp(b, -997), "mixed": mixed(b),
         "top": b * 1e307}[kind]
    np.save(tmp_path / "sq.npy", a)
    exe = shutil.which("spectrum", path=str(__import__("pathlib").Path(sys.executable).parent))
    out = subprocess.run([exe, "analyze", str(tmp_path / "sq.npy"), "--json", "--no-progress",
                          "--eps", "1e-3", "--eps-relative"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    m = doc["tensors"][0]["metrics"]
    ref = np.max(np.abs(np.linalg.eigvals(b)))
    if kind in ("big", "tiny"):
        k = 997 if kind == "big" else -997
        assert np.ldexp(m["spectral_radius"], -k) == pytest.approx(ref, rel=1e-12)
    if kind in ("big", "top", "mixed"):
        assert m["max_power_norm"] == "inf" and m["kreiss_lower_bound"] == "inf"
        assert any("float64 range" in n for n in doc["tensors"][0]["notes"])
    assert "DLASCL" not in out.stdout + out.stderr
