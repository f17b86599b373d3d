"""Issue 23: what a folder holds is declared by the readers. A reader registered only
through an entry point of a third-party distribution (a dist-info folder on the path,
nothing installed, nothing in spectrum edited), with its own suffix ``.fakeckpt`` and
its own folder marker, is found by ``analyze``, ``batch`` and ``watch`` through the
installed console script; a reader that declares no layout keeps working for a file
named outright, and is invisible to a folder's discovery."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from spectrum_cli import plugins
from spectrum_cli.core.errors import InputError
from spectrum_cli.io import layout
from spectrum_cli.io.base import FolderMarker
from spectrum_cli.io.readers import (HFFolderReader, NpyReader, NpzReader,
                                     SafetensorsReader, TorchLegacyReader, TorchZipReader)
from tests.helpers import oracle_svdvals
from tests.plugins.fake import spectrum

FAST_WATCH = ("--poll", "0.1", "--settle", "0.2", "--idle-timeout", "1", "--no-cache",
              "--no-progress")


def payload(step: int, arrays: dict) -> bytes:
    return json.dumps({"step": step, "tensors": {k: np.asarray(v).tolist()
                                                 for k, v in arrays.items()}}).encode()


def write_ckpt(path: Path, step: int, arrays: dict) -> Path:
    path.write_bytes(b"FAKECKPT\n" + payload(step, arrays))
    return path


def aged(folder: Path) -> Path:
    """Every file as if written long ago: a watch need not wait for it to settle."""
    past = time.time() - 100
    for f in folder.rglob("*"):
        os.utime(f, (past, past))
    return folder


def kappa(a) -> float:
    s = oracle_svdvals(np.asarray(a, dtype=np.float64))
    return float(s[0] / s[-1])


# --------------------------------------------------------------------------- declared


def test_builtin_readers_declare_their_layout():
    assert TorchZipReader.suffixes == TorchLegacyReader.suffixes == \
        (".pt", ".pth", ".ckpt", ".bin")
    assert SafetensorsReader.suffixes == (".safetensors",)
    assert NpzReader.suffixes == (".npz",) and NpyReader.suffixes == (".npy",)
    (hf,) = HFFolderReader.folder_markers
    assert hf.marks("checkpoint-20", lambda f: False) and not hf.marks("ckpt", bool)
    plugins.clear_cache()
    assert set(layout.suffixes()) == {".pt", ".pth", ".ckpt", ".bin", ".safetensors",
                                      ".npz", ".npy"}
    kinds = [m.kind for m in layout.folder_markers()]
    assert kinds == ["dcp", "hf"]  # priority order: a DCP checkpoint-<n>/ is DCP
    with pytest.raises(ValueError):
        FolderMarker("any", "every folder")  # a marker never takes every folder


def test_a_folder_of_npz_files_is_a_run(tmp_path):
    """Before issue 23 a folder of .npz (or .npy) files held no checkpoints."""
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(3)
    for step in (10, 20):
        np.savez(run / f"step-{step}.npz", w=rng.standard_normal((5, 4)))
    np.save(run / "step-30.npy", rng.standard_normal((5, 4)))
    plugins.clear_cache()
    found = layout.discover(str(run))
    assert [Path(c.path).name for c in found] == ["step-10.npz", "step-20.npz",
                                                  "step-30.npy"]


def test_the_message_lists_the_derived_layout(fake_dist, tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to read")
    with pytest.raises(InputError) as err:
        layout.discover(str(tmp_path))
    message = str(err.value)
    for what in (".pt", ".safetensors", ".npz", ".npy", ".fakeckpt", "checkpoint-<step>/",
                 "DCP folders", "folders holding FAKE_MANIFEST"):
        assert what in message, message


def test_plugin_layout_is_derived_in_process(fake_dist, tmp_path):
    assert layout.suffixes()[-1] == ".fakeckpt"  # after the built-ins, by priority
    assert "FAKE_MANIFEST" in [h for m in layout.folder_markers() for h in m.holds]
    run = tmp_path / "run"
    run.mkdir()
    write_ckpt(run / "a-2.fakeckpt", 2, {"w": np.eye(3)})
    (run / "b-1.nolayout").write_bytes(b"NOLAYOUT\n" + payload(1, {"w": np.eye(2)}))
    (run / "folder-3").mkdir()
    (run / "folder-3" / "FAKE_MANIFEST").write_bytes(payload(3, {"w": np.eye(4)}))
    (run / "other-4").mkdir()  # no marker: not a checkpoint
    names = [Path(c.path).name for c in layout.discover(str(run))]
    assert names == ["a-2.fakeckpt", "folder-3"]  # the reader without a layout is not seen
    found = layout.local_checkpoint_folder(str(run / "folder-3"), "folder-3")
    assert found is not None and found.kind == "fakefolder" and found.missing is None
    assert layout.local_checkpoint_folder(str(run / "other-4"), "other-4") is None


# --------------------------------------------------------------------------- end to end


def test_analyze_batch_and_watch_find_the_plugin_format(fake_dist, tmp_path):
    rng = np.random.default_rng(23)
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((6, 6))
    run = tmp_path / "run"
    run.mkdir()
    write_ckpt(run / "step-100.fakeckpt", 100, {"w": a})
    write_ckpt(run / "step-200.fakeckpt", 200, {"w": b})
    (run / "README.txt").write_text("not a checkpoint")
    aged(run)
    want = {100: kappa(a), 200: kappa(b)}

    # analyze FILE: chosen by content among the registered readers
    r = spectrum("analyze", run / "step-100.fakeckpt", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["source"]["format"] == "fakeckpt" and doc["checkpoint"]["step"] == 100
    (t,) = doc["tensors"]
    assert t["metrics"]["kappa"] == pytest.approx(want[100], rel=1e-9)

    # batch DIR: the folder's discovery knows the plugin's suffix
    r = spectrum("batch", run, "--json", "--no-cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [Path(c["path"]).name for c in doc["checkpoints"]] == \
        ["step-100.fakeckpt", "step-200.fakeckpt"]
    assert [c["step"] for c in doc["checkpoints"]] == [100, 200]
    assert [c["status"] for c in doc["checkpoints"]] == ["ok", "ok"]

    # watch DIR: its listing knows it too, and ends at the idle timeout
    r = spectrum("watch", run, "--json", *FAST_WATCH)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [Path(c["path"]).name for c in doc["checkpoints"]] == \
        ["step-100.fakeckpt", "step-200.fakeckpt"]
    assert [c["step"] for c in doc["checkpoints"]] == [100, 200]


def test_plugin_folder_marker_end_to_end(fake_dist, tmp_path):
    """A plugin's folder marker: batch and watch take the folder whole, and watch waits
    for the marker file before it reads the folder."""
    rng = np.random.default_rng(5)
    run = tmp_path / "run"
    (run / "save-1").mkdir(parents=True)
    (run / "save-1" / "FAKE_MANIFEST").write_bytes(
        payload(1, {"w": rng.standard_normal((4, 3))}))
    (run / "save-2").mkdir()  # no manifest yet: not a checkpoint
    (run / "save-2" / "part").write_text("half written")
    aged(run)
    r = spectrum("batch", run, "--json", "--no-cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert [Path(c["path"]).name for c in json.loads(r.stdout)["checkpoints"]] == ["save-1"]
    r = spectrum("watch", run, "--json", *FAST_WATCH)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(Path(c["path"]).name, c["step"]) for c in doc["checkpoints"]] == [("save-1", 1)]


def test_a_reader_without_a_layout_still_opens_a_file_named_outright(fake_dist, tmp_path):
    src = tmp_path / "weights.bin2"
    src.write_bytes(b"NOLAYOUT\n" + payload(9, {"w": np.diag([4.0, 2.0])}))
    r = spectrum("analyze", src, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["source"]["format"] == "nolayout" and doc["checkpoint"]["step"] == 9
    r = spectrum("batch", tmp_path, "--json", "--no-cache", "--no-progress")
    assert r.returncode == 2 and "no checkpoints found" in r.stderr
