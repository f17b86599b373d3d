"""When a checkpoint is complete and settled (spectrum_cli.runs.watch.Follower), on a fake
clock: files, HF checkpoint folders, DCP folders, and a checkpoint written in halves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from spectrum_cli.runs.watch import Follower, LocalFolder, Watch, resolve
from tests.batch.folders import matrix

WALL = 1_000_000.0  # the fake wall clock, seconds since the epoch


class Clock:
    """Monotonic and wall time that move only when told."""

    def __init__(self) -> None:
        self.t = 0.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL + self.t

    def touch(self, path: Path, ago: float = 0.0) -> None:
        """Set ``path``'s modification time to ``ago`` seconds before now."""
        os.utime(path, (self.wall() - ago, self.wall() - ago))


@pytest.fixture
def clock():
    return Clock()


def follower(folder: Path, clock: Clock, settle: float = 2.0) -> Follower:
    return Follower(LocalFolder(str(folder)), settle, clock.mono, clock.wall)


def names(items) -> list[str]:
    return [Path(getattr(i, "item", i).path).name for i in items]


def write(path: Path, data: bytes, clock: Clock) -> None:
    path.write_bytes(data)
    clock.touch(path)


def test_a_new_file_waits_two_polls_and_the_settle_time(tmp_path, clock):
    f = follower(tmp_path, clock, settle=2.0)
    write(tmp_path / "step-1.pt", b"x" * 10, clock)
    for t in (0.0, 1.0, 1.9):  # unchanged, but not for 2 s yet
        clock.t = t
        ready, pending = f.poll()
        assert ready == [] and names(pending) == ["step-1.pt"]
        assert pending[0].reason == ("new or changed since the last poll" if t == 0 else
                                     f"settling (unchanged for {t:.1f} of 2 s)")
    clock.t = 2.0
    ready, pending = f.poll()
    assert names(ready) == ["step-1.pt"] and pending == []
    clock.t = 3.0
    assert f.poll() == ([], [])  # read once


def test_an_old_file_is_ready_at_the_second_poll(tmp_path, clock):
    f = follower(tmp_path, clock, settle=2.0)
    write(tmp_path / "old.safetensors", b"x", clock)
    clock.touch(tmp_path / "old.safetensors", ago=100)
    assert f.poll()[0] == []  # seen once: not yet compared with anything
    clock.t = 0.1
    assert names(f.poll()[0]) == ["old.safetensors"]


def test_a_growing_file_is_not_ready_until_it_stops(tmp_path, clock):
    f = follower(tmp_path, clock, settle=1.0)
    path = tmp_path / "ckpt-5.bin"
    for i in range(6):  # one more chunk every 0.9 s (less than the settle time)
        clock.t = 0.9 * i
        with open(path, "ab") as fh:
            fh.write(b"y" * 100)
        clock.touch(path)
        ready, pending = f.poll()
        assert ready == [] and names(pending) == ["ckpt-5.bin"]
        assert f.active  # a change keeps the watch from going idle
    clock.t += 0.5
    assert f.poll()[0] == [] and not f.active
    clock.t += 0.5
    assert names(f.poll()[0]) == ["ckpt-5.bin"]


def test_same_size_but_a_new_mtime_or_inode_is_a_change(tmp_path, clock):
    f = follower(tmp_path, clock, settle=1.0)
    path = tmp_path / "last.ckpt"
    write(path, b"a" * 8, clock)
    clock.touch(path, ago=50)
    f.poll()
    clock.t = 0.5
    assert names(f.poll()[0]) == ["last.ckpt"]
    clock.t = 5.0
    replacement = tmp_path / ".tmp"
    write(replacement, b"b" * 8, clock)  # same size, rewritten: read again once settled
    os.replace(replacement, path)
    ready, pending = f.poll()
    assert ready == [] and names(pending) == ["last.ckpt"]
    clock.t = 6.0
    assert names(f.poll()[0]) == ["last.ckpt"]


def test_only_checkpoints_count(tmp_path, clock):
    f = follower(tmp_path, clock, settle=0.0)
    for name in ("notes.txt", "report.h5", ".step-3.pt.tmp", "step-3.pt.part"):
        write(tmp_path / name, b"z", clock)
    (tmp_path / "logs").mkdir()
    write(tmp_path / "logs" / "model.safetensors", b"z", clock)  # not a checkpoint folder
    os.mkfifo(tmp_path / "a-fifo.pt")  # not a regular file: never opened
    assert f.poll() == ([], [])
    clock.t = 1.0
    assert f.poll() == ([], [])


