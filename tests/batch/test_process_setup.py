"""How a measuring process is set up beyond its threads: glibc's mmap threshold fixed
(:func:`spectrum_cli.runs.threads.steady_malloc`) and the workers' server started before the
headers are read (:func:`spectrum_cli.runs.dispatch.start_workers_early`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from spectrum_cli.runs import threads as X
from spectrum_cli.runs import dispatch as P
from spectrum_cli.runs.executors import Cluster
from spectrum_cli.runs.job import RunOptions

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

#: Frees a 24 MiB block (glibc then raises its threshold to 24 MiB), then fills and frees
#: an 8 MiB one, and prints how much of it the process still holds.
_PROBE = """
import sys
import numpy as np
if sys.argv[1] == "fixed":
    from spectrum_cli.runs.threads import steady_malloc
    steady_malloc()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = np.ones(3 << 20); del big
before = rss()
a = np.ones(1 << 20)
del a
print((rss() - before) / 2**20)
"""


def _held_mib(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_steady_malloc_hands_freed_blocks_back():
    """glibc's default keeps a freed 8 MiB block in the heap after a bigger one was freed
    (the fragmentation this fixes); with the threshold fixed it goes back at once."""
    assert _held_mib("default") >= 7.5
    assert _held_mib("fixed") < 1.0


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_steady_malloc_respects_the_environment_and_runs_once(monkeypatch):
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    import ctypes

    monkeypatch.setattr(ctypes, "CDLL", lambda *a: Libc())
    monkeypatch.setattr(X, "_malloc_fixed", set())
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    X.steady_malloc()
    assert calls == []  # the user's choices stand
    monkeypatch.setattr(X, "_malloc_fixed", set())
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    X.steady_malloc()
    assert calls == [(-1, X.TRIM_THRESHOLD)]  # only what the user left open
    calls.clear()
    monkeypatch.setattr(X, "_malloc_fixed", set())
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    X.steady_malloc()
    X.steady_malloc()
    assert calls == [(-3, X.MMAP_THRESHOLD), (-1, X.TRIM_THRESHOLD)]  # once


#: Allocates, fills and frees a block of argv[1] float64 argv[2] times after the
#: thresholds of argv[3:] ("steady", "hessian"), and prints the page faults that took.
_FAULTS = """
import resource, sys
import numpy as np
from spectrum_cli.runs.threads import hessian_malloc, steady_malloc
np._core.multiarray._set_madvise_hugepage(False)  # 4 KiB pages, as torch's tensors get
words, times = int(sys.argv[1]), int(sys.argv[2])
for step in sys.argv[3:]:
    {"steady": steady_malloc, "hessian": hessian_malloc}[step]()
np.ones(words)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(times):
    a = np.ones(words)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(words: int, times: int, *steps: str, **env_vars: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return int(subprocess.run([sys.executable, "-c", _FAULTS, str(words), str(times),
                               *steps], env={**env, **env_vars}, check=True,
                              capture_output=True, text=True).stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_steady_malloc_does_not_fault_in_each_workspace_again():
    """A freed 1 MiB workspace (a 256x256 complex matrix of the non-normal analysis) is
    reused, not handed back and faulted in again: 200 of them cost the 256 pages of
    one, not 200 x 256 (what the old 1 MiB threshold with glibc's 128 KiB trim
    threshold did: 313,000 faults in the CRNN bench)."""
    old = faults(1 << 17, 200, "steady", MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert old >= 200 * 200
    assert faults(1 << 17, 200, "steady") < 2000


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_hessian_malloc_keeps_the_temporaries_of_each_checkpoint():
    """Under steady_malloc a freed 40 MiB temporary (a Hessian's, each checkpoint) goes
    back to the system and the next one faults its 10,240 pages in again; hessian_malloc
    keeps it in the heap, also when steady_malloc is called after it (a batch's next
    checkpoint)."""
    assert faults(5 << 20, 20, "steady") >= 19 * 10240
    assert faults(5 << 20, 20, "steady", "hessian") < 2000
    assert faults(5 << 20, 20, "hessian", "steady") < 2000


def test_an_optimizer_with_a_hessian_source_raises_the_thresholds(monkeypatch, tmp_path):
    from spectrum_cli.runs import optimizer as O
    from tests.helpers import run_cli

    calls: list[bool] = []
    monkeypatch.setattr(O, "hessian_malloc", lambda: calls.append(True))
    ckpt = tmp_path / "step-00005.pt"  # without the sample folder's spectrum.toml
    ckpt.write_bytes((SAMPLES / "sgd-momentum" / "step-00005.pt").read_bytes())
    assert run_cli("analyze", ckpt, "--json").exit_code in (0, 1) and calls == []
    r = run_cli("analyze", ckpt, "--json", "--model", "spectrum_cli.examples:two_layer_relu",
                "--data", "spectrum_cli.examples:paper_regression", "--loss", "mse")
    assert r.exit_code in (0, 1), r.output
    assert calls == [True]


@pytest.fixture
def started(monkeypatch):
    seen: list[bool] = []
    monkeypatch.setattr(P, "start_early", lambda remote=False: seen.append(remote))
    monkeypatch.delenv("SPECTRUM_SCHEDULER", raising=False)
    monkeypatch.delenv("SPECTRUM_SCHEDULER_FILE", raising=False)
    return seen


def test_workers_start_early_only_where_they_will_likely_be_used(started, tmp_path,
                                                                 monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 4096)
    run2 = RunOptions(jobs=2)
    P.start_workers_early(str(folder), RunOptions(jobs=1))
    P.start_workers_early(str(folder), run2)  # small: maybe no workers at all
    P.start_workers_early(str(folder), RunOptions(jobs=2, executor="serial"))
    assert started == []
    monkeypatch.setattr(P, "EARLY_START_BYTES", 4096)
    P.start_workers_early(str(folder), run2)
    P.start_workers_early(str(folder / "model.safetensors"), run2)
    P.start_workers_early("s3://bucket/ckpt", run2)  # remote: no request made here
    P.start_workers_early(str(tmp_path / "missing"), run2)  # opening it will say why
    assert started == [False, False, True]
    on_cluster = RunOptions(jobs=2, cluster=Cluster("tcp://127.0.0.1:1"))
    P.start_workers_early("s3://bucket/ckpt", on_cluster)  # a cluster does the work
    assert started == [False, False, True]
