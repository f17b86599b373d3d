"""``spectrum batch`` on weights-only checkpoints (issue 10, item 19): no loss and no
optimizer operator, so the trajectory carries and plots the tensors' own indicators."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spectrum_cli.runs import indicators as B
from tests.batch.folders import WEIGHTS, weights_only_run
from tests.helpers import run_cli

STEPS = 5


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights-only")
    folder = weights_only_run(tmp / "run", steps=STEPS)
    png = tmp / "traj.png"
    result = run_cli("batch", folder, "--json", "--no-progress", "--no-cache", "--plot", png)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), png


def expected_kappa(name_index: int, step: int) -> float:
    _, _, k0, growth = WEIGHTS[name_index]
    return k0 * growth ** step


def test_the_document_carries_the_tensor_indicators(trajectory):
    doc, _ = trajectory
    for name in ("tensors.max_kappa", "tensors.max_sigma_max", "tensors.min_stable_rank",
                 "tensors.mean_spectral_entropy", "tensors.mean_spectral_entropy_normalized"):
        assert name in doc["indicators"], name
    per_tensor = sorted(n for n in doc["indicators"] if n.startswith("tensor.kappa["))
    assert per_tensor == sorted(f"tensor.kappa[{w[0]}]" for w in WEIGHTS)  # not the bias
    for step, c in enumerate(doc["checkpoints"]):
        ind = c["indicators"]
        kappas = [expected_kappa(i, step) for i in range(len(WEIGHTS))]
        for i, (name, *_rest) in enumerate(WEIGHTS):
            assert ind[f"tensor.kappa[{name}]"] == pytest.approx(kappas[i], rel=1e-3)
        assert ind["tensors.max_kappa"] == pytest.approx(max(kappas), rel=1e-3)
        assert ind["tensors.max_sigma_max"] == pytest.approx(1.0, rel=1e-4)
        assert 1.0 <= ind["tensors.min_stable_rank"] <= 16
        assert 0.0 < ind["tensors.mean_spectral_entropy_normalized"] <= 1.0


def test_the_plot_has_lines_with_data(trajectory):
    from spectrum_cli.report.plots import trajectory_figure

    doc, png = trajectory
    assert png.read_bytes()[:4] == b"\x89PNG"
    fig = trajectory_figure(doc)
    panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_ylabel()}
    assert "loss" not in panels  # no loss: no empty panel for it
    assert {"κ (tensors)", "σ_max (max)", "stable rank (min)", "entropy (mean)"} <= set(panels)
    for title, ax in panels.items():
        lines = [ln for ln in ax.get_lines() if np.isfinite(ln.get_ydata()).sum() == STEPS]
        assert lines, f"panel {title} has no line with {STEPS} finite points"
    labels = {ln.get_label() for ln in panels["κ (tensors)"].get_lines()}
    assert {"tensors.max_kappa", *(f"tensor.kappa[{w[0]}]" for w in WEIGHTS)} <= labels


def test_per_tensor_indicators_only_without_loss_and_operator():
    doc = {"tensors": [{"name": f"t{i}", "shape": [i + 2, 3], "status": "ok",
                        "metrics": {"kappa": float(i + 1)}} for i in range(B.PER_TENSOR_MAX + 5)],
           "checkpoint": {}}
    ind = B.indicators(doc)
    per = [n for n in ind if n.startswith("tensor.kappa[")]
    assert len(per) == B.PER_TENSOR_MAX and "tensor.kappa[t0]" not in per  # the largest
    assert not any(n.startswith("tensor.kappa[")
                   for n in B.indicators(dict(doc, checkpoint={"loss": 1.0})))
    with_op = dict(doc, operators=[{"form": "momentum", "metrics": {"kappa_V": 2.0}}])
    assert not any(n.startswith("tensor.kappa[") for n in B.indicators(with_op))


def test_plot_labels_are_shown_as_written():
    from spectrum_cli.report.plots import plot_label

    assert plot_label("_hidden") != "_hidden" and plot_label("_hidden").endswith("_hidden")
    assert plot_label("a$b$c") == r"a\$b\$c"
    assert "\x1b" not in plot_label("x\x1b[31my\n")
    assert len(plot_label("n" * 500)) <= 60


HOSTILE = ("$\\frac{", "_private", "a/b", "a|b", "a%2Fb", "nul\x00here", "esc\x1b[2J",
           "x/../../y", ".", "[", "]")


def test_hostile_tensor_names_in_the_plot_and_the_report(tmp_path):
    """Names that matplotlib would parse as mathtext or hide, or that HDF5 would take
    as paths (and collide once '/' is replaced), still give a picture and a report
    with one distinct series per tensor."""
    from safetensors.numpy import save_file

    from spectrum_cli.report.plots import plot_trajectory

    folder = tmp_path / "run"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for step in range(3):
        save_file({name: rng.standard_normal((5, 4)).astype(np.float32) for name in HOSTILE},
                  str(folder / f"s-{step}.safetensors"))
    report = tmp_path / "t.h5"
    result = run_cli("batch", folder, "--json", "--no-progress", "--no-cache", "--report",
                     report)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    per = [n for n in doc["indicators"] if n.startswith("tensor.kappa[")]
    assert len(per) == len(HOSTILE) and not any("/" in n or "\x00" in n for n in per)
    assert B.indicator_name("a/b") != B.indicator_name("a|b") != B.indicator_name("a%2Fb")
    shown = json.loads(run_cli("report", "show", report, "--json").stdout)
    assert sorted(shown["indicators"]) == sorted(doc["indicators"])
    plot_trajectory(str(tmp_path / "p.png"), doc)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
