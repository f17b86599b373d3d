"""Issue 23, one metric registry: the built-in metrics are entry points of the
``spectrum.metrics`` group like a plugin's; their names, descriptions and report order
come from the registered objects, and adding one is one function plus one entry-point
line (nothing else lists it)."""

from __future__ import annotations

import sys
import tomllib
import types
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import numpy as np
import pytest

from spectrum_cli import plugins
from spectrum_cli.core import esd_estimators as E
from spectrum_cli.core import esd_metrics as EM
from spectrum_cli.core import metrics as M

ROOT = Path(__file__).resolve().parents[2]

#: The contract's names as they were reported before the registry, in their order: a new
#: metric may come anywhere after them, but these keep their relative order.
REPORT_ORDER = (
    "sigma_max", "sigma_min", "kappa", "numerical_rank", "spectral_entropy",
    "spectral_entropy_normalized", "entropy_effective_rank", "stable_rank",
    "effective_rank", "spectral_gap", "frobenius_norm", "row_norm_min", "row_norm_max",
    "row_norm_mean", "col_norm_min", "col_norm_max", "col_norm_mean", "spectral_radius",
    "kappa_V", "kappa_V_well_defined", "kappa_V_cluster_orthonormal", "max_eig_condition",
    "henrici", "henrici_relative", "kreiss_lower_bound", "max_power_norm", "argmax_power",
    "power_above_one_until", "transient_window", "nonfinite_count", "alpha", "alpha_xmin",
    "alpha_ks_distance", "alpha_sigma", "alpha_tail_count", "alpha_ci_low",
    "alpha_ci_high", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm",
    "mp_bulk_max", "mp_num_spikes", "mp_softrank", "mp_sigma", "rand_distance",
    "alpha_hill", "alpha_peak", "alpha_peak_corrected", "alpha_farms",
    "alpha_farms_corrected",
)


def builtin_entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=M.GROUP)
            if ep.value.startswith("spectrum_cli.")}


def load(ep: EntryPoint) -> M.Metric:
    return M.as_metric(ep.name, ep.load())


def test_pyproject_is_what_is_installed():
    """The registry is pyproject.toml's group; a stale install would hide a new line
    (``pip install --no-deps -e .`` refreshes it)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "entry-points"][M.GROUP]
    installed = {name: ep.value for name, ep in builtin_entry_points().items()}
    assert installed == {k: v for k, v in declared.items() if v.startswith("spectrum_cli.")}


def test_every_builtin_entry_point_is_a_metric_with_its_description():
    eps = builtin_entry_points()
    for name, ep in eps.items():
        metric = load(ep)
        assert metric.description, f"{name}: no description (docstring or Metric)"
        assert M.METRICS[name] == metric.description, name
    # ... and METRICS is nothing but them and what analyze_matrix computes itself
    assert set(M.METRICS) == set(eps) | set(M.COMPUTED)
    assert not set(eps) & set(M.COMPUTED)
    assert {m.name for m in M.builtin_metrics()} == set(eps)
    for m in M.BUILTIN:  # the ones computed without a registry are registered too
        assert load(eps[m.name]) == m
    # the views of the metric modules are their registered objects
    for module, view in ((EM, EM.ESD_METRICS), (E, E.ESTIMATOR_METRICS)):
        names = {n for n, ep in eps.items() if ep.module == module.__name__}
        assert list(view) == [m.name for m in module.ALL] and set(view) == names
        assert all(view[m.name] == m.description == M.METRICS[m.name] for m in module.ALL)


def test_report_order():
    names = list(M.METRICS)
    assert [n for n in names if n in REPORT_ORDER] == list(REPORT_ORDER)
    assert names == ([m.name for m in M.BUILTIN] + list(M.COMPUTED) + list(EM.ESD_METRICS)
                     + list(E.ESTIMATOR_METRICS))
    assert list(M.COMPUTED) == [*M.ENTRY_METRICS, "spectral_radius", *M.NONNORMAL_METRICS,
                                "nonfinite_count"]
    # what the reports present by themselves: all but the heavy-tail estimators
    assert list(M.CORE_METRICS) == names[:len(names) - len(E.ESTIMATOR_METRICS)]
    assert [m.name for m in M.builtin_metrics()] == [
        n for n in names if n not in M.COMPUTED]


def test_the_views_are_read_only():
    for view in (M.METRICS, M.CORE_METRICS, M.COMPUTED, EM.ESD_METRICS, E.ESTIMATOR_METRICS):
        with pytest.raises(TypeError):
            view["kappa"] = "changed"  # type: ignore[index]
        assert not hasattr(view, "update")
    assert "kappa" in M.METRICS and "top_two_ratio" not in M.METRICS


@pytest.fixture
def new_builtin(monkeypatch):
    """A built-in metric added as the issue says: one function in a module of the
    package and one entry-point line (here both simulated: nothing is installed)."""
    module = types.ModuleType("spectrum_cli.core._probe_metric")

    def top_two_ratio(s: np.ndarray) -> float | None:
        """sigma_1/sigma_2 (a probe)"""
        return None if s.size < 2 or s[1] == 0.0 else float(s[0] / s[1])

    top_two_ratio.__module__ = module.__name__
    module.top_two_ratio = top_two_ratio
    monkeypatch.setitem(sys.modules, module.__name__, module)
    line = EntryPoint("top_two_ratio", f"{module.__name__}:top_two_ratio", M.GROUP)
    real = entry_points

    def with_line(group=None):
        return list(real(group=group)) + ([line] if group == M.GROUP else [])

    monkeypatch.setattr(M, "entry_points", with_line)
    monkeypatch.setattr(plugins, "entry_points", with_line)
    M.refresh()
    plugins.clear_cache()
    yield "top_two_ratio"
    M.refresh()
    plugins.clear_cache()


def test_a_new_builtin_metric_needs_nothing_else(new_builtin, rng):
    from spectrum_backends.dense import DenseBackend
    from spectrum_cli.cli.summary import _plugin_metric_lines
    from spectrum_cli.core.analyze import AnalyzeOptions, _Planned
    from spectrum_cli.core.measure import analyze_matrix
    from spectrum_cli.core.thresholds import parse_conditions

    name = new_builtin
    assert M.METRICS[name] == "sigma_1/sigma_2 (a probe)"  # its docstring
    assert name not in M.CORE_METRICS  # the summary gives it a line of its own ...
    assert list(M.METRICS).index(name) >= len(M.CORE_METRICS)  # ... after the core ones
    assert parse_conditions([f"{name}>2"])[0].metric == name  # --fail-on knows it
    a = rng.standard_normal((9, 6))
    t = analyze_matrix(_Planned("w", a.shape, "float64", a.shape, "matrix"), a,
                       AnalyzeOptions(), DenseBackend(), plugins.metric_plugins())
    s = np.linalg.svd(a, compute_uv=False)
    assert t.metrics[name] == pytest.approx(s[0] / s[1], rel=1e-12)
    lines = _plugin_metric_lines([{"metrics": dict(t.metrics), "unavailable": {}}])
    assert [str(x).split(":")[0] for x in lines] == ["metric alpha_hill", "metric alpha_peak",
                                                     "metric alpha_peak_corrected",
                                                     f"metric {name}"]
