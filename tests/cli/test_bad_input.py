"""Bad input gets a clear error and a documented exit code, never a traceback."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectrum_cli.core.errors import ExitCode
from tests.helpers import run_cli, run_json


def assert_clean_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    for f in fragments:
        assert f in result.stderr, (f, result.stderr)


def test_missing_path():
    assert_clean_error(run_cli("analyze", "nope.pt"), 2, "no such file or directory")


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("analyze", tmp_path / "empty"), 2, "empty directory")


def test_directory_without_weights(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hi")
    assert_clean_error(run_cli("analyze", tmp_path / "d"), 2, "no model weights found",
                       "notes.txt")


def test_unreadable_directory(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    real = os.listdir

    def deny(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "listdir", deny)  # root ignores chmod, so simulate it
    assert_clean_error(run_cli("analyze", tmp_path / "locked"), 2, "cannot list directory")


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2, 2)}, path)
    real_open = open

    def deny(p, *a, **k):
        if str(p) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(p, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    assert_clean_error(run_cli("analyze", path), 2, "cannot read")


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    assert_clean_error(run_cli("analyze", tmp_path / "e.pt"), 2, "empty file")


def test_random_bytes(tmp_path):
    (tmp_path / "r.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    assert_clean_error(run_cli("analyze", tmp_path / "r.pt"), 2, "unrecognized format")


def _truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("kind", ["torch", "torch-legacy", "safetensors", "npz", "npy"])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_files(tmp_path, kind, keep):
    w = torch.randn(64, 64)
    path = tmp_path / f"t.{kind}"
    if kind == "torch":
        torch.save({"w": w}, path)
    elif kind == "torch-legacy":
        torch.save({"w": w}, path, _use_new_zipfile_serialization=False)
    elif kind == "safetensors":
        save_file({"w": w}, str(path))
    elif kind == "npz":
        np.savez(open(path, "wb"), w=w.numpy())
    else:
        np.save(open(path, "wb"), w.numpy())
    _truncate(path, keep)
    result = run_cli("analyze", path)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr.lower()


def test_nan_and_inf_are_reported_per_tensor(tmp_path):
    bad = torch.randn(5, 5)
    bad[0, 0], bad[1, 1], bad[2, 2] = float("nan"), float("inf"), float("-inf")
    save_file({"bad": bad, "good": torch.randn(5, 3)}, str(tmp_path / "m.safetensors"))
    doc, result = run_json(tmp_path / "m.safetensors")
    assert result.exit_code == 0
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["bad"]["status"] == "nonfinite"
    assert by["bad"]["metrics"] == {"nonfinite_count": 3}
    assert "1 NaN and 2 Inf" in by["bad"]["notes"][0]
    assert by["good"]["status"] == "ok" and by["good"]["metrics"]["nonfinite_count"] == 0
    table = run_cli("analyze", tmp_path / "m.safetensors")
    assert "NaN/Inf" in table.stdout and "non-finite: bad" in table.stdout
    gate = run_cli("analyze", tmp_path / "m.safetensors", "--fail-on", "nonfinite_count>0")
    assert gate.exit_code == 1


def test_all_zero_matrix(tmp_path):
    save_file({"z": torch.zeros(4, 6)}, str(tmp_path / "z.safetensors"))
    doc, result = run_json(tmp_path / "z.safetensors")
    m = doc["tensors"][0]["metrics"]
    assert m["kappa"] == "inf" and m["spectral_entropy"] is None
    assert result.exit_code == 0
    assert "σ_min = 0" in run_cli("analyze", tmp_path / "z.safetensors").stdout


@pytest.mark.parametrize("shape", [(1, 9), (9, 1)])
def test_vector_shaped_matrices(tmp_path, shape):
    w = torch.randn(*shape, dtype=torch.float64)
    save_file({"v": w}, str(tmp_path / "v.safetensors"))
    doc, result = run_json(tmp_path / "v.safetensors")
    m = doc["tensors"][0]["metrics"]
    assert m["kappa"] == 1.0 and m["sigma_max"] == pytest.approx(float(w.norm()), rel=1e-14)
    assert m["spectral_gap"] is None and m["numerical_rank"] == 1


def test_checkpoint_without_matrices_exits_5(tmp_path):
    torch.save({"b": torch.randn(4), "step": torch.tensor(3), "ids": torch.ones(2, 2,
               dtype=torch.int64)}, tmp_path / "nomat.pt")
    result = run_cli("analyze", tmp_path / "nomat.pt")
    assert result.exit_code == ExitCode.NOTHING_MATCHED == 5
    assert "no matrix matched" in result.stderr
    doc, result = run_json(tmp_path / "nomat.pt")
    assert result.exit_code == 5 and doc["tensors"] == [] and len(doc["skipped"]) == 3


def test_selection_that_matches_nothing_exits_5(tmp_path):
    torch.save({"w": torch.randn(3, 3)}, tmp_path / "m.pt")
    assert run_cli("analyze", tmp_path / "m.pt", "--include", "nomatch*").exit_code == 5


def test_a_report_of_ours_is_not_a_checkpoint(tmp_path):
    torch.save({"w": torch.randn(3, 3)}, tmp_path / "m.pt")
    assert run_cli("analyze", tmp_path / "m.pt", "--report", tmp_path / "r.h5").exit_code == 0
    assert_clean_error(run_cli("analyze", tmp_path / "r.h5"), 2, "spectrum report show")


def test_internal_errors_exit_3_without_traceback(tmp_path, monkeypatch):
    torch.save({"w": torch.randn(3, 3)}, tmp_path / "m.pt")

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("spectrum_cli.core.metrics.entry_metrics", broken)
    result = run_cli("analyze", tmp_path / "m.pt")
    assert_clean_error(result, 3, "internal error", "ZeroDivisionError")


def test_per_tensor_read_error_keeps_going_and_exits_2(tmp_path, monkeypatch):
    from spectrum_cli.core.errors import InputError
    from spectrum_cli.io import safetensors_file

    save_file({"a": torch.randn(3, 3), "b": torch.randn(4, 4)}, str(tmp_path / "m.safetensors"))
    real = safetensors_file.SafetensorsSource.read

    def flaky(self, name):
        if name == "a":
            raise InputError("short read of 'a'")
        return real(self, name)

    monkeypatch.setattr(safetensors_file.SafetensorsSource, "read", flaky)
    doc, result = run_json(tmp_path / "m.safetensors")
    assert result.exit_code == 2
    assert [t["name"] for t in doc["tensors"]] == ["b"]
    assert doc["errors"] == [{"name": "a", "message": "short read of 'a'"}]
    assert json.loads(json.dumps(doc)) == doc
    assert not math.isnan(doc["summary"]["time_s"])
