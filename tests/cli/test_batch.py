"""spectrum batch: discovery, ordering, scorecard, broken files, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectrum_cli import trust
from spectrum_cli.io.layout import discover
from spectrum_cli.core.trajectory import SpikeRule, detect_spikes, roc_auc, score
from tests.helpers import run_cli

SAMPLE = Path(__file__).resolve().parents[2] / "sample_checkpoints" / "sgd-momentum"


#: 25 checkpoints of the sample SGD run around its first spike (step 155), and six of
#: them (the spike's onset and window) for tests that must compute without a cache: the
#: warm run's cache serves either, its keys being the checkpoints' content.
STEPS = range(105, 230, 5)
FEW = range(140, 170, 5)


def make_run(d: Path, steps: range = STEPS) -> Path:
    """The checkpoints of the sample SGD run at ``steps``, with its trusted config."""
    d.mkdir()
    for step in steps:
        shutil.copy(SAMPLE / f"step-{step:05d}.pt", d)
    shutil.copy(SAMPLE / "spectrum.toml", d)
    trust.trust(d / "spectrum.toml")  # the user's consent to the code it names
    return d


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run")


@pytest.fixture(scope="module")
def warm(tmp_path_factory, trust_home):
    """The run analysed once, from nothing: (its folder, its document, its cache). Cache
    keys are the checkpoints' content and the settings, not their paths, so a copy of
    this cache serves every copy of the run: tests whose point is not the computation
    read it instead of computing the 25 checkpoints again."""
    base = tmp_path_factory.mktemp("warm")
    mp = pytest.MonkeyPatch()  # what the autouse isolation does for a test
    for key in list(os.environ):
        if key.startswith("SPECTRUM_"):
            mp.delenv(key)
    mp.setenv("XDG_DATA_HOME", str(trust_home))
    mp.chdir(base)
    try:
        d = make_run(base / "run")
        doc, result = batch_json(d, "--cache-dir", base / "cache")
        assert result.exit_code == 0, result.stderr
    finally:
        mp.undo()
    return d, doc, base / "cache"


def warm_cache(warm, tmp_path) -> Path:
    """A copy of the warm run's cache (a test may write into its own)."""
    return Path(shutil.copytree(warm[2], tmp_path / "warm-cache"))


def batch_json(*args, env=None):
    result = run_cli("batch", *args, "--json", "--no-progress", env=env)
    return (json.loads(result.stdout) if result.stdout.strip() else None), result


def test_trajectory_document(warm, tmp_path):
    run_dir, doc, _ = warm
    assert doc["schema"] == "spectrum.trajectory"
    steps = [c["step"] for c in doc["checkpoints"]]
    assert steps == list(range(105, 230, 5))
    assert all(c["loss"] > 0 for c in doc["checkpoints"])
    for name in ("momentum.spectral_radius", "momentum.kappa_V", "optimizer.eos_ratio_momentum",
                 "optimizer.hessian_lambda_max", "tensors.max_kappa"):
        assert name in doc["indicators"]
    assert doc["spikes"]["onsets"] == [155]
    aucs = [r["auc"] for r in doc["scorecard"] if not isinstance(r["auc"], str)]
    assert aucs and all(0.0 <= a <= 1.0 for a in aucs)
    assert doc["summary"] == {"checkpoints": 25, "analysed": 25, "failed": 0,
                              "from_cache": 0, "spike_onsets": 1, "violations": 0}
    again, _ = batch_json(run_dir, "--cache-dir", warm_cache(warm, tmp_path))
    assert again["summary"]["from_cache"] == 25
    assert _comparable(again) == _comparable(doc)


def _comparable(doc):
    out = json.loads(json.dumps(doc))
    out.pop("created")
    for c in out["checkpoints"]:
        c.pop("cached")
    out["summary"].pop("from_cache")
    return out


def test_report_plot_and_report_show(run_dir, tmp_path, warm):
    report, png = tmp_path / "traj.h5", tmp_path / "traj.png"
    cache = warm_cache(warm, tmp_path)
    result = run_cli("batch", run_dir, "--report", report, "--plot", png, "--cache-dir", cache)
    assert result.exit_code == 0, result.stderr
    assert "scorecard" in result.stdout and "spikes: 1 onsets" in result.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    shown = json.loads(run_cli("report", "show", report, "--json").stdout)
    doc = warm[1]
    assert shown["spikes"] == json.loads(json.dumps(doc["spikes"]))
    assert [c["indicators"]["momentum.spectral_radius"] for c in shown["checkpoints"]] == \
        pytest.approx([c["indicators"]["momentum.spectral_radius"] for c in doc["checkpoints"]])


