"""``spectrum esd`` (issue 13): one tensor's ESD fits on the command line, its JSON, its
picture, its refusals; through CliRunner and through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spectrum_cli.core import esd
from spectrum_cli.core.randomization import rand_distance
from spectrum_cli.core.marchenko_pastur import fit_marchenko_pastur
from tests.helpers import oracle_svdvals, run_cli

SCRIPT = Path(sys.executable).parent / "spectrum"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def weights(tmp_path, rng):
    """An .npz with a heavy-tailed matrix, a zero one, a small one, a conv kernel, a
    vector and one with NaN."""
    heavy = rng.standard_normal((200, 120)) * (rng.pareto(1.5, 120) + 1.0)
    arrays = {"heavy": heavy, "zero": np.zeros((30, 20)),
              "small": rng.standard_normal((14, 12)),
              "conv": rng.standard_normal((16, 8, 3, 3)), "vec": np.ones(7),
              "nan": np.full((9, 9), np.nan)}
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    return path, arrays


def test_json_is_the_fits_of_the_exact_spectrum(weights):
    path, arrays = weights
    r = run_cli("esd", path, "--tensor", "heavy", "--json", "--seed", "3")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    a = arrays["heavy"]
    lam = esd.eigenvalues(oracle_svdvals(a))
    fit = esd.fit_power_law(lam)
    pl = doc["power_law"]
    assert doc["tensor"] == "heavy" and doc["matrix_shape"] == [200, 120]
    assert pl["alpha"] == pytest.approx(fit.alpha, rel=1e-9)
    assert pl["xmin"] == pytest.approx(fit.xmin, rel=1e-9)
    assert pl["ks_distance"] == pytest.approx(fit.ks_distance, rel=1e-9)
    assert pl["tail_count"] == fit.tail_count and pl["variant"] == "standard"
    assert [pl["interval"]["low"], pl["interval"]["high"]] == pytest.approx(
        list(fit.interval), rel=1e-9)
    norms = esd.log_norms(lam, fit.alpha)
    assert doc["norms"]["log_alpha_norm"] == pytest.approx(norms.log_alpha_norm, rel=1e-9)
    mp = fit_marchenko_pastur(lam, a.shape)
    assert doc["marchenko_pastur"]["bulk_max"] == pytest.approx(mp.bulk_max, rel=1e-9)
    assert doc["marchenko_pastur"]["num_spikes"] == mp.num_spikes
    assert doc["rand_distance"] == {"value": pytest.approx(rand_distance(a, 3), rel=1e-9),
                                    "seed": 3}
    assert doc["bootstrap"] is None


def test_terminal_view(weights):
    path, arrays = weights
    r = run_cli("esd", path, "--tensor", "heavy")
    assert r.exit_code == 0, r.stderr
    fit = esd.fit_power_law(esd.eigenvalues(oracle_svdvals(arrays["heavy"])))
    lines = r.stdout.splitlines()
    assert lines[0] == "heavy"
    assert any(line.split()[:2] == ["alpha", f"{fit.alpha:.6g}"] for line in lines)
    assert "MP edge" in r.stdout and "rand_distance" in r.stdout


def test_bootstrap_interval(weights):
    path, arrays = weights
    r = run_cli("esd", path, "--tensor", "heavy", "--json", "--bootstrap", "25",
                "--seed", "2", "--level", "0.9")
    assert r.exit_code == 0, r.stderr
    boot = json.loads(r.stdout)["bootstrap"]
    want = esd.bootstrap_alpha(esd.eigenvalues(oracle_svdvals(arrays["heavy"])), 25, seed=2,
                               level=0.9)
    assert boot["n_boot"] == 25 and boot["level"] == 0.9
    assert [boot["low"], boot["high"]] == pytest.approx([want.low, want.high], rel=1e-9)


def test_undefined_and_small_n_are_named(weights):
    path, _ = weights
    r = run_cli("esd", path, "--tensor", "zero", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["power_law"]["alpha"] is None
    assert "no tail to fit" in doc["power_law"]["reason"]
    assert "zero matrix" in doc["marchenko_pastur"]["reason"]
    assert doc["rand_distance"]["value"] is None
    text = run_cli("esd", path, "--tensor", "zero").stdout
    assert "undefined: 0 eigenvalue(s) above 1e-05" in text
    small = json.loads(run_cli("esd", path, "--tensor", "small", "--json").stdout)
    assert small["power_law"]["variant"] == "small-n"
    assert any("small-n" in n for n in small["notes"])


def test_conv_kernel_is_reshaped(weights):
    path, _ = weights
    r = run_cli("esd", path, "--tensor", "conv", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["matrix_shape"] == [16, 72] and "reshaped to 16x72" in doc["notes"][-1]


@pytest.mark.parametrize("args, message", [
    ((), "choose one with --tensor"),
    (("--tensor", "nope"), "no tensor 'nope'"),
    (("--tensor", "vec"), "not a matrix"),
    (("--tensor", "nan"), "NaN or Inf"),
])
def test_bad_selection_is_exit_2(weights, args, message):
    path, _ = weights
    r = run_cli("esd", path, *args)
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_plot_is_written_once_checked(weights, tmp_path):
    path, _ = weights
    png = tmp_path / "esd.png"
    r = run_cli("esd", path, "--tensor", "heavy", "--plot", png)
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 20000
    assert run_cli("esd", path, "--tensor", "heavy", "--plot", png).exit_code == 0  # ours
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    r = run_cli("esd", path, "--tensor", "heavy", "--plot", notes)
    assert r.exit_code == 2 and "refused to overwrite" in r.stderr
    assert notes.read_text() == "not a picture"
    assert run_cli("esd", path, "--tensor", "heavy", "--plot", notes,
                   "--force").exit_code == 0
    assert notes.read_bytes()[:8] == PNG
    r = run_cli("esd", path, "--tensor", "heavy", "--plot", path)
    assert r.exit_code == 2 and "over an input" in r.stderr


def test_plot_without_matplotlib_names_the_extra(weights, tmp_path, monkeypatch):
    path, _ = weights
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    png = tmp_path / "esd.png"
    r = run_cli("esd", path, "--tensor", "heavy", "--plot", png)
    assert r.exit_code == 2 and "spectrum-cli[plot]" in r.stderr
    assert not png.exists() and not list(tmp_path.glob(".esd.png.tmp-*"))


def test_hostile_tensor_names_are_escaped(tmp_path, rng):
    name = "w\x1b]0;pwned\x07\x1b[2J\u202e"
    path = tmp_path / "h.npz"
    np.savez(path, **{name: rng.standard_normal((30, 25))})
    r = run_cli("esd", path)
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout and "\x07" not in r.stdout
    assert "w\\x1b]0;pwned" in r.stdout
    doc = json.loads(run_cli("esd", path, "--json").stdout)
    assert doc["tensor"] == name  # JSON carries the name itself, escaped by json


def test_console_script(tmp_path, rng):
    a = rng.standard_normal((80, 60)) * (rng.pareto(2.0, 60) + 1.0)
    np.save(tmp_path / "m.npy", a)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80"}
    r = subprocess.run([str(SCRIPT), "esd", str(tmp_path / "m.npy"), "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    fit = esd.fit_power_law(esd.eigenvalues(oracle_svdvals(a)))
    assert json.loads(r.stdout)["power_law"]["alpha"] == pytest.approx(fit.alpha, rel=1e-9)
    bad = subprocess.run([str(SCRIPT), "esd", str(tmp_path / "missing.npy")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_esd_histogram_is_a_density_of_what_it_shows(rng):
    from spectrum_cli.report.esd_plot import default_bins, esd_histogram

    lam = np.r_[np.zeros(5), rng.lognormal(0.0, 2.0, 200)]
    lower = float(np.quantile(lam, 0.3))
    edges, density = esd_histogram(lam, 40, lower)
    shown = np.count_nonzero(lam > lower) / lam.size
    assert np.sum(density * np.diff(edges)) == pytest.approx(shown, rel=1e-12)
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))
    assert (default_bins(10), default_bins(384), default_bins(10**6)) == (13, 78, 100)
