"""Issue 12 item 1 (batch part): a big checkpoint's tensors in parallel, and --max-memory
for batch. The trajectory is the same whichever way the work was split."""

from __future__ import annotations

import json

import pytest

from spectrum_cli.runs import batch as B
from tests.batch.folders import weights_only_run
from tests.helpers import run_cli


def trajectory(target, *args: str) -> dict:
    r = run_cli("batch", target, "--json", "--no-cache", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def comparable(doc: dict) -> list:
    return [(c["path"], c["step"], c["indicators"], c["document"]["tensors"])
            for c in doc["checkpoints"]] if "document" in doc["checkpoints"][0] else [
        (c["path"], c["step"], c["indicators"]) for c in doc["checkpoints"]]


def test_split_rule():
    big = B.BIG_CHECKPOINT
    assert B.parallel_over(5, 1, [10] * 5, None) == "checkpoints"  # one job: no split
    assert B.parallel_over(5, 2, [10] * 5, None) == "checkpoints"
    assert B.parallel_over(1, 2, [10], None) == "tensors"  # fewer misses than workers
    assert B.parallel_over(5, 2, [10, big, 10, 10, 10], None) == "tensors"
    assert B.parallel_over(5, 2, [10] * 5, 8 << 30) == "tensors"  # --max-memory
    assert B.parallel_over(0, 2, [], None) == "checkpoints"


def test_one_checkpoint_with_two_jobs_splits_its_tensors(tmp_path):
    run = weights_only_run(tmp_path / "run", steps=1)
    one = trajectory(run)
    two = trajectory(run, "--jobs", "2")
    assert two["settings"]["parallel_over"] == "tensors"
    assert one["settings"]["parallel_over"] == "checkpoints"
    assert comparable(one) == comparable(two)  # every number, bit for bit


def test_max_memory_splits_tensors_and_gives_the_same_trajectory(tmp_path):
    run = weights_only_run(tmp_path / "run", steps=3)
    one = trajectory(run)
    limited = trajectory(run, "--jobs", "2", "--max-memory", "1GiB")
    assert limited["settings"]["parallel_over"] == "tensors"
    assert comparable(one) == comparable(limited)
    several = trajectory(run, "--jobs", "2")
    assert several["settings"]["parallel_over"] == "checkpoints"
    assert comparable(one) == comparable(several)


def test_max_memory_below_the_largest_tensor_is_an_error_naming_it(tmp_path):
    run = weights_only_run(tmp_path / "run", steps=2)
    r = run_cli("batch", run, "--json", "--no-cache", "--jobs", "2", "--max-memory", "1KB")
    assert r.exit_code == 2
    assert "max-memory" in r.stderr or "max_memory" in r.stderr


@pytest.mark.parametrize("bad", ["lots", "-1GB"])
def test_max_memory_must_be_a_size(tmp_path, bad):
    run = weights_only_run(tmp_path / "run", steps=1)
    r = run_cli("batch", run, "--no-cache", "--max-memory", bad)
    assert r.exit_code == 2 and "--max-memory" in r.stderr
