"""WeightWatcher's columns as registered metrics (issue 13): the metric protocol, the
per-matrix pipeline with a full-spectrum backend and with a backend of extremes, the
entry-point registry, and the reasons of undefined values."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from types import SimpleNamespace

import numpy as np
import pytest

from spectrum_cli import plugins
from spectrum_cli.core import esd
from spectrum_cli.core.randomization import rand_distance
from spectrum_cli.core import esd_metrics as EM
from spectrum_cli.core import metrics as M
from spectrum_cli.core.analyze import AnalyzeOptions, Planned
from spectrum_cli.core.marchenko_pastur import fit_marchenko_pastur
from tests.helpers import oracle_svdvals


def registered():
    return M.BUILTIN + tuple(M.as_metric(m.name, m) for m in EM.ALL)


def measure(a, backend="dense", randomize=True):
    from spectrum_cli.core.measure import analyze_matrix

    p = Planned("w", a.shape, "float64", a.shape, "matrix", "w")
    return analyze_matrix(p, a, AnalyzeOptions(square="none", randomize=randomize),
                          plugins.get_backend(backend), registered())


def test_rand_distance_only_under_randomize(rng):
    t = measure(heavy_tailed(rng, 60, 40), randomize=False)
    assert "rand_distance" not in t.metrics and "rand_distance" not in t.unavailable
    assert t.metrics["alpha"] is not None


def test_absolute_metrics_of_a_matrix_with_huge_entries_are_its_own(rng):
    """Entries near the float64 limit are analysed as 2^-e·A; the ESD metrics must still
    describe A: log norms shift by 2·e·log10(2), alpha and D do not change."""
    a = heavy_tailed(rng, 80, 50)
    e = 400  # past 2^200: measured as 2^-e·A; λ = σ² still fits in float64
    big = measure(np.ldexp(a, e), randomize=False).metrics
    ref = measure(a, randomize=False).metrics
    shift = 2 * e * np.log10(2.0)
    assert big["log_spectral_norm"] == pytest.approx(ref["log_spectral_norm"] + shift,
                                                     rel=1e-12)
    assert big["log_norm"] == pytest.approx(ref["log_norm"] + shift, rel=1e-12)
    assert big["alpha_xmin"] == pytest.approx(ref["alpha_xmin"] * 4.0 ** e, rel=1e-9)
    assert big["alpha"] == pytest.approx(ref["alpha"], rel=1e-9)


def test_an_undefined_value_says_why_in_the_notes():
    t = measure(np.eye(5) * np.arange(1.0, 6.0), randomize=False)
    assert t.metrics["alpha"] is None
    assert any(n.startswith("alpha undefined:") and "fewer than 8" in n for n in t.notes)


def heavy_tailed(rng, m=300, n=160):
    """A matrix whose ESD has a power-law tail: Gaussian times heavy-tailed column
    scales."""
    return rng.standard_normal((m, n)) * (rng.pareto(1.5, n) + 1.0)


def test_every_column_is_a_metric():
    assert [m.name for m in EM.ALL] == list(EM.ESD_METRICS)
    for m in EM.ALL:
        metric = M.as_metric(m.name, m)
        assert metric.needs == ("matrix" if m.name == "rand_distance" else "singular_values")
        assert metric.context and metric.description == EM.ESD_METRICS[m.name]


def test_pipeline_values_are_the_fits_of_the_exact_spectrum(rng):
    a = heavy_tailed(rng)
    t = measure(a)
    lam = esd.eigenvalues(oracle_svdvals(a))
    fit = esd.fit_power_law(lam)
    norms = esd.log_norms(lam, fit.alpha)
    mp = fit_marchenko_pastur(lam, a.shape)
    want = {"alpha": fit.alpha, "alpha_xmin": fit.xmin, "alpha_ks_distance": fit.ks_distance,
            "alpha_sigma": fit.sigma, "alpha_ci_low": fit.interval[0],
            "alpha_ci_high": fit.interval[1], "alpha_weighted": norms.alpha_weighted,
            "log_norm": norms.log_norm, "log_spectral_norm": norms.log_spectral_norm,
            "log_alpha_norm": norms.log_alpha_norm, "mp_bulk_max": mp.bulk_max,
            "mp_softrank": mp.softrank, "mp_sigma": mp.sigma}
    for name, value in want.items():
        assert t.metrics[name] == pytest.approx(value, rel=1e-9), name
    assert t.metrics["alpha_tail_count"] == fit.tail_count
    assert isinstance(t.metrics["alpha_tail_count"], int)
    assert t.metrics["mp_num_spikes"] == mp.num_spikes
    assert t.metrics["rand_distance"] == pytest.approx(rand_distance(a, 0), rel=1e-9)
    assert fit.alpha is not None and not t.unavailable


def test_a_backend_of_extremes_lists_them_as_unavailable(rng):
    a = heavy_tailed(rng, 60, 40)
    t = measure(a, "lanczos")
    for name in EM.ESD_METRICS:
        if name == "rand_distance":
            assert t.metrics[name] is not None
        else:
            assert name not in t.metrics and "full spectrum" in t.unavailable[name]


def test_undefined_values_are_none_and_explained():
    z = np.zeros((12, 10))
    t = measure(z)
    s = np.zeros(10)
    ctx = M.SpectrumContext((12, 10))
    for m in EM.ALL:
        assert t.metrics[m.name] is None, m.name
        values = z if m.needs == "matrix" else s
        assert m.explain(values, ctx), m.name
    small = measure(np.eye(5) * np.arange(1.0, 6.0))  # 5 eigenvalues: fewer than 8
    assert small.metrics["alpha"] is None and small.metrics["log_norm"] is not None
    assert "fewer than 8" in EM.alpha.explain(np.arange(5.0, 0.0, -1.0), ctx)
    assert EM.log_norm.explain(np.arange(5.0, 0.0, -1.0), ctx) is None


def test_rand_distance_uses_what_the_context_carries(rng):
    a = rng.standard_normal((40, 30))
    s = oracle_svdvals(a)
    ctx = SimpleNamespace(shape=a.shape, singular_values=s, seed=7)
    got = EM.rand_distance.compute(a, ctx)
    assert got == pytest.approx(rand_distance(a, 7, esd.eigenvalues(s)), rel=1e-12)
    assert EM.rand_distance.compute(a, M.SpectrumContext(a.shape)) == pytest.approx(
        rand_distance(a, EM.DEFAULT_SEED), rel=1e-12)


def test_rand_distance_refuses_beyond_the_dense_limits(rng, monkeypatch):
    from spectrum_cli.core import measure as core_measure

    monkeypatch.setattr(core_measure, "AUTO_DENSE_MAX_ENTRIES", 100)
    a = rng.standard_normal((20, 10))
    with pytest.raises(EM.MetricUnavailable, match="dense limits"):
        EM.rand_distance.compute(a, M.SpectrumContext(a.shape))
    t = measure(a)
    assert "rand_distance" not in t.metrics and "dense limits" in t.unavailable[
        "rand_distance"]


@pytest.fixture
def esd_entry_points(monkeypatch):
    """The lines pyproject.toml gets, as entry points (nothing installed)."""
    extra = [EntryPoint(m.name, f"spectrum_cli.core.esd_metrics:{m.name}", "spectrum.metrics")
             for m in EM.ALL]
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group=None: list(real(group=group)) + (
        extra if group == "spectrum.metrics" else []))
    plugins.clear_cache()
    yield
    plugins.clear_cache()


def test_registered_through_entry_points(esd_entry_points, rng, tmp_path):
    from spectrum_cli import api

    assert set(EM.ESD_METRICS) <= set(plugins.metrics.names())
    a = heavy_tailed(rng, 120, 80)
    t = api.analyze_matrix(a, square="none")
    fit = esd.fit_power_law(esd.eigenvalues(oracle_svdvals(a)))
    assert t.metrics["alpha"] == pytest.approx(fit.alpha, rel=1e-9)
    assert set(EM.ESD_METRICS) - {"rand_distance"} <= set(t.metrics)  # opt-in
    assert "rand_distance" in api.analyze_matrix(a, square="none", randomize=True).metrics
    # --fail-on knows the names, and a condition on alpha can fire
    np.save(tmp_path / "w.npy", a)
    fired = api.analyze(tmp_path / "w.npy", fail_on=[f"alpha>{fit.alpha * 0.999}"])
    quiet = api.analyze(tmp_path / "w.npy", fail_on=[f"alpha>{fit.alpha * 1.001}"])
    assert fired.exit_code == 1 and quiet.exit_code == 0
    assert fired.document["tensors"][0]["metrics"]["alpha_tail_count"] == fit.tail_count
