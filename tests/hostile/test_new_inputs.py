"""Hostile or broken inputs to what this release added (URLs and --storage-option, watch
folders, --tensorboard, spectrum esd), each through the installed console script in a
subprocess: exit 2, a message naming the input, no traceback, nothing written over."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

SPECTRUM = Path(sys.executable).parent / "spectrum"


def spectrum(*args: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPECTRUM), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})})


def refused(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def run(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((12, 10))}, str(d / "step-100.safetensors"))
    return d


def test_watch_refuses_a_fifo_a_file_and_a_missing_folder(tmp_path, run):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(spectrum("watch", fifo, "--idle-timeout", "1", cwd=tmp_path, timeout=30),
            str(fifo))
    refused(spectrum("watch", run / "step-100.safetensors", "--idle-timeout", "1",
                     cwd=tmp_path), "not a folder")
    refused(spectrum("watch", tmp_path / "nope", "--idle-timeout", "1", cwd=tmp_path),
            "no such folder")


def test_tensorboard_never_replaces_a_file(tmp_path, run):
    victim = tmp_path / "notes.txt"
    victim.write_text("mine\n")
    before = digest(victim)
    for command in ("batch", "watch"):
        extra = ("--idle-timeout", "1") if command == "watch" else ()
        refused(spectrum(command, run, "--no-cache", "--tensorboard", victim, *extra,
                         cwd=tmp_path), str(victim))
        assert digest(victim) == before


def test_broken_urls_and_storage_options(tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    refused(spectrum("analyze", "nosuchscheme://bucket/x.pt", cwd=tmp_path, env=env),
            "nosuchscheme://bucket/x.pt")
    refused(spectrum("analyze", "s3://b/x.pt", "--storage-option", "no-equals-sign",
                     cwd=tmp_path, env=env), "--storage-option")
    refused(spectrum("analyze", "s3://b/x.pt", "--storage-option", "nonsense_kw=1",
                     cwd=tmp_path, env=env), "--storage-option")
    refused(spectrum("batch", "s3://b/run", "--no-cache", cwd=tmp_path, env=env),
            "s3://b/run")
    refused(spectrum("watch", "s3://b/run", "--idle-timeout", "1", cwd=tmp_path, env=env),
            "s3://b/run")


def test_esd_of_a_truncated_or_empty_file(tmp_path, run):
    good = run / "step-100.safetensors"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    refused(spectrum("esd", cut, "--tensor", "w", cwd=tmp_path), str(cut))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    refused(spectrum("esd", empty, "--tensor", "w", cwd=tmp_path), str(empty))
    refused(spectrum("esd", good, "--tensor", "\x1b[31mnope", cwd=tmp_path))
    r = spectrum("esd", good, "--tensor", "\x1b[31mnope", cwd=tmp_path)
    assert "\x1b" not in r.stderr  # the name is escaped on the terminal
