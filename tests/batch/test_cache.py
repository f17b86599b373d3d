"""The batch cache is never fatal (issue 10, items 5 and 13): a damaged entry of any
kind is a miss that is recomputed and overwritten atomically; an unusable cache folder is
one warning and the run goes on without a cache; no temporary file is left behind."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest

from spectrum_cli.runs import batch as runs_batch
from spectrum_cli.runs import cache as B
from tests.batch.folders import weights_only_run
from tests.helpers import run_cli

STEPS = 4


@pytest.fixture
def run_dir(tmp_path):
    return weights_only_run(tmp_path / "run", steps=STEPS)


def batch(folder: Path, cache: Path | str, *extra: str):
    result = run_cli("batch", folder, "--cache-dir", cache, "--json", "--no-progress", *extra)
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout), result


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.endswith(".json"))


def leftovers(cache: Path) -> list[str]:
    return [p.name for p in cache.rglob("*") if ".tmp" in p.name]


def _garbage(p: Path) -> None:
    p.write_bytes(b"\x00\xff\xfe garbage \x80" * 50)


def _truncated(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _wrong_schema(p: Path) -> None:
    record = json.loads(p.read_text())
    record["document"]["tensors"] = "not a list"
    p.write_text(json.dumps(record))


def _wrong_key(p: Path) -> None:
    record = json.loads(p.read_text())
    record["key"] = "0" * 64 + "-" + "0" * 16
    p.write_text(json.dumps(record))


def _metrics_not_a_dict(p: Path) -> None:
    record = json.loads(p.read_text())
    record["document"]["tensors"][0]["metrics"] = [1, 2]
    p.write_text(json.dumps(record))


def _deep(p: Path) -> None:
    p.write_text("[" * 200_000 + "]" * 200_000)


def _empty_dir(p: Path) -> None:
    p.unlink()
    p.mkdir()


def _fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


def _device(p: Path) -> None:
    p.unlink()
    p.symlink_to("/dev/zero")


def _metric_of_the_wrong_type(p: Path) -> None:
    record = json.loads(p.read_text())
    for t in record["document"]["tensors"]:
        t["metrics"]["kappa"] = "huge"  # a string that is no number
        t["metrics"]["sigma_max"] = [1.0]
    p.write_text(json.dumps(record))


def _violation_without_condition(p: Path) -> None:
    record = json.loads(p.read_text())
    record["violations"] = [{"tensor": "w", "metric": "kappa", "value": 5.0}]
    p.write_text(json.dumps(record))


def _tensor_without_status(p: Path) -> None:
    record = json.loads(p.read_text())
    del record["document"]["tensors"][0]["status"]
    p.write_text(json.dumps(record))


DAMAGE = {
    "metric-of-the-wrong-type": _metric_of_the_wrong_type,
    "violation-without-condition": _violation_without_condition,
    "tensor-without-status": _tensor_without_status,
    "empty-object": lambda p: p.write_text("{}"),
    "empty-list": lambda p: p.write_text("[]"),
    "null": lambda p: p.write_text("null"),
    "empty-file": lambda p: p.write_bytes(b""),
    "truncated": _truncated,
    "binary-garbage": _garbage,
    "wrong-schema": _wrong_schema,
    "wrong-key": _wrong_key,
    "metrics-not-a-dict": _metrics_not_a_dict,
    "nested-200000-deep": _deep,
    "empty-directory": _empty_dir,
    "fifo": _fifo,
    "symlink-to-dev-zero": _device,
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_entry_is_recomputed_and_overwritten(run_dir, tmp_path, kind):
    cache = tmp_path / "cache"
    clean, _ = batch(run_dir, cache)
    assert clean["summary"]["from_cache"] == 0 and len(entries(cache)) == STEPS
    for p in entries(cache):
        DAMAGE[kind](p)
    doc, result = batch(run_dir, cache)
    assert doc["summary"]["analysed"] == STEPS and doc["summary"]["from_cache"] == 0
    assert [c["indicators"] for c in doc["checkpoints"]] == \
        [c["indicators"] for c in clean["checkpoints"]]
    for p in entries(cache):  # overwritten by a complete record
        assert p.is_file() and not p.is_symlink(), p
        assert json.loads(p.read_text())["status"] == "ok"
    assert leftovers(cache) == []
    again, _ = batch(run_dir, cache)
    assert again["summary"]["from_cache"] == STEPS


def test_a_folder_with_files_where_an_entry_goes_is_left_alone(run_dir, tmp_path):
    cache = tmp_path / "cache"
    batch(run_dir, cache)
    first = entries(cache)[0]
    first.unlink()
    first.mkdir()
    (first / "keep.txt").write_text("not ours")
    doc, result = batch(run_dir, cache)
    assert doc["summary"]["analysed"] == STEPS and doc["summary"]["from_cache"] == STEPS - 1
    assert (first / "keep.txt").read_text() == "not ours"
    assert "is a folder" in result.stderr and leftovers(cache) == []


def _file_as_folder(tmp_path: Path) -> Path:
    f = tmp_path / "a-file"
    f.write_text("x")
    return f


UNUSABLE = {
    "a-file": _file_as_folder,
    "below-a-file": lambda tmp_path: _file_as_folder(tmp_path) / "cache",
    "a-device": lambda tmp_path: Path("/dev/null"),
}


@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_an_unusable_cache_folder_is_one_warning(run_dir, tmp_path, kind):
    cache = UNUSABLE[kind](tmp_path)
    doc, result = batch(run_dir, cache)
    assert doc["summary"]["analysed"] == STEPS and doc["summary"]["failed"] == 0
    assert result.stderr.count("not usable") == 1, result.stderr
    assert str(cache) in result.stderr


def _no_space(real_mkstemp):
    """mkstemp whose file takes no byte: writes land on /dev/full (ENOSPC)."""
    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name
    return mkstemp


def _no_permission(real_mkstemp):
    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    return mkstemp


@pytest.mark.parametrize("failure", [_no_space, _no_permission], ids=["full", "read-only"])
def test_a_full_or_read_only_cache_is_one_warning_and_leaves_no_tmp(run_dir, tmp_path,
                                                                    monkeypatch, failure):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(B.tempfile, "mkstemp", failure(tempfile.mkstemp))
    doc, result = batch(run_dir, cache)
    assert doc["summary"]["analysed"] == STEPS and doc["summary"]["failed"] == 0
    assert result.stderr.count("not usable") == 1, result.stderr
    assert list(cache.iterdir()) == []  # no entry, no temporary file


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_serves_reads_and_warns_once(run_dir, tmp_path):
    cache = tmp_path / "cache"
    batch(run_dir, cache)
    entries(cache)[0].unlink()
    cache.chmod(0o500)
    try:
        doc, result = batch(run_dir, cache)
    finally:
        cache.chmod(0o700)
    assert doc["summary"]["from_cache"] == STEPS - 1
    assert result.stderr.count("not usable") == 1 and leftovers(cache) == []


def test_jobs_two_with_an_unusable_cache(run_dir, tmp_path):
    doc, result = batch(run_dir, _file_as_folder(tmp_path), "--jobs", "2")
    assert doc["summary"]["analysed"] == STEPS
    assert result.stderr.count("not usable") == 1


def test_result_cache_unit(tmp_path, run_dir):
    from spectrum_cli.runs.job import resolve_job

    cache = B.ResultCache(tmp_path / "c", warn=lambda m: None)
    path = str(sorted(run_dir.iterdir())[1])
    record = runs_batch.compute_record(path, resolve_job(path, {})[0], "k")
    record.update(step=1, loss=None)
    assert cache.get("k") is None
    cache.put("k", record)
    assert cache.get("k")["step"] == 1
    assert cache.get("other") is None
    assert B.valid_record(dict(record, cache_format=B.CACHE_FORMAT), "k")
    for bad in ({}, [], None, dict(record), dict(record, cache_format=B.CACHE_FORMAT,
                                                 status="error"),
                dict(record, cache_format=B.CACHE_FORMAT, step="7"),
                dict(record, cache_format=B.CACHE_FORMAT, violations=[1])):
        assert not B.valid_record(bad, "k"), bad


@pytest.mark.parametrize("kind", ["metric-of-the-wrong-type", "violation-without-condition",
                                  "binary-garbage"])
def test_a_damaged_entry_is_one_warning_naming_it(run_dir, tmp_path, kind):
    """Issue 26: an entry that does not fit the record's schema is a miss with one
    warning (per entry) naming it; the indicators are the recomputed ones."""
    cache = tmp_path / "cache"
    clean, _ = batch(run_dir, cache)
    damaged = entries(cache)
    for p in damaged:
        DAMAGE[kind](p)
    doc, result = batch(run_dir, cache)
    assert doc["summary"]["from_cache"] == 0
    assert [c["indicators"] for c in doc["checkpoints"]] == \
        [c["indicators"] for c in clean["checkpoints"]]
    for p in damaged:
        assert result.stderr.count(p.name) == 1, result.stderr
    assert result.stderr.count("is damaged") == len(damaged)


def test_an_entry_of_another_cache_format_is_a_quiet_miss(run_dir, tmp_path):
    cache = tmp_path / "cache"
    batch(run_dir, cache)
    for p in entries(cache):
        record = json.loads(p.read_text())
        record["cache_format"] = B.CACHE_FORMAT - 1
        p.write_text(json.dumps(record))
    doc, result = batch(run_dir, cache)
    assert doc["summary"]["from_cache"] == 0 and "warning" not in result.stderr
