"""Trajectory conditions and alerts of ``spectrum watch`` on synthetic records, checked
against the spike rule and percentiles computed here independently."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.trajectory import SpikeRule
from spectrum_cli.core.thresholds import TrajectoryCondition, split_conditions
from spectrum_cli.runs.alerts import Alert, AlertCommand, checkpoint_alerts, trajectory_alerts
from spectrum_cli.runs.watch import resolve
from tests.processes import running


def test_split_tells_trajectory_conditions_from_analyze_ones():
    per, traj = split_conditions([
        "kappa>1e4@*.attention.*,tensors.max_kappa>=1e3", "spike",
        "optimizer.eos_ratio_momentum>threshold, loss>10",
        "tensor.kappa[enc.layers.0.weight]<2,nonfinite_count>0"])
    assert per == ["kappa>1e4@*.attention.*", "nonfinite_count>0"]
    assert traj == [TrajectoryCondition("tensors.max_kappa", ">=", 1e3),
                    TrajectoryCondition("spike"),
                    TrajectoryCondition("optimizer.eos_ratio_momentum", ">", None),
                    TrajectoryCondition("loss", ">", 10.0),
                    TrajectoryCondition("tensor.kappa[enc.layers.0.weight]", "<", 2.0)]
    assert [str(c) for c in traj] == ["tensors.max_kappa>=1000", "spike",
                                      "optimizer.eos_ratio_momentum>threshold", "loss>10",
                                      "tensor.kappa[enc.layers.0.weight]<2"]


@pytest.mark.parametrize("bad", ["tensors.max_kappa>big", "loss>nan"])
def test_bad_trajectory_conditions_are_usage_errors(bad):
    with pytest.raises(UsageError, match="--fail-on"):
        split_conditions([bad])


def test_resolve_gives_analyze_only_its_own_conditions(tmp_path):
    job, _, traj = resolve(str(tmp_path), {"fail_on": ["kappa>5,tensors.max_kappa>9"]},
                           use_config=False)
    assert job.fail_on == ("kappa>5",) and traj == [TrajectoryCondition(
        "tensors.max_kappa", ">", 9.0)]
    with pytest.raises(UsageError, match="unknown metric"):
        resolve(str(tmp_path), {"fail_on": ["kapa>5"]}, use_config=False)


def test_trajectory_conditions_from_a_configuration_file(tmp_path):
    (tmp_path / "spectrum.toml").write_text('fail-on = ["spike", "kappa>3"]\n')
    (tmp_path / ".git").mkdir()
    job, cfg, traj = resolve(str(tmp_path), {})
    assert cfg.file.endswith("spectrum.toml")
    assert job.fail_on == ("kappa>3",) and traj == [TrajectoryCondition("spike")]


def rec(step, loss=None, **ind):
    return {"path": f"run/step-{step}.pt", "status": "ok", "step": step, "loss": loss,
            "indicators": ind, "violations": []}


def test_spike_alerts_at_each_onset_only():
    rule = SpikeRule(2.0, 3)
    losses = [1.0, 0.9, 0.8, 0.85, 2.0, 3.0, 0.7, 0.75, 0.7, 1.5]
    ok = [rec(10 * i, x) for i, x in enumerate(losses)]
    fired = {}
    for i in range(len(ok)):
        for a in trajectory_alerts([TrajectoryCondition("spike")], ok, i, rule):
            fired[ok[i]["step"]] = a
    # by hand: 2.0 > 2 x min(0.9, 0.8, 0.85) = 1.6 (onset); 3.0 > 1.6 (same window);
    # 1.5 > 2 x min(0.7, 0.75, 0.7) = 1.4 (a new onset)
    assert sorted(fired) == [40, 90]
    assert fired[40].value == 2.0 and fired[40].metric == "loss"
    assert fired[40].detail == "loss > 2 x min(previous 3 checkpoints) = 1.6"
    assert fired[90].detail.endswith("= 1.4")


def test_threshold_is_the_p95_of_earlier_stable_checkpoints():
    rule = SpikeRule(2.0, 3)
    rng = np.random.default_rng(3)
    kappa = rng.uniform(5, 10, size=12)
    losses = [1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    ok = [rec(i, losses[i], **{"tensors.max_kappa": float(kappa[i])}) for i in range(12)]
    cond = TrajectoryCondition("tensors.max_kappa", ">", None)
    for i in range(12):
        # stable by hand: the rule is defined from index 3 on; index 4 is unstable
        stable = [k for k in range(3, i) if k != 4]
        alerts = trajectory_alerts([cond], ok, i, rule)
        if len(stable) < rule.window:
            assert alerts == []
            continue
        threshold = np.percentile(kappa[stable], 95)
        assert bool(alerts) == (kappa[i] > threshold), i
        if alerts:
            assert alerts[0].value == kappa[i]
            assert alerts[0].detail == (f"threshold {threshold:.6g} = p95 of {len(stable)} "
                                        "earlier stable checkpoints")


def test_threshold_without_a_loss_uses_every_earlier_checkpoint():
    rule = SpikeRule(2.0, 3)
    values = [4.0, 3.0, 5.0, 4.0, 20.0]
    ok = [rec(i, **{"tensors.max_kappa": v}) for i, v in enumerate(values)]
    cond = TrajectoryCondition("tensors.max_kappa", ">", None)
    fired = [i for i in range(5) if trajectory_alerts([cond], ok, i, rule)]
    assert fired == [4]  # 4.0 at index 3 is below p95(4, 3, 5) = 4.9
    (a,) = trajectory_alerts([cond], ok, 4, rule)
    assert a.detail.startswith(f"threshold {np.percentile([4, 3, 5, 4], 95):.6g} = p95 of 4 "
                               "earlier (no loss logged)")


def test_natural_threshold_of_edge_of_stability_ratios():
    rule = SpikeRule()
    ok = [rec(0, **{"optimizer.eos_ratio_momentum": 0.99}),
          rec(1, **{"optimizer.eos_ratio_momentum": 1.01})]
    cond = TrajectoryCondition("optimizer.eos_ratio_momentum", ">", None)
    assert trajectory_alerts([cond], ok, 0, rule) == []
    (a,) = trajectory_alerts([cond], ok, 1, rule)  # 1, with no history needed
    assert a.value == 1.01 and a.detail == "natural threshold"


def test_fixed_number_and_missing_indicator():
    rule = SpikeRule()
    ok = [rec(0, 2.0, **{"tensors.max_kappa": 12.0}), rec(1, None)]
    conds = [TrajectoryCondition("tensors.max_kappa", ">=", 12.0),
             TrajectoryCondition("loss", "<", 3.0)]
    assert [a.condition for a in trajectory_alerts(conds, ok, 0, rule)] == [
        "tensors.max_kappa>=12", "loss<3"]
    assert trajectory_alerts(conds, ok, 1, rule) == []  # undefined never violates


def test_checkpoint_alerts_name_the_most_extreme_tensor():
    r = rec(300)
    r["violations"] = [
        {"condition": "kappa>10", "tensor": "a", "metric": "kappa", "value": 11.0},
        {"condition": "kappa>10", "tensor": "b", "metric": "kappa", "value": "inf"},
        {"condition": "stable_rank<2", "tensor": "c", "metric": "stable_rank", "value": 1.5},
        {"condition": "stable_rank<2", "tensor": "d", "metric": "stable_rank", "value": 1.2}]
    r["violations"] += [
        {"condition": "kappa<5@re:x>y", "tensor": "x>y1", "metric": "kappa", "value": 2.0},
        {"condition": "kappa<5@re:x>y", "tensor": "x>y2", "metric": "kappa", "value": 1.5}]
    a, b, c = checkpoint_alerts(r)
    assert (a.tensor, a.value, a.count) == ("b", math.inf, 2)
    assert (b.tensor, b.value, b.count) == ("d", 1.2, 2)
    assert (c.tensor, c.value) == ("x>y2", 1.5)  # the scope's '>' is not the operator
    assert a.message == ("step 300 (run/step-300.pt): kappa = inf violates kappa>10 at b "
                         "(and 1 more)")


def test_alert_environment_is_escaped():
    a = Alert("run/evil\x1b[31m.pt", 7, "kappa>1", "kappa", 2.5, tensor="t\nx")
    env = a.environment()
    assert env["SPECTRUM_ALERT_CHECKPOINT"] == "run/evil\\x1b[31m.pt"
    assert env["SPECTRUM_ALERT_TENSOR"] == "t\\x0ax"
    assert float(env["SPECTRUM_ALERT_VALUE"]) == 2.5 and env["SPECTRUM_ALERT_STEP"] == "7"
    assert all("\x1b" not in v and "\n" not in v for v in env.values())


def test_alert_command_runs_without_a_shell_and_reports_failures(tmp_path):
    out = tmp_path / "env.txt"
    script = tmp_path / "hook.py"
    script.write_text("import os, sys\n"
                      "open(sys.argv[1], 'w').write(os.environ['SPECTRUM_ALERT_METRIC'] + "
                      "'|' + sys.argv[2])\nprint('hook says hi')\n")
    a = Alert("run/x.pt", 1, "kappa>1", "kappa", 2.0)
    result = AlertCommand(f"{sys.executable} {script} {out} '$HOME;true'")(a)
    assert result.problem is None and "hook says hi" in result.output
    assert out.read_text() == "kappa|$HOME;true"  # no shell expanded anything
    failing = AlertCommand(f"{sys.executable} -c 'import sys; sys.exit(3)'")(a)
    assert failing.problem == f"{sys.executable} exited with 3"
    slow = AlertCommand(f"{sys.executable} -c 'import time; time.sleep(60)'", timeout=0.5)
    assert "did not finish within 0.5 s" in slow(a).problem
    with pytest.raises(UsageError, match="not an executable"):
        AlertCommand("no-such-command-here --x")
    with pytest.raises(UsageError, match="cannot split"):
        AlertCommand("echo 'unbalanced")


HOOK_WITH_CHILD = """import subprocess, sys
child = subprocess.Popen(["sleep", "300"], stdout={out})
open(sys.argv[1], "w").write(str(child.pid))
print("started", flush=True)
{then}
"""


@pytest.mark.parametrize("out, then, finished", [
    ("subprocess.DEVNULL", "", True),       # exits at once, its child elsewhere
    ("None", "", True),                     # exits at once, its child holds the output
    ("None", "import time; time.sleep(300)", False)])  # stopped at its limit
def test_alert_command_leaves_nothing_running(tmp_path, out, then, finished):
    """Issue 26: the command runs in its own process group, killed as a whole when the
    command ends or is stopped: no ``sleep 300`` is left behind."""
    script, pid_file = tmp_path / "hook.py", tmp_path / "child.pid"
    script.write_text(HOOK_WITH_CHILD.format(out=out, then=then))
    a = Alert("run/x.pt", 1, "kappa>1", "kappa", 2.0)
    result = AlertCommand(f"{sys.executable} {script} {pid_file}",
                          timeout=60 if finished else 1.0)(a)
    assert (result.problem is None) == finished, result.problem
    assert "started" in result.output
    assert not running(int(pid_file.read_text()))


def test_alert_command_output_is_kept_bounded(tmp_path):
    """Issue 26: a command that floods its output is read as it writes, its last
    bytes kept (:data:`HOOK_OUTPUT_MAX`), the rest counted and dropped."""
    from spectrum_cli.runs.alerts import HOOK_OUTPUT_MAX

    script = tmp_path / "flood.py"
    script.write_text("import sys\nline = b'x' * 1023 + b'\\n'\n"
                      "for _ in range(50 * 1024):\n    sys.stdout.buffer.write(line)\n"
                      "print('the end', flush=True)\n")
    a = Alert("run/x.pt", 1, "kappa>1", "kappa", 2.0)
    result = AlertCommand(f"{sys.executable} {script}", timeout=120)(a)
    assert result.problem is None
    assert result.output.endswith("the end\n")
    assert len(result.output) <= HOOK_OUTPUT_MAX + 100
    assert "earlier bytes of output not shown" in result.output.splitlines()[0]
