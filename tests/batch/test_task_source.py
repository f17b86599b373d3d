"""A worker's tasks of one run share the source they open (issue 12, item 1 and 3): a
sharded safetensors folder's index and headers are read once per worker and run, not
once per tensor (from object storage that was ~4 requests and ~46 ms a task). Sources
that hold files or tensors (torch zip files) are still opened and closed per task."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from spectrum_cli import io as spectrum_io
from spectrum_cli.runs import dispatch as P
from spectrum_cli.core.analyze import AnalyzeOptions, groups, plan_source
from spectrum_cli.io import LoadPolicy, open_source

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PT = ROOT / "sample_checkpoints" / "tiny-mlp" / "checkpoint.pt"


def sharded(folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    names = [f"layers.{i}.{w}.weight" for i in range(3) for w in ("q", "up")]
    tensors = {n: rng.standard_normal((48, 32) if "up" in n else (32, 32)).astype(np.float32)
               for n in names}
    folder.mkdir(exist_ok=True)
    weight_map = {}
    for k, part in enumerate((names[:3], names[3:])):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / shard))
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.fixture
def counted(monkeypatch):
    """Every source open_source returns, in order (measure_task opens through it)."""
    opened: list = []
    real = spectrum_io.open_source

    def counting(path, policy=None):
        source = real(path, policy)
        opened.append(source)
        return source

    monkeypatch.setattr(P, "open_source", counting)
    monkeypatch.setattr(P, "_sources", {})
    return opened


def tasks(path: Path) -> list:
    with open_source(str(path), LoadPolicy()) as source:
        planned, _ = plan_source(source, AnalyzeOptions())
    return groups(planned)


def values(results: list) -> list:
    return [(r.name, r.singular_values.values.tolist()) for r in results]


def test_tasks_of_one_run_open_a_sharded_folder_once(tmp_path, counted):
    path = sharded(tmp_path / "m")
    parts = tasks(path)
    assert len(parts) == 6
    fresh = [values(P.measure_task(str(path), LoadPolicy(), AnalyzeOptions(), g))
             for g in parts]
    assert len(counted) == 6  # no run named: one open per task, as before
    counted.clear()
    shared = [values(P.measure_task(str(path), LoadPolicy(), AnalyzeOptions(), g, "run-a"))
              for g in parts]
    assert shared == fresh  # every value, bit for bit
    assert len(counted) == 1 and counted[0].shareable
    P.measure_task(str(path), LoadPolicy(), AnalyzeOptions(), parts[0], "run-b")
    assert len(counted) == 2  # another run reads the headers afresh


def test_the_folder_changing_between_runs_is_seen(tmp_path, counted):
    path = sharded(tmp_path / "m")
    first = tasks(path)[0]
    before = values(P.measure_task(str(path), LoadPolicy(), AnalyzeOptions(), first, "r1"))
    sharded(path, seed=1)  # the same names, other values
    after = values(P.measure_task(str(path), LoadPolicy(), AnalyzeOptions(), first, "r2"))
    assert before[0][0] == after[0][0] and before != after


def test_sources_that_hold_files_are_opened_and_closed_per_task(counted, monkeypatch):
    closed: list = []
    parts = tasks(SAMPLE_PT)
    for g in parts:
        P.measure_task(str(SAMPLE_PT), LoadPolicy(), AnalyzeOptions(), g, "run-pt")
    assert len(counted) == len(parts) >= 2
    assert not any(s.shareable for s in counted) and P._sources == {}
    assert all(getattr(s, "_tensors", None) == {} for s in counted)  # closed


def test_at_most_keep_sources_runs_are_remembered(tmp_path, counted):
    path = sharded(tmp_path / "m")
    g = tasks(path)[0]
    for k in range(P.KEEP_SOURCES + 3):
        P.measure_task(str(path), LoadPolicy(), AnalyzeOptions(), g, f"run-{k}")
    assert len(P._sources) == P.KEEP_SOURCES
    assert {key[2] for key in P._sources} == {f"run-{k}" for k in range(3, P.KEEP_SOURCES + 3)}


def test_threads_of_one_worker_share_the_source_safely(tmp_path, counted):
    """A Dask worker runs tasks in threads: each gets a whole source, the results are
    those of fresh opens, and one source stays remembered."""
    path = sharded(tmp_path / "m")
    parts = tasks(path) * 4
    expected = [values(P.measure_task(str(path), LoadPolicy(), AnalyzeOptions(), g))
                for g in parts]
    got: list = [None] * len(parts)
    start = threading.Barrier(8)

    def work(k: int) -> None:
        start.wait()
        for i in range(k, len(parts), 8):
            got[i] = values(P.measure_task(str(path), LoadPolicy(), AnalyzeOptions(),
                                           parts[i], "threads"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    assert [key[2] for key in P._sources] == ["threads"]
