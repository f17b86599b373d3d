"""A fully cached ``spectrum batch`` needs neither torch nor the user's code (issue 10,
item 17): the cache key is computed from the files and the settings' names, and workers
(which preload torch) are started only for checkpoints that must be computed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.batch.folders import spectrum_exe

SAMPLE = Path(__file__).resolve().parents[2] / "sample_checkpoints" / "sgd-momentum"
USERMOD = '''
from pathlib import Path
Path(__file__).with_name("imported.marker").touch()
from spectrum_cli.examples import two_layer_relu as build, paper_regression as data
'''


def imported(stderr: str) -> set[str]:
    """Top-level modules named by ``python -X importtime``."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_cached_resume_imports_neither_torch_nor_user_code(tmp_path, jobs):
    run = tmp_path / "run"
    run.mkdir()
    for step in (105, 110, 115):
        shutil.copy(SAMPLE / f"step-{step:05d}.pt", run)
    (tmp_path / "usermod.py").write_text(USERMOD)
    marker = tmp_path / "imported.marker"
    cmd = [sys.executable, "-X", "importtime", spectrum_exe(), "batch", str(run), "--jobs",
           jobs, "--cache-dir", str(tmp_path / "cache"), "--json", "--no-progress",
           "--model", "usermod:build", "--data", "usermod:data"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout)["summary"]["from_cache"] == 0
    assert marker.exists()  # computing needed the user's model
    marker.unlink()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    doc = json.loads(second.stdout)
    assert doc["summary"]["from_cache"] == 3
    assert "momentum.kappa_V" in doc["indicators"]
    assert not marker.exists(), "a cache hit imported the user's module"
    heavy = imported(second.stderr) & {"torch", "usermod", "scipy", "matplotlib"}
    assert not heavy, f"a cache hit imported {heavy}"
