"""Hostile cases of ``batch``, ``watch`` and ``--on-alert`` (issue 26), each through the
installed console script in a subprocess with a timeout: damaged cache entries, a
flooding or lingering alert command, symlinks to ``/proc``, outputs inside a checkpoint
folder being read, a checkpoint seen half-written. Timeouts only bound the runs; no
assertion is about time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.batch.folders import spectrum_exe, weights_only_run
from tests.processes import running

SGD = Path(__file__).resolve().parents[2] / "sample_checkpoints" / "sgd-momentum"
FAST = ("--poll", "0.1", "--settle", "0.3", "--no-progress")


def spectrum(*args: object, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([spectrum_exe(), *map(str, args)], capture_output=True,
                              text=True, cwd=cwd, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"spectrum {' '.join(map(str, args))} hung")


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


def aged(folder: Path) -> Path:
    for f in folder.iterdir():
        os.utime(f, (time.time() - 100, time.time() - 100))
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# --------------------------------------------------------------------------- the cache


def _missing_condition(record: dict) -> None:
    record["violations"] = [{"tensor": "w", "metric": "kappa", "value": 5.0}]


def _metric_wrong_type(record: dict) -> None:
    for t in record["document"]["tensors"]:
        t["metrics"]["kappa"] = {"not": "a number"}


def _step_missing_status(record: dict) -> None:
    del record["status"]


@pytest.mark.parametrize("damage", [_missing_condition, _metric_wrong_type,
                                    _step_missing_status])
def test_damaged_cache_entries_are_recomputed_with_one_warning(tmp_path, damage):
    run, cache = weights_only_run(tmp_path / "run", steps=2), tmp_path / "cache"
    clean = spectrum("batch", run, "--cache-dir", cache, "--json", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == 2
    for p in entries:
        record = json.loads(p.read_text())
        damage(record)
        p.write_text(json.dumps(record))
    r = spectrum("batch", run, "--cache-dir", cache, "--json", cwd=tmp_path)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["summary"]["from_cache"] == 0
    assert [c["indicators"] for c in doc["checkpoints"]] == \
        [c["indicators"] for c in json.loads(clean.stdout)["checkpoints"]]
    for p in entries:
        assert r.stderr.count(p.name) == 1, r.stderr
        assert "damaged" in r.stderr
        assert json.loads(p.read_text())["status"] == "ok"  # overwritten whole
    again = spectrum("batch", run, "--cache-dir", cache, "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["summary"]["from_cache"] == 2 and "warning" not in again.stderr


# --------------------------------------------------------------------------- --on-alert

FLOOD = """import sys
chunk = b"y" * (1 << 20)
for _ in range({mb}):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.write(b"\\nflood over\\n")
"""

MEASURE = """import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, timeout=300)
sys.stderr.buffer.write(r.stderr)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_a_flooding_alert_command_costs_no_memory(tmp_path):
    """1 GiB of output from the --on-alert command: read as it comes and dropped but for
    its last lines (which are shown), not gathered in memory."""
    run = aged(weights_only_run(tmp_path / "run", steps=1))
    hook = tmp_path / "flood.py"
    hook.write_text(FLOOD.format(mb=1024))
    try:
        r = subprocess.run([sys.executable, "-c", MEASURE, spectrum_exe(), "watch", run,
                            *FAST, "--no-cache", "--idle-timeout", "5", "--fail-on",
                            "kappa>1", "--on-alert", f"{sys.executable} {hook}"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the watch hung on a flooding --on-alert command")
    code, maxrss_kb = map(int, r.stdout.split())
    assert code == 1, r.stderr
    no_traceback(r)
    assert "on-alert: flood over" in r.stderr
    assert len(r.stderr) < 20_000  # a few lines, each cut short
    assert maxrss_kb < 600 * 1024, maxrss_kb  # far below the 1 GiB it wrote


LINGER = """import subprocess, sys
child = subprocess.Popen(["sleep", "300"], stdout={out})
open(sys.argv[1], "w").write(str(child.pid))
print("left a child", flush=True)
"""


@pytest.mark.parametrize("out", ["subprocess.DEVNULL", "None"])
def test_an_alert_command_leaves_no_process_running(tmp_path, out):
    """The command runs in its own process group, killed as a whole once it has ended:
    its ``sleep 300`` (with or without the output pipe) does not outlive it."""
    run = aged(weights_only_run(tmp_path / "run", steps=1))
    hook, pid_file = tmp_path / "linger.py", tmp_path / "child.pid"
    hook.write_text(LINGER.format(out=out))
    r = spectrum("watch", run, *FAST, "--no-cache", "--idle-timeout", "5", "--fail-on",
                 "kappa>1", "--on-alert", f"{sys.executable} {hook} {pid_file}",
                 cwd=tmp_path, timeout=25)  # the hook's limit is 30 s: never reached
    no_traceback(r)
    assert r.returncode == 1, r.stderr
    assert "left a child" in r.stderr and "warning: --on-alert" not in r.stderr
    assert not running(int(pid_file.read_text()))


# --------------------------------------------------------------------------- /proc, FIFOs


@pytest.mark.parametrize("command", ["batch", "watch"])
def test_symlinks_out_of_the_folder_are_refused_before_reading(tmp_path, command):
    run = weights_only_run(tmp_path / "run", steps=1)
    (run / "step-00100.safetensors").symlink_to("/proc/self/pagemap")
    (run / "checkpoint-200").mkdir()
    (run / "checkpoint-200" / "model.safetensors").symlink_to("/proc/self/pagemap")
    (run / "checkpoint-200" / "trainer_state.json").write_text("{}")
    (run / "step-00300.pt").symlink_to(tmp_path / "elsewhere.pt")
    (tmp_path / "elsewhere.pt").write_bytes(b"not read")
    os.mkfifo(run / "step-00400.pt")
    extra = (*FAST, "--idle-timeout", "2") if command == "watch" else ("--no-progress",)
    r = spectrum(command, run, "--no-cache", *extra, cwd=tmp_path, timeout=90)
    no_traceback(r)
    assert r.returncode == 2, r.stderr
    shown = r.stderr.replace("\n", " ")
    for name in ("step-00100.safetensors", "checkpoint-200", "step-00300.pt",
                 "step-00400.pt"):
        assert name in shown, (name, r.stderr)
    assert "leading out of the folder" in shown and "FIFO" in shown
    assert "1 checkpoints analysed" in r.stdout  # step 0 still is


# --------------------------------------------------------------------------- outputs


def hf_run(tmp_path: Path) -> Path:
    src = weights_only_run(tmp_path / "src", steps=2)
    run = tmp_path / "run"
    shutil.copytree(src, run)
    hf = run / "checkpoint-300"
    hf.mkdir()
    shutil.copy(src / "step-00100.safetensors", hf / "model.safetensors")
    (hf / "trainer_state.json").write_text(json.dumps({"global_step": 300,
                                                       "log_history": []}))
    return aged(run)


@pytest.mark.parametrize("command", ["batch", "watch"])
@pytest.mark.parametrize("option, target", [
    ("--report", "checkpoint-300/r.h5"), ("--report", "checkpoint-300/sub/r.h5"),
    ("--tensorboard", "checkpoint-300/tb"), ("--tensorboard", "checkpoint-300")])
def test_outputs_inside_a_checkpoint_folder_are_refused(tmp_path, command, option, target):
    run = hf_run(tmp_path)
    (run / "checkpoint-300" / "sub").mkdir()
    before = tree(run)
    extra = (*FAST, "--idle-timeout", "2") if command == "watch" else ("--no-progress",)
    r = spectrum(command, run, "--no-cache", option, run / target, *extra, cwd=tmp_path)
    no_traceback(r)
    assert r.returncode == 2, r.stderr
    assert "checkpoint-300" in r.stderr and ("input folder" in r.stderr
                                             or "checkpoint folder" in r.stderr), r.stderr
    assert tree(run) == before and sorted(os.listdir(run / "checkpoint-300")) == \
        ["model.safetensors", "sub", "trainer_state.json"]


def test_a_report_beside_the_checkpoints_is_fine(tmp_path):
    run = hf_run(tmp_path)
    r = spectrum("batch", run, "--no-cache", "--no-progress", "--report", run / "t.h5",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (run / "t.h5").is_file()


# --------------------------------------------------------------------------- half-written


def test_a_half_written_checkpoint_leaves_no_stale_error(tmp_path):
    """``last.pt`` (its step, 5, stored inside) is seen half-written, settles, fails
    to read; then the trainer finishes it: it is read again, measured, and the run ends
    well (exit 0), its earlier error dropped."""
    run = tmp_path / "run"
    run.mkdir()
    data = (SGD / "step-00005.pt").read_bytes()
    last = run / "last.pt"
    last.write_bytes(data[:len(data) // 2])
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([spectrum_exe(), "watch", run, *FAST, "--no-cache",
                                 "--idle-timeout", "3", "--json"], stdout=subprocess.PIPE,
                                stderr=fh, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while "error:" not in err.read_text():
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, "the half-written file was never read"
                time.sleep(0.05)
            tmp = run / ".last.pt.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, last)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err.read_text()
    assert "Traceback" not in stderr
    assert proc.returncode == 0, stderr
    doc = json.loads(out)
    assert [(c["step"], c["status"]) for c in doc["checkpoints"]] == [(5, "ok")]
    assert doc["summary"]["failed"] == 0
