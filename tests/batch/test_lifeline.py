"""Workers die with ``spectrum batch`` (issue 10, item 12): a SIGKILL or SIGTERM of the
parent leaves no forkserver, worker or resource tracker behind (they held the output
pipe open for minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.batch.folders import slow_run, spectrum_exe

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw.rsplit(b")", 1)[1].decode().split()


def running(pid: int, started: str) -> bool:
    """Whether the process ``pid`` that started at clock tick ``started`` still runs."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] not in ("Z", "X")


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid`` with its start time (pid reuse cannot fool us)."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                fields = _stat(child)
                if fields is not None and child not in found:
                    found[child] = fields[19]
                    todo.append(child)
    return found


def _forkserver(pids) -> bool:
    for pid in pids:
        try:
            if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def in_group(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            fields = _stat(int(d.name))
            if fields is not None and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                out.append(int(d.name))
    return out


@pytest.fixture
def slow_dir(tmp_path):
    return slow_run(tmp_path / "run")


def _start(folder: Path, tmp_path: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [spectrum_exe(), "batch", str(folder), "--jobs", "2", "--no-cache", "--json",
           "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env,
                            cwd=tmp_path, start_new_session=True, text=True)


def _wait_for_workers(proc: subprocess.Popen, timeout: float = 90) -> dict[int, str]:
    """Descendants once the forkserver has forked two workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "batch ended before its workers started"
        tree = descendants(proc.pid)
        grandchildren = [p for p in tree if _stat(p) and _stat(p)[1] != str(proc.pid)]
        if len(grandchildren) >= 2:
            time.sleep(0.3)  # let the workers finish their initializer
            return descendants(proc.pid)
        time.sleep(0.1)
    raise AssertionError(f"no workers after {timeout} s")


def _assert_all_gone(proc: subprocess.Popen, tree: dict[int, str], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [p for p, t in tree.items() if running(p, t)] + in_group(proc.pid)
        if not alive:
            break
        time.sleep(0.1)
    alive = [p for p, t in tree.items() if running(p, t)] + in_group(proc.pid)
    assert not alive, f"still running {within} s after the parent died: {sorted(set(alive))}"
    if proc.stdout is not None and not proc.stdout.closed:
        proc.stdout.read()  # EOF: nothing holds the pipe any more


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_die_with_the_parent(slow_dir, tmp_path, sig):
    proc = _start(slow_dir, tmp_path)
    try:
        tree = _wait_for_workers(proc)
        assert len(tree) >= 3, tree  # forkserver, two workers (and the resource tracker)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=10) == -sig
        _assert_all_gone(proc, tree, within=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in in_group(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("when", ["forkserver-starting", "workers-running"])
def test_ctrl_c_stops_everything_without_a_traceback(slow_dir, tmp_path, when):
    """Ctrl-C signals the whole process group: the parent alone reacts; the forkserver
    (even while it imports torch) and the workers print nothing."""
    proc = _start(slow_dir, tmp_path, stderr=subprocess.PIPE)
    try:
        if when == "workers-running":
            tree = _wait_for_workers(proc)
        else:  # the forkserver is importing torch (about 2 s)
            deadline = time.monotonic() + 60
            while not _forkserver(tree := descendants(proc.pid)):
                assert time.monotonic() < deadline, "no forkserver started"
                time.sleep(0.01)
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, stderr)
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
        _assert_all_gone(proc, tree, within=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in in_group(proc.pid):
            os.kill(pid, signal.SIGKILL)


def _ended_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


def test_a_worker_that_cannot_start_is_quiet_only_once_its_parent_has_gone(capsys):
    """The forkserver's children: an error while loading what the parent sent (its
    semaphores unlinked by a Ctrl-C'd parent) prints nothing when the parent has ended,
    and its traceback when the parent still runs."""
    from spectrum_cli.runs.executors import quiet_once_orphaned

    try:
        raise FileNotFoundError(2, "No such file or directory")
    except FileNotFoundError:
        info = sys.exc_info()
    quiet_once_orphaned(_ended_pid(), grace=0.2)(*info)
    assert capsys.readouterr().err == ""
    t0 = time.monotonic()
    quiet_once_orphaned(os.getpid(), grace=0.2)(*info)
    assert time.monotonic() - t0 >= 0.2
    err = capsys.readouterr().err
    assert "Traceback" in err and "FileNotFoundError" in err, err


#: A parent that starts one worker through a real multiprocessing forkserver which
#: preloads spectrum_cli.runs.executors, the batch's main pid being argv[1] ("self": its own).
FORKSERVER_PARENT = """
import multiprocessing as mp, os, sys

def work():
    print("worker ran", flush=True)

if __name__ == "__main__":
    main = str(os.getpid()) if sys.argv[1] == "self" else sys.argv[1]
    os.environ["SPECTRUM_BATCH_MAIN_PID"] = main
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["spectrum_cli.runs.executors"])
    p = ctx.Process(target=work)
    try:
        p.start()
        p.join(60)
        print("exit", p.exitcode, flush=True)
    except Exception as exc:  # the forkserver is gone: no worker can start
        print("no worker:", type(exc).__name__, flush=True)
"""


def test_a_forkserver_whose_batch_has_ended_exits_as_it_starts(tmp_path):
    """The batch's main process was Ctrl-C'd before its forkserver preloaded
    spectrum_cli.runs.executors: the forkserver must not go on to fork workers. With
    the main process alive it serves them; and a process that is not a forkserver but
    carries a stale copy of the variable is left alone."""
    script = tmp_path / "parent.py"
    script.write_text(FORKSERVER_PARENT)
    ended = str(_ended_pid())
    runs = {main: subprocess.run([sys.executable, str(script), main], capture_output=True,
                                 text=True, timeout=120) for main in ("self", ended)}
    assert "worker ran" in runs["self"].stdout and "exit 0" in runs["self"].stdout, runs
    assert "worker ran" not in runs[ended].stdout, runs[ended]
    assert "Traceback" not in runs[ended].stderr, runs[ended].stderr
    code = "import spectrum_cli.runs.executors; print('still here')"
    stale = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "SPECTRUM_BATCH_MAIN_PID": ended}, timeout=60)
    assert (stale.returncode, stale.stdout, stale.stderr) == (0, "still here\n", "")


def test_a_worker_dies_when_its_parent_does(tmp_path):
    """The lifeline alone: a grandchild that armed it outlives no parent."""
    code = (
        "import os, sys, time\n"
        "from spectrum_cli.runs.executors import die_with_parent\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    die_with_parent(os.getppid(), every=0.1)\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        started = _stat(child)[19]
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 3
        while running(child, started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(child, started)
    finally:
        for pid in in_group(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
