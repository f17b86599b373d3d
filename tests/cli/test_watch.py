"""``spectrum watch``: checkpoints written while it runs (one slowly, in two halves), a
violation, an idle timeout, Ctrl-C, a broken checkpoint mid-run, alerts and TensorBoard.

Timings only pace the writers (poll 0.1 s, settle at most 1 s); no assertion is about
time. The numbers are checked against ``spectrum batch`` on the same files and against
numpy's float64 SVD of the stored matrices."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from spectrum_cli import settings
from tests.batch.folders import matrix, spectrum_exe, weights_only_run
from tests.helpers import run_cli

SGD = Path(__file__).resolve().parents[2] / "sample_checkpoints" / "sgd-momentum"
FAST = ("--poll", "0.1", "--settle", "0.3", "--no-cache", "--no-progress")
#: Ends a watch that should have stopped on its own (an alert, a refusal) if it did not.
BOUNDED = ("--idle-timeout", "5")


def steps_in(report: Path) -> list[int] | None:
    """The steps of a trajectory report, or None while there is none."""
    import h5py

    if not report.exists():
        return None
    with h5py.File(report, "r") as f:
        return [int(x) for x in f["steps"][()]]


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the watch"
        time.sleep(0.05)


class Background(threading.Thread):
    """A writer beside the watch; its exception is raised again by :meth:`join`."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.error = fn, None

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc

    def join(self, timeout: float | None = 60) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def aged(folder: Path) -> Path:
    """Files as if written long ago (a copy with copy2 keeps the date)."""
    for f in folder.iterdir():
        os.utime(f, (time.time() - 100, time.time() - 100))
    return folder


def kappa(path: Path, name: str) -> float:
    s = np.linalg.svd(load_file(str(path))[name].astype(np.float64), compute_uv=False)
    return float(s[0] / s[-1])


