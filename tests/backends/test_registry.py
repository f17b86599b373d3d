"""The plugin path: entry points, lazy loading, broken plugins, unknown names, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectrum_cli import plugins
from spectrum_cli.core.analyze import AUTO_RULE, AnalyzeOptions, choose_backend
from spectrum_cli.core.errors import UsageError
from tests.helpers import run_cli, run_json


def test_builtins_are_entry_points():
    assert {"dense", "lanczos", "randomized-svd"} <= set(plugins.names())


def test_unknown_name_lists_installed():
    with pytest.raises(UsageError, match="unknown backend 'nope'; installed: dense, lanczos"):
        plugins.get_backend("nope")


def test_broken_plugins_warn_and_the_rest_still_work(with_plugins):
    with pytest.warns(plugins.BackendWarning) as caught:
        rows = {r.name: r for r in plugins.list_backends()}
    assert {"broken-import", "broken-init"} <= {str(w.message).split("'")[1] for w in caught}
    assert not rows["broken-init"].available and "cannot start" in rows["broken-init"].reason
    assert rows["fake-gram"].available and rows["dense"].available
    with pytest.raises(UsageError, match="failed to load"):
        plugins.get_backend("broken-init")


def test_importing_the_package_loads_no_backend():
    code = ("import sys; import spectrum_cli.cli.app, spectrum_cli.plugins;"
            "print([m for m in sys.modules if m.startswith('spectrum_backends')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_cli_backends_lists_capabilities(with_plugins):
    result = run_cli("backends")
    assert result.exit_code == 0
    for name in ("dense", "lanczos", "randomized-svd", "fake-gram"):
        assert name in result.stdout
    assert "svd:all" in result.stdout and "trace-functions" in result.stdout
    assert "broken" in result.stderr
    doc = json.loads(run_cli("backends", "--json").stdout)
    by = {r["name"]: r for r in doc["backends"]}
    assert by["dense"]["accuracy"] == "exact" and by["lanczos"]["accuracy"] == "bound"
    assert by["randomized-svd"]["devices"].startswith("cpu, cuda")
    assert by["broken-init"]["available"] is False


@pytest.fixture
def small(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file({"w": torch.randn(60, 20, generator=g), "q": torch.randn(24, 24, generator=g)},
              str(tmp_path / "m.safetensors"))
    return tmp_path / "m.safetensors"


@pytest.mark.parametrize("name", ["dense", "lanczos", "randomized-svd"])
def test_backend_option_selects_each(small, name):
    doc, result = run_json(small, "--backend", name, "--square", "all")
    assert result.exit_code == 0, result.stderr
    assert {t["method"]["backend"] for t in doc["tensors"]} == {name}
    assert doc["settings"]["backend"] == name
    dense, _ = run_json(small, "--backend", "dense")
    ref = {t["name"]: t["metrics"]["sigma_max"] for t in dense["tensors"]}
    for t in doc["tensors"]:
        assert t["metrics"]["sigma_max"] == pytest.approx(ref[t["name"]], rel=1e-8)
    if name == "randomized-svd":
        t = doc["tensors"][0]
        assert {"sigma_min", "kappa", "spectral_entropy"} <= set(t["unavailable"])
        assert "kappa" not in t["metrics"]
        assert t["accuracy"]["sigma_max"]["accuracy"] == "bound"
    if name == "lanczos":
        t = doc["tensors"][0]
        assert t["accuracy"]["spectral_entropy"]["accuracy"] == "estimate"
        assert "numerical_rank" in t["unavailable"]
        assert "spectral_radius" in next(x for x in doc["tensors"] if x["name"] == "q")[
            "unavailable"]


def test_plugin_selected_from_the_cli(with_plugins, small):
    doc, result = run_json(small, "--backend", "fake-gram")
    assert result.exit_code == 0, result.stderr
    assert doc["tensors"][0]["method"]["backend"] == "fake-gram"
    assert "kappa" in doc["tensors"][0]["unavailable"]


def test_unknown_backend_on_the_cli(small):
    result = run_cli("analyze", small, "--backend", "magic")
    assert result.exit_code == 2 and "installed: dense" in result.stderr


def test_auto_rule_is_documented_and_recorded(small):
    opts = AnalyzeOptions()
    assert choose_backend((30522, 384), opts) == "dense"
    assert choose_backend((16384, 4096), opts) == "dense"
    assert choose_backend((65536, 4096), opts) == "dense"  # 2^28 entries: Gram route
    assert choose_backend((28672, 8192), opts) == "dense"  # Llama-2-70B's MLP
    assert choose_backend((65537, 4096), opts) == "lanczos"
    assert choose_backend((100, 20000), opts) == "dense"
    assert choose_backend((9000, 9000), opts) == "lanczos"
    assert choose_backend((10, 10), AnalyzeOptions(backend="lanczos")) == "lanczos"
    assert choose_backend((9000, 9000), AnalyzeOptions(device="cuda")) == "randomized-svd"
    assert choose_backend((90, 90), AnalyzeOptions(device="cuda")) == "dense"
    doc, _ = run_json(small)
    assert doc["settings"]["backend"] == "auto" and doc["settings"]["auto_rule"] == AUTO_RULE
    assert all(t["method"]["backend"] == "dense" for t in doc["tensors"])


def test_unchecked_conditions_warn_and_strict_fails(small):
    doc, result = run_json(small, "--backend", "randomized-svd", "--fail-on", "kappa>1")
    assert result.exit_code == 0
    assert len(doc["fail_on"]["unchecked"]) == 2 and "not checked" in result.stderr
    strict = run_cli("analyze", small, "--backend", "randomized-svd", "--fail-on", "kappa>1",
                     "--strict")
    assert strict.exit_code == 2


def test_non_convergence_is_a_warning_and_strict_makes_it_an_error(small, monkeypatch):
    from spectrum_backends.randomized import RandomizedSVDBackend

    real = RandomizedSVDBackend.singular_values

    def impatient(self, op, k=None, which="largest", **kw):
        kw["max_power"] = 0
        kw["tol"] = 1e-16
        return real(self, op, k, which, **kw)

    monkeypatch.setattr(RandomizedSVDBackend, "singular_values", impatient)
    plugins.clear_cache()
    doc, result = run_json(small, "--backend", "randomized-svd")
    assert result.exit_code == 0 and "did not converge" in result.stderr
    assert doc["summary"]["not_converged"] >= 1
    assert any(not t["converged"] for t in doc["tensors"])
    assert run_cli("analyze", small, "--backend", "randomized-svd", "--strict").exit_code == 2
    plugins.clear_cache()


def test_report_records_backend_per_tensor(small, tmp_path):
    report = tmp_path / "r.h5"
    doc, _ = run_json(small, "--backend", "lanczos", "--report", report)
    back = json.loads(run_cli("report", "show", report, "--json").stdout)
    assert back["tensors"] == doc["tensors"]
    table = run_cli("report", "show", report).stdout
    assert "lanczos/golub-kahan-lanczos" in table and "n/a" in table and "~" in table


def test_dtype_float32_is_recorded(small):
    doc, _ = run_json(small, "--dtype", "float32")
    t = doc["tensors"][0]
    assert t["method"]["route"].startswith("torch-svdvals")
    ref, _ = run_json(small)
    assert t["metrics"]["sigma_max"] == pytest.approx(ref["tensors"][0]["metrics"]["sigma_max"],
                                                      rel=1e-5)
    assert np.isfinite(t["metrics"]["kappa"])