def test_fail_on_applies_to_every_step(tmp_path):
    doc, result = batch_json(make_run(tmp_path / "few", FEW), "--no-cache", "--fail-on",
                             "eos_ratio_momentum>1@optimizer:*")
    assert result.exit_code == 1
    assert {v["step"] for v in doc["fail_on"]["violations"]} >= {150}
    assert all(v["tensor"] == "optimizer:momentum" for v in doc["fail_on"]["violations"])


def test_broken_file_is_skipped_and_the_batch_goes_on(run_dir, tmp_path, warm):
    (run_dir / "step-00999.pt").write_bytes(b"PK\x03\x04 truncated")
    doc, result = batch_json(run_dir, "--cache-dir", warm_cache(warm, tmp_path))
    assert result.exit_code == 2
    assert doc["summary"]["failed"] == 1 and doc["summary"]["analysed"] == 25
    bad = [c for c in doc["checkpoints"] if c["status"] != "ok"]
    assert bad[0]["path"].endswith("step-00999.pt") and "corrupt" in bad[0]["error"]
    assert "1 of 26 checkpoints failed" in result.stderr


def test_ordering_by_stored_step_then_name(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    for name, step in (("late.pt", 20), ("early.pt", 10)):
        torch.save({"model": {"w": torch.randn(3, 3)}, "step": step, "loss": 1.0}, d / name)
    for n in (9, 10):
        torch.save({"w": torch.randn(2, 2)}, d / f"ckpt-{n}.pt")
    assert [Path(c.path).name for c in discover(str(d))] == ["ckpt-9.pt", "ckpt-10.pt",
                                                             "early.pt", "late.pt"]
    doc, result = batch_json(d, "--no-cache")
    assert result.exit_code == 0
    assert [(Path(c["path"]).name, c["step"]) for c in doc["checkpoints"]] == [
        ("ckpt-9.pt", 9), ("ckpt-10.pt", 10), ("early.pt", 10), ("late.pt", 20)]


def test_hf_checkpoint_folders_and_trainer_state(tmp_path):
    for step, loss in ((10, 0.5), (20, 0.4)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        save_file({"w": torch.randn(4, 4)}, str(d / "model.safetensors"))
        (d / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "log_history": [{"step": step - 5, "loss": loss + 0.1},
                                                  {"step": step, "loss": loss}]}))
    doc, result = batch_json(tmp_path, "--no-cache")
    assert result.exit_code == 0, result.stderr
    assert [(c["step"], c["loss"]) for c in doc["checkpoints"]] == [(10, 0.5), (20, 0.4)]


def test_jobs_two_gives_the_same_trajectory(tmp_path, warm):
    """Workers get a share of the BLAS/torch threads, which changes the order of floating
    point reductions: equal to rounding, not bit for bit. (One worker: the warm run,
    read back from its cache, bit for bit.)"""
    few = make_run(tmp_path / "few", FEW)
    one, _ = batch_json(few, "--cache-dir", warm_cache(warm, tmp_path))
    assert one["summary"]["from_cache"] == len(FEW)
    two, result = batch_json(few, "--no-cache", "--jobs", "2")
    assert result.exit_code == 0, result.stderr
    a, b = _comparable(one)["checkpoints"], _comparable(two)["checkpoints"]
    assert [c["path"] for c in a] == [c["path"] for c in b]
    for ca, cb in zip(a, b):
        assert ca["indicators"].keys() == cb["indicators"].keys()
        for k, v in ca["indicators"].items():
            if isinstance(v, str):
                assert cb["indicators"][k] == v
            else:
                assert cb["indicators"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert two["spikes"] == one["spikes"]


def test_changed_settings_do_not_reuse_the_cache(tmp_path, warm):
    cache = warm_cache(warm, tmp_path)
    doc, _ = batch_json(make_run(tmp_path / "few", FEW), "--cache-dir", cache, "--eps",
                        "1e-3")
    assert doc["summary"]["from_cache"] == 0
    assert "momentum.rho_eps[0.001]" in doc["indicators"]


def test_killed_batch_resumes_and_matches_a_clean_run(tmp_path, warm):
    run_dir = make_run(tmp_path / "twelve", range(105, 165, 5))
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "spectrum_cli", "batch", str(run_dir), "--cache-dir",
           str(cache), "--json", "--no-progress"]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("*.json"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(cache.glob("*.json")))
    assert 5 <= done_before < 12, done_before
    resumed = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env,
                                        cwd=tmp_path, check=False).stdout)
    assert resumed["summary"]["from_cache"] == done_before
    assert resumed["summary"]["analysed"] == 12
    # An uninterrupted run in the same configuration (the warm run's, read back from its
    # cache) gives identical numbers, bit for bit.
    clean, _ = batch_json(run_dir, "--cache-dir", warm_cache(warm, tmp_path))
    assert _comparable(resumed) == _comparable(clean)