def batch_doc(folder: Path) -> dict:
    result = run_cli("batch", folder, "--json", "--no-cache", "--no-progress")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_checkpoints_written_while_it_runs(tmp_path):
    """Three checkpoints arrive while the watch runs, the second written in two halves
    with a pause longer than a poll (but shorter than --settle): each is read once,
    whole, and the report holds the numbers batch gives for the complete files."""
    src = aged(weights_only_run(tmp_path / "src", steps=4))
    files = sorted(src.glob("*.safetensors"))
    run, report = tmp_path / "run", tmp_path / "traj.h5"
    run.mkdir()
    shutil.copy2(files[0], run)

    def writer() -> None:
        wait_for(lambda: steps_in(report) == [0])
        shutil.copy2(files[1], run)
        wait_for(lambda: steps_in(report) == [0, 100])
        data, target = files[2].read_bytes(), run / files[2].name
        with open(target, "wb") as fh:
            fh.write(data[:len(data) // 2])
        time.sleep(0.4)
        with open(target, "ab") as fh:
            fh.write(data[len(data) // 2:])
        wait_for(lambda: steps_in(report) == [0, 100, 200])
        shutil.copy2(files[3], run)

    t = Background(writer)
    t.start()
    result = run_cli("watch", run, "--report", report, "--idle-timeout", "1.5", "--poll",
                     "0.1", "--settle", "1", "--no-cache")
    t.join()
    assert result.exit_code == 0, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["0", "100", "200", "300"]  # each read once
    assert "error" not in result.stderr and "Traceback" not in result.stderr
    shown = json.loads(run_cli("report", "show", report, "--json").stdout)
    reference = batch_doc(src)
    assert [c["step"] for c in shown["checkpoints"]] == [0, 100, 200, 300]
    assert [c["status"] for c in shown["checkpoints"]] == ["ok"] * 4
    for got, want in zip(shown["checkpoints"], reference["checkpoints"]):
        assert got["indicators"] == pytest.approx(want["indicators"], rel=1e-12)
    assert shown["checkpoints"][2]["indicators"]["tensor.kappa[head.weight]"] == \
        pytest.approx(kappa(files[2], "head.weight"), rel=1e-10)  # the one read in halves
    assert "spectrum watch" in result.stdout  # the trajectory's summary at the end


def test_a_violation_stops_the_watch_with_the_report_up_to_it(tmp_path):
    """head.weight's κ is 2·1.6^k at step 100·k: 'kappa>7@head.weight' first holds at
    step 300 (κ = 8.19). Exit 1 there; the report holds steps 0-300, written before the
    --on-alert command runs, which gets the alert in its environment."""
    run = aged(weights_only_run(tmp_path / "run", steps=5))
    report, seen = tmp_path / "traj.h5", tmp_path / "seen.json"
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import json, os, sys, h5py\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('SPECTRUM_ALERT_')}\n"
        "with h5py.File(env['SPECTRUM_ALERT_REPORT'], 'r') as f:\n"
        "    env['steps'] = [int(x) for x in f['steps'][()]]\n"
        "json.dump(env, open(sys.argv[1], 'w'))\n")
    result = run_cli("watch", run, "--fail-on", "kappa>7@head.weight", "--report", report,
                     "--on-alert", f"{sys.executable} {hook} {seen}", *FAST, *BOUNDED)
    assert result.exit_code == 1, result.stderr
    want = kappa(run / "step-00300.safetensors", "head.weight")
    assert 7 < want < 9 and kappa(run / "step-00200.safetensors", "head.weight") < 7
    alert = next(x for x in result.stderr.splitlines() if x.startswith("alert:"))
    assert "step-00300.safetensors" in alert and "kappa" in alert and f"{want:.6g}" in alert
    assert steps_in(report) == [0, 100, 200, 300]
    env = json.loads(seen.read_text())
    assert env["steps"] == [0, 100, 200, 300]
    assert env["SPECTRUM_ALERT_CHECKPOINT"].endswith("step-00300.safetensors")
    assert env["SPECTRUM_ALERT_STEP"] == "300" and env["SPECTRUM_ALERT_METRIC"] == "kappa"
    assert env["SPECTRUM_ALERT_TENSOR"] == "head.weight"
    assert env["SPECTRUM_ALERT_CONDITION"] == "kappa>7@head.weight"
    assert float(env["SPECTRUM_ALERT_VALUE"]) == pytest.approx(want, rel=1e-10)
    assert env["SPECTRUM_ALERT_MESSAGE"] in alert


def test_keep_going_logs_every_alert_and_exits_1_at_the_end(tmp_path):
    run = aged(weights_only_run(tmp_path / "run", steps=5))
    result = run_cli("watch", run, "--fail-on", "kappa>7@head.weight", "--keep-going",
                     "--idle-timeout", "0.5", "--json", *FAST)
    assert result.exit_code == 1, result.stderr
    alerts = [x for x in result.stderr.splitlines() if x.startswith("alert:")]
    assert ["step-00300" in alerts[0], "step-00400" in alerts[1], len(alerts)] == \
        [True, True, 2]
    doc = json.loads(result.stdout)
    assert [c["step"] for c in doc["checkpoints"]] == [0, 100, 200, 300, 400]
    assert [v["step"] for v in doc["fail_on"]["violations"]] == [300, 400]
    assert result.stdout.count("\n") > 10  # the document, and nothing else, on stdout
    exit_zero = run_cli("watch", run, "--fail-on", "kappa>7@head.weight",
                        "--exit-zero", *FAST, *BOUNDED)
    assert exit_zero.exit_code == 0, exit_zero.stderr


def test_trajectory_threshold_condition(tmp_path):
    """tensors.max_kappa>threshold against the p95 of the earlier checkpoints (no loss:
    all of them), from --spike-window checkpoints on: κ 4, 3, 5, 4, 20 fires at the last."""
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(11)
    for i, k in enumerate((4.0, 3.0, 5.0, 4.0, 20.0)):
        save_file({"w": matrix(rng, (12, 8), k)}, str(run / f"s-{i}.safetensors"))
    aged(run)
    result = run_cli("watch", run, "--fail-on", "tensors.max_kappa>threshold",
                     "--spike-window", "3", *FAST, *BOUNDED)
    assert result.exit_code == 1, result.stderr
    (alert,) = [x for x in result.stderr.splitlines() if x.startswith("alert:")]
    earlier = [kappa(run / f"s-{i}.safetensors", "w") for i in range(4)]
    assert f"= {kappa(run / 's-4.safetensors', 'w'):.6g} violates" in alert
    assert f"threshold {np.percentile(earlier, 95):.6g} = p95 of 4 earlier" in alert


def test_spike_condition_on_a_run_that_logs_its_loss(tmp_path):
    """The sample SGD run's first spike: with a window of 3 the onset is step 155."""
    run = tmp_path / "run"
    run.mkdir()
    for step in range(130, 165, 5):
        shutil.copy2(SGD / f"step-{step:05d}.pt", run)
    aged(run)
    result = run_cli("watch", run, "--fail-on", "spike", "--spike-window", "3", "--json",
                     *FAST, *BOUNDED)
    assert result.exit_code == 1, result.stderr
    doc = json.loads(result.stdout)
    loss = {c["step"]: c["loss"] for c in doc["checkpoints"]}
    assert sorted(loss) == [130, 135, 140, 145, 150, 155]  # stopped at the onset
    (v,) = doc["fail_on"]["violations"]
    assert (v["step"], v["condition"], v["kind"], v["value"]) == (155, "spike", "trajectory",
                                                                 loss[155])
    assert loss[155] > 2 * min(loss[140], loss[145], loss[150])  # the rule, by hand
    assert doc["fail_on"]["conditions"] == ["spike"]


def test_idle_timeout_with_nothing_complete_is_an_input_error(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    save_file({"w": np.eye(3, dtype=np.float32)}, str(run / "checkpoint-5" /
                                                      "model.safetensors"))
    result = run_cli("watch", run, "--idle-timeout", "0.3", *FAST)
    assert result.exit_code == 2
    assert "not read (waiting for trainer_state.json)" in result.stderr
    assert "no complete checkpoint" in result.stderr
    missing = run_cli("watch", tmp_path / "nope", "--idle-timeout", "0.3")
    assert missing.exit_code == 2 and "no such folder" in missing.stderr


def test_a_broken_checkpoint_mid_run_is_reported_and_the_watch_goes_on(tmp_path):
    src = aged(weights_only_run(tmp_path / "src", steps=3))
    run, report = tmp_path / "run", tmp_path / "traj.h5"
    run.mkdir()
    shutil.copy2(src / "step-00000.safetensors", run)

    def writer() -> None:
        wait_for(lambda: steps_in(report) == [0])
        (run / "step-00050.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
        shutil.copy2(src / "step-00100.safetensors", run)
        wait_for(lambda: steps_in(report) == [0, 100])
        shutil.copy2(src / "step-00200.safetensors", run)

    t = Background(writer)
    t.start()
    result = run_cli("watch", run, "--report", report, "--idle-timeout", "1", *FAST)
    t.join()
    assert result.exit_code == 2, result.stderr
    assert "step-00050.safetensors" in result.stderr and "the watch goes on" in \
        result.stderr
    assert "1 of 4 checkpoints could not be read" in result.stderr
    shown = json.loads(run_cli("report", "show", report, "--json").stdout)
    assert [(c["step"], c["status"]) for c in shown["checkpoints"]] == [
        (0, "ok"), (50, "error"), (100, "ok"), (200, "ok")]


def test_ctrl_c_exits_130_with_the_report_written(tmp_path):
    """Through the installed console script: SIGINT while it waits for more."""
    from spectrum_cli.report import trajectory

    run = aged(weights_only_run(tmp_path / "run", steps=3))
    report = tmp_path / "traj.h5"
    proc = subprocess.Popen([spectrum_exe(), "watch", str(run), "--report", str(report),
                             "--poll", "0.1", "--settle", "0.2", "--no-cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    try:
        wait_for(lambda: steps_in(report) == [0, 100, 200] or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    doc = trajectory.read(str(report))  # a whole, valid trajectory
    assert [c["step"] for c in doc["checkpoints"]] == [0, 100, 200]
    assert out == ""


def test_names_from_the_folder_reach_the_terminal_escaped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    evil = "evil\x1b]0;owned\x07-7.safetensors"
    save_file({"w": np.eye(4, dtype=np.float32) * 2}, str(run / evil))
    aged(run)
    result = run_cli("watch", run, "--idle-timeout", "0.3", "--fail-on", "kappa<2", *FAST)
    assert result.exit_code == 1, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "evil\\x1b]0;owned\\x07-7.safetensors" in result.stderr


def test_on_alert_is_command_line_only(tmp_path):
    run = aged(weights_only_run(tmp_path / "run", steps=1))
    marker = tmp_path / "ran"
    (run / "spectrum.toml").write_text(f'on-alert = "touch {marker}"\nfail-on = ["kappa>0"]\n')
    result = run_cli("watch", run, "--idle-timeout", "0.3", *FAST)
    assert result.exit_code == 2 and "'on-alert' cannot be set" in result.stderr
    assert "command to run" in result.stderr and not marker.exists()
    (run / "spectrum.toml").unlink()
    result = run_cli("watch", run, "--idle-timeout", "0.3", "--fail-on", "kappa>0", *FAST,
                     env={"SPECTRUM_ON_ALERT": f"touch {marker}"})
    assert result.exit_code == 2 and not marker.exists()  # refused by name, not ignored
    assert "'ON_ALERT' cannot be set" in result.stderr


def test_outputs_are_checked_before_the_watch(tmp_path):
    run = aged(weights_only_run(tmp_path / "run", steps=1))
    (run / "checkpoint-9").mkdir()
    inside = run_cli("watch", run, "--report", run / "checkpoint-9" / "r.h5", *FAST,
                     *BOUNDED)
    assert inside.exit_code == 2 and "inside a checkpoint folder" in inside.stderr
    over = run_cli("watch", run, "--report", run / "step-00000.safetensors", *FAST,
                   *BOUNDED)
    assert over.exit_code == 2 and "refused" in over.stderr
    bad = run_cli("watch", run, "--on-alert", "no-such-command-here", *FAST, *BOUNDED)
    assert bad.exit_code == 2 and "not an executable" in bad.stderr


def test_tensorboard_scalars_and_histograms(tmp_path):
    pytest.importorskip("spectrum_cli.report.tensorboard")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = aged(weights_only_run(tmp_path / "run", steps=3))
    logdir = tmp_path / "tb"
    result = run_cli("watch", run, "--tensorboard", logdir, "--idle-timeout", "0.3",
                     "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    for name in ("tensors.max_kappa", "tensor.kappa[head.weight]"):
        events = acc.Scalars(name)
        assert [e.step for e in events] == [0, 100, 200]
        want = [c["indicators"][name] for c in doc["checkpoints"]]
        assert [e.value for e in events] == pytest.approx(want, rel=1e-6)  # float32
    (hist_tag,) = acc.Tags()["histograms"]
    histograms = acc.Histograms(hist_tag)
    assert [h.step for h in histograms] == [0, 100, 200]
    # every singular value of the three matrices (24x16, 16x16, 4x16): 16 + 16 + 4
    assert [h.histogram_value.num for h in histograms] == [36, 36, 36]
    for h in histograms:  # log10 σ in bins of 0.05: each value within 0.025 of its bin
        tensors = load_file(str(run / f"step-{h.step:05d}.safetensors"))
        x = np.log10(np.concatenate([np.linalg.svd(tensors[n].astype(np.float64),
                                                   compute_uv=False)
                                     for n in tensors if tensors[n].ndim == 2]))
        got = h.histogram_value
        assert abs(got.sum - x.sum()) <= 0.025 * x.size
        assert abs(got.min - x.min()) <= 0.025 and abs(got.max - x.max()) <= 0.025


def test_help_lists_every_watch_setting():
    out = run_cli("watch", "--help", env={"COLUMNS": "250"}).stdout
    for s in settings.SETTINGS:
        if "watch" in s.commands:
            assert s.flag in out, s.flag
    for flag in ("--report", "--cache-dir", "--no-cache", "--spike-factor", "--top"):
        assert flag in out
    for absent in ("--executor", "--scheduler", "--max-memory", "--strict", "--jobs"):
        assert absent not in out
    assert "<bool>" not in out
    from spectrum_cli.cli.app import app
    import typer.main

    for param in typer.main.get_command(app).commands["watch"].params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), param.name


def test_dcp_folder_appears_whole(tmp_path):
    """A torch.distributed.checkpoint folder: its .distcp files first, .metadata last
    (as DCP writes them); read once complete, with analyze's numbers."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    stage, run, report = tmp_path / "stage" / "step_300", tmp_path / "run", tmp_path / "t.h5"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 9), torch.nn.ReLU(), torch.nn.Linear(9, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": net.state_dict(), "step": 300}, checkpoint_id=str(stage))
    run.mkdir()
    (run / "step_300").mkdir()
    for f in stage.iterdir():
        if f.name != ".metadata":
            shutil.copy2(f, run / "step_300")

    def writer() -> None:
        time.sleep(0.5)  # a few polls without .metadata: not a checkpoint yet
        shutil.copy2(stage / ".metadata", run / "step_300")

    t = Background(writer)
    t.start()
    result = run_cli("watch", run, "--report", report, "--idle-timeout", "1.2", *FAST)
    t.join()
    assert result.exit_code == 0, result.stderr
    shown = json.loads(run_cli("report", "show", report, "--json").stdout)
    (c,) = shown["checkpoints"]
    assert (c["status"], c["step"]) == ("ok", 300)
    single = json.loads(run_cli("analyze", stage, "--json").stdout)
    kappas = {t["name"]: t["metrics"]["kappa"] for t in single["tensors"]}
    assert c["indicators"]["tensors.max_kappa"] == pytest.approx(max(kappas.values()),
                                                                 rel=1e-12)
    w = net[0].weight.detach().double().numpy()
    s = np.linalg.svd(w, compute_uv=False)
    assert kappas["0.weight"] == pytest.approx(s[0] / s[-1], rel=1e-10)


def test_the_cache_is_shared_with_batch(tmp_path):
    run = aged(weights_only_run(tmp_path / "run", steps=3))
    cache = tmp_path / "cache"
    result = run_cli("watch", run, "--cache-dir", cache, "--idle-timeout", "0.3", "--poll",
                     "0.1", "--settle", "0.3", "--json", "--no-progress")
    assert result.exit_code == 0, result.stderr
    watched = json.loads(result.stdout)
    assert watched["summary"]["from_cache"] == 0
    after = run_cli("batch", run, "--cache-dir", cache, "--json", "--no-progress")
    doc = json.loads(after.stdout)
    assert doc["summary"]["from_cache"] == 3  # batch reuses what the watch computed
    assert [c["indicators"] for c in doc["checkpoints"]] == \
        [c["indicators"] for c in watched["checkpoints"]]


def test_a_watch_started_before_the_run_waits_for_its_folder(tmp_path):
    """Issue 22, item 7: the folder does not exist yet; the watch says it waits (once),
    follows it once it appears, as ``tail -F`` does, and ends well at the idle timeout."""
    src = aged(weights_only_run(tmp_path / "src", steps=1))
    run, err = tmp_path / "out" / "run", tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([spectrum_exe(), "watch", run, *FAST, "--idle-timeout", "3",
                                 "--json"], stdout=subprocess.PIPE, stderr=fh, text=True,
                                cwd=tmp_path, stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: "waiting for" in err.read_text() or proc.poll() is not None,
                     timeout=120)
            assert proc.poll() is None, err.read_text()
            run.mkdir(parents=True)
            shutil.copy2(src / "step-00000.safetensors", run)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err.read_text()
    assert proc.returncode == 0, stderr
    assert stderr.count(f"waiting for {run} to appear") == 1 and f"{run} appeared" in stderr
    assert [c["step"] for c in json.loads(out)["checkpoints"]] == [0]


def test_a_folder_that_never_appears_or_cannot_be_one(tmp_path):
    never = subprocess.run([spectrum_exe(), "watch", tmp_path / "never", "--idle-timeout",
                            "0.5", "--poll", "0.1"], capture_output=True, text=True,
                           timeout=120)
    assert never.returncode == 2 and "Traceback" not in never.stderr
    assert never.stderr.count("waiting for") == 1
    assert "no such folder: it did not appear within the idle timeout (0.5 s)" in \
        " ".join(never.stderr.split())
    (tmp_path / "a-file").write_text("x")
    for bad, why in ((tmp_path / "a-file", "not a folder"),
                     (tmp_path / "a-file" / "run", "is not a folder")):
        result = subprocess.run([spectrum_exe(), "watch", bad, "--idle-timeout", "0.5"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and why in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "waiting" not in result.stderr
