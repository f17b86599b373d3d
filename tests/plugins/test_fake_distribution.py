"""Issue 11: a third-party distribution (a dist-info with entry_points.txt on sys.path,
nothing installed, nothing in spectrum edited) registers a metric, a reader and an
executor; each shows up end to end: CLI, JSON, HDF5, summary, --fail-on and batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spectrum_cli import plugins
from tests.helpers import oracle_svdvals
from tests.plugins.fake import spectrum





def write_fake(path: Path, arrays: dict, ) -> Path:
    path.write_bytes(b"FAKEMAT1\n" + json.dumps(
        {k: np.asarray(v).tolist() for k, v in arrays.items()}).encode())
    return path


def test_the_plugins_are_registered_without_an_install(fake_dist):
    assert "top2_ratio" in plugins.metrics.names()
    assert "fakemat" in plugins.readers.names()
    assert "reversed" in plugins.executors.names()
    assert "asgd" in plugins.optimizers.names()


def test_metric_and_reader_end_to_end(fake_dist, tmp_path, rng):
    a, b = rng.standard_normal((9, 6)), rng.standard_normal((5, 5))
    src = write_fake(tmp_path / "weights.fake", {"a": a, "b": b})
    r = spectrum("analyze", src, "--json", "--report", tmp_path / "r.h5")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["source"]["format"] == "fakemat" and doc["checkpoint"]["step"] == 7
    expect = {}
    for t in doc["tensors"]:
        s = oracle_svdvals(a if t["name"] == "a" else b)
        expect[t["name"]] = s[0] / s[1]
        assert abs(t["metrics"]["top2_ratio"] - expect[t["name"]]) <= 1e-12 * expect[t["name"]]
    # HDF5: the report carries it, and reads back to the same document
    back = json.loads(spectrum("report", "show", tmp_path / "r.h5", "--json").stdout)
    assert {t["name"]: t["metrics"]["top2_ratio"] for t in back["tensors"]} == \
        {t["name"]: t["metrics"]["top2_ratio"] for t in doc["tensors"]}
    # summary
    out = spectrum("analyze", src).stdout
    assert "metric top2_ratio:" in out
    # --fail-on knows it, and it can fire
    worst = max(expect.values())
    r = spectrum("analyze", src, "--fail-on", f"top2_ratio>{worst * 0.999}")
    assert r.returncode == 1, r.stderr
    r = spectrum("analyze", src, "--fail-on", f"top2_ratio>{worst * 1.001}")
    assert r.returncode == 0, r.stderr


def test_a_backend_of_extremes_lists_it_as_unavailable(fake_dist, tmp_path, rng):
    src = write_fake(tmp_path / "w.fake", {"a": rng.standard_normal((30, 20))})
    r = spectrum("analyze", src, "--json", "--backend", "lanczos", "--fail-on",
                 "top2_ratio>0")
    doc = json.loads(r.stdout)
    assert "top2_ratio" in doc["tensors"][0]["unavailable"]
    assert doc["fail_on"]["unchecked"][0]["condition"].startswith("top2_ratio")
    assert spectrum("analyze", src, "--backend", "lanczos", "--fail-on", "top2_ratio>0",
                    "--strict").returncode == 2


def test_executor_and_batch_indicator(fake_dist, tmp_path, rng):
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2, 3):
        write_fake(run / f"step-{step}.fake", {"w": rng.standard_normal((6, 4)) * step})
    # discovery takes the run's checkpoint suffixes; a plugin format is named by a glob
    log = tmp_path / "executor.log"
    r = spectrum("batch", f"{run}/step-*.fake", "--json", "--no-cache", "--executor",
                 "reversed", env={"FAKE_EXECUTOR_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["settings"]["executor"] == "reversed"
    assert log.read_text().split() == ["2", "1", "0"]  # it really ran them, last first
    assert [Path(c["path"]).name for c in doc["checkpoints"]] == \
        ["step-1.fake", "step-2.fake", "step-3.fake"]
    assert "tensors.max_top2_ratio" in doc["indicators"]


def test_broken_and_duplicate_plugins_warn_and_are_listed(monkeypatch):
    from importlib.metadata import EntryPoint

    group = "spectrum.metrics"
    extra = [EntryPoint("dup", "spectrum_cli.core.metrics:kappa", group),
             EntryPoint("dup", "spectrum_cli.core.metrics:sigma_max", group),
             EntryPoint("broken", "no_such_module:fn", group)]
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points",
                        lambda group=None: list(real(group=group)) + (
                            extra if group == "spectrum.metrics" else []))
    plugins.clear_cache()
    try:
        with pytest.warns(plugins.PluginWarning) as caught:
            infos = {i.name: i for i in plugins.metrics.infos()}
        text = " ".join(str(w.message) for w in caught)
        assert "registered twice" in text and "broken" in text
        assert infos["broken"].plugin is None and not infos["broken"].available
        assert infos["dup"].target == "spectrum_cli.core.metrics:kappa"  # first wins
    finally:
        plugins.clear_cache()


def asgd_checkpoint(path: Path, steps: int = 3) -> Path:
    """A real torch.optim.ASGD snapshot of the sample run's two-layer ReLU MLP (385
    parameters: its dense update operator is quick) after a few steps."""
    import torch

    from spectrum_cli.examples import paper_regression, two_layer_relu

    model = two_layer_relu()
    x, y = paper_regression()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, lambd=1e-3, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    return path


def test_optimizer_rule_end_to_end(fake_dist, tmp_path):
    import torch  # noqa: F401 - the snapshot is a real torch optimizer's

    ckpt = asgd_checkpoint(tmp_path / "asgd.pt")
    args = ["--model", "spectrum_cli.examples:two_layer_relu", "--data",
            "spectrum_cli.examples:paper_regression"]
    r = spectrum("analyze", ckpt, "--json", "--report", tmp_path / "asgd.h5", *args)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["optimizer"]["optimizer"] == "asgd"
    back = json.loads(spectrum("report", "show", tmp_path / "asgd.h5", "--json").stdout)
    assert back["operators"] == doc["operators"]  # the HDF5 report carries the rule's entry
    (op,) = doc["operators"]
    m = op["metrics"]
    eta = op["settings"]["eta"]
    w = 1 - op["settings"]["lambd"] * eta
    # J = wI - η(H + wd I): its spectral radius from the two ends of H's spectrum
    expect = max(abs(w - eta * m["hessian_lambda_max"]), abs(w - eta * m["hessian_lambda_min"]))
    assert abs(m["spectral_radius"] - expect) <= 1e-12 * expect
    limit = m["eos_ratio_asgd"]
    r = spectrum("analyze", ckpt, *args, "--fail-on", f"eos_ratio_asgd>{limit * 0.99}")
    assert r.returncode == 1 and "asgd" in r.stdout  # and the summary's operator table
    run = tmp_path / "run"
    run.mkdir()
    for step in (2, 3):
        asgd_checkpoint(run / f"step-{step}.pt", steps=step)
    r = spectrum("batch", run, "--json", "--no-cache", *args)
    assert r.returncode == 0, r.stderr
    assert "optimizer.eos_ratio_asgd" in json.loads(r.stdout)["indicators"]
