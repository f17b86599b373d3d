"""`spectrum backends` and the analysis of a .npy stay cheap: no torch import (issue 10,
item 17), no scipy.optimize or scipy.special for the spectrum's fits. Checked in subprocesses through the installed console script, with Python's
own import log (-X importtime, via PYTHONPROFILEIMPORTTIME)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run_logged(*args: str) -> tuple[set[str], str]:
    """The modules ``spectrum *args`` imported, and its standard output."""
    exe = shutil.which("spectrum", path=str(Path(sys.executable).parent))
    assert exe, "the console script is not installed next to this interpreter"
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    out = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
            if line.startswith("import time:")}, out.stdout


def imported_modules(*args: str) -> set[str]:
    return run_logged(*args)[0]


def test_backends_listing_does_not_import_torch():
    mods = imported_modules("backends", "--json")
    assert "spectrum_backends._common" in mods  # the backends were loaded and asked
    assert "torch" not in mods


@pytest.mark.parametrize("backend", ["auto", "dense", "lanczos"])
def test_npy_analysis_does_not_import_torch(tmp_path, backend):
    np.save(tmp_path / "w.npy", np.random.default_rng(0).standard_normal((40, 30)))
    mods = imported_modules("analyze", str(tmp_path / "w.npy"), "--json", "--backend",
                            backend)
    assert "torch" not in mods
    # the process builds the subcommand it runs, not the other ones (cli.esd and
    # cli.model import these at their top)
    assert "spectrum_cli.api" in mods
    assert not mods & {"spectrum_cli.core.esd_analysis", "spectrum_cli.model_spectra"}


def test_fitting_a_spectrum_imports_neither_scipy_optimize_nor_scipy_special(tmp_path):
    """The Marchenko-Pastur fit's polish and α's exact interval are computed without
    ``scipy.optimize`` and ``scipy.special`` (~0.3 s of start-up each): both values are
    in the document, neither package among the imports."""
    import json

    np.save(tmp_path / "w.npy", np.random.default_rng(0).standard_normal((40, 30)))
    mods, out = run_logged("analyze", str(tmp_path / "w.npy"), "--json", "--no-cache")
    metrics = json.loads(out)["tensors"][0]["metrics"]
    assert metrics["mp_sigma"] is not None and metrics["alpha_ci_low"] is not None
    assert "scipy.optimize" not in mods and "scipy.special" not in mods


def test_randomized_available_uses_find_spec_only():
    code = ("import sys\nfrom spectrum_backends.randomized import RandomizedSVDBackend\n"
            "from spectrum_backends._common import cuda_note\n"
            "b = RandomizedSVDBackend()\nprint(b.available(), b.device_support())\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("(True, '')") and "cpu, cuda" in out[0]
    assert out[-1] == "False"