def test_spike_rule_and_scores_unit():
    loss = [1.0] * 10 + [3.0, 4.0, 1.0, 1.0, 1.0, 5.0]
    s = detect_spikes(loss, SpikeRule(2.0, 10))
    assert s.onsets == [10, 15] and s.windows == [(10, 11), (15, 15)]
    assert not s.defined[:10].any() and s.defined[10:].all()
    assert roc_auc(np.array([3, 4, 1, 2.0]), np.array([True, True, False, False])) == 1.0
    assert roc_auc(np.array([1, 1.0]), np.array([True, False])) == 0.5
    values = [0.5] * 8 + [0.9, 1.2, 1.3, 1.4, 0.5, 0.5, 0.5, 0.5]
    sc = score("x.eos_ratio_gd", values, list(range(16)), s)
    assert sc.threshold == 1.0 and sc.leads[0] == 1.0 and sc.warned == 1


def test_plot_without_matplotlib_fails_before_the_run(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = run_cli("batch", tmp_path / "no-such-dir", "--plot", tmp_path / "p.png")
    assert result.exit_code == 2 and "pip install 'spectrum-cli[plot]'" in result.stderr


def test_the_trajectory_records_jobs_and_threads(tmp_path):
    """Workers x threads <= the usable cores unless --threads says otherwise (item 18)."""
    from spectrum_cli.runs.threads import available_cores

    d = tmp_path / "r"
    d.mkdir()
    for n in range(3):
        torch.save({"w": torch.randn(6, 6)}, d / f"ckpt-{n}.pt")
    cores = available_cores()
    doc, result = batch_json(d, "--no-cache", "--jobs", "2", env={"OMP_NUM_THREADS": "",
                                                                  "OPENBLAS_NUM_THREADS": ""})
    assert result.exit_code == 0, result.stderr
    s = doc["settings"]
    assert (s["jobs"], s["workers"], s["cores"]) == (2, 2, cores)
    assert s["threads"] == max(1, cores // 2) and s["workers"] * s["threads"] <= max(cores, 2)
    doc, _ = batch_json(d, "--no-cache", "--jobs", "2", "--threads", "3")
    assert doc["settings"]["threads"] == 3
    doc, _ = batch_json(d, "--no-cache")  # one job: computed in this process
    assert doc["settings"]["workers"] == 0


def test_a_run_without_spikes_says_there_is_none_to_score(tmp_path):
    """Issue 22, item 8: a run that logs its loss but never spikes has nothing to
    score; no scorecard of NaN AUCs, no "at steps" with nothing after it, but the
    indicators over the run."""
    d = tmp_path / "calm"
    d.mkdir()
    for step in range(5, 65, 5):  # weights, optimizer and loss; no model named
        shutil.copy(SAMPLE / f"step-{step:05d}.pt", d)
    result = run_cli("batch", d, "--no-cache", "--no-progress", "--spike-factor", "1000")
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "spikes: none (loss > 1000 x min(previous 10 checkpoints)): no spike to score" \
        in out
    assert "nan" not in out and "at steps" not in out and "AUC" not in out
    assert "tensors.max_kappa" in out and "first" in out  # the run's overview instead
    doc = json.loads(run_cli("batch", d, "--no-cache", "--no-progress", "--spike-factor",
                             "1000", "--json").stdout)
    assert doc["spikes"]["onsets"] == [] and doc["summary"]["spike_onsets"] == 0