def test_hf_folder_needs_its_weights_and_trainer_state(tmp_path, clock):
    f = follower(tmp_path, clock, settle=1.0)
    d = tmp_path / "checkpoint-20"
    d.mkdir()
    write(d / "optimizer.pt", b"o" * 10, clock)
    _, pending = f.poll()
    assert "weights" in pending[0].reason
    write(d / "model.safetensors", b"w" * 10, clock)
    clock.t = 5.0
    _, pending = f.poll()
    assert pending[0].reason == "waiting for trainer_state.json"
    clock.t = 10.0
    assert f.poll()[0] == []  # still no trainer state, however long it waits
    write(d / "trainer_state.json", b"{}", clock)
    clock.t = 10.5
    ready, pending = f.poll()
    assert ready == [] and pending[0].reason == "new or changed since the last poll"
    clock.t = 11.0  # 1 s after its mtime, but the change was seen at 10.5 only
    assert f.poll()[0] == []
    clock.t = 11.5
    ready, _ = f.poll()
    assert names(ready) == ["checkpoint-20"] and ready[0].kind == "hf"


def test_sharded_hf_folder_needs_every_shard(tmp_path, clock):
    f = follower(tmp_path, clock, settle=0.5)
    d = tmp_path / "checkpoint-7"
    d.mkdir()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"a": shards[0], "b": shards[1]}}
    write(d / "model.safetensors.index.json", json.dumps(index).encode(), clock)
    write(d / shards[0], b"s", clock)
    write(d / "trainer_state.json", b"{}", clock)
    _, pending = f.poll()
    assert pending[0].reason == f"waiting for shard {shards[1]}"
    write(d / shards[1], b"s", clock)
    clock.t = 0.2
    f.poll()
    clock.t = 1.0
    assert names(f.poll()[0]) == ["checkpoint-7"]


def test_dcp_folder_is_ready_once_its_metadata_is_written_and_settled(tmp_path, clock):
    f = follower(tmp_path, clock, settle=1.0)
    d = tmp_path / "step_300"
    d.mkdir()
    write(d / "__0_0.distcp", b"d" * 64, clock)
    assert f.poll() == ([], [])  # no .metadata yet: not (yet) a checkpoint
    clock.t = 3.0
    write(d / ".metadata", b"\x80m", clock)
    _, pending = f.poll()
    assert names(pending) == ["step_300"] and pending[0].item.kind == "dcp"
    clock.t = 4.0
    ready, _ = f.poll()
    assert names(ready) == ["step_300"] and ready[0].name_step == 300


def test_a_file_removed_before_it_settles_is_forgotten(tmp_path, clock):
    f = follower(tmp_path, clock, settle=1.0)
    write(tmp_path / "step-1.pt", b"x", clock)
    assert names(f.poll()[1]) == ["step-1.pt"]
    (tmp_path / "step-1.pt").unlink()
    clock.t = 2.0
    assert f.poll() == ([], [])


def test_a_checkpoint_written_in_two_halves_is_read_whole(tmp_path, clock):
    """The watch sees the first half, unchanged for longer than a poll but less than the
    settle time, then the second: it reads the checkpoint once, whole (the same numbers
    as the complete file; the first half alone is not a readable checkpoint)."""
    from spectrum_cli.runs.batch import compute_record

    rng = np.random.default_rng(5)
    whole = tmp_path / "whole.safetensors"
    save_file({"w": matrix(rng, (24, 16), 50.0), "v": matrix(rng, (16, 16), 7.0)}, str(whole))
    data = whole.read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    job, _, _ = resolve(str(run), {}, use_config=False)
    w = Watch(str(run), job, settle=1.0, clock=clock.mono, wall=clock.wall)
    target = run / "step-00042.safetensors"
    with open(target, "wb") as fh:
        fh.write(data[:len(data) // 2])
    clock.touch(target)
    for t in (0.0, 0.3, 0.6, 0.9):
        clock.t = t
        assert w.poll() == []
    half = compute_record(str(target), job, "k")
    assert half["status"] == "error"  # what reading it now would have given
    with open(target, "ab") as fh:
        fh.write(data[len(data) // 2:])
    clock.touch(target)
    for t in (1.0, 1.5, 1.9):
        clock.t = t
        assert w.poll() == []
    clock.t = 2.0
    (item,) = w.poll()
    update = w.analyse(item)
    assert update.record["status"] == "ok" and update.record["step"] == 42
    reference = compute_record(str(whole), job, "k")
    assert update.record["indicators"] == reference["indicators"]
    kappa = {t["name"]: t["metrics"]["kappa"] for t in update.record["document"]["tensors"]}
    for name in ("w", "v"):
        from safetensors.numpy import load_file

        s = np.linalg.svd(load_file(str(whole))[name].astype(np.float64), compute_uv=False)
        assert kappa[name] == pytest.approx(s[0] / s[-1], rel=1e-10)
