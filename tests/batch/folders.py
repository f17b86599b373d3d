"""Checkpoint folders for the batch tests, written with numpy and safetensors only."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

#: Matrices of each weights-only checkpoint: (name, shape, κ at step 0, growth per step).
WEIGHTS = (("encoder.layers.0.weight", (24, 16), 4.0, 1.25),
           ("encoder.layers.1.weight", (16, 16), 10.0, 1.0),
           ("head.weight", (4, 16), 2.0, 1.6))


def matrix(rng: np.random.Generator, shape: tuple[int, int], kappa: float) -> np.ndarray:
    """A float32 matrix with condition number ``kappa`` (geometric singular values)."""
    m, n = shape
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.geomspace(1.0, 1.0 / kappa, k)
    return ((u * s) @ v.T).astype(np.float32)


def weights_only_run(folder: Path, steps: int = 5, seed: int = 0) -> Path:
    """``step-<n>.safetensors`` files holding weights only (no loss, no optimizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        tensors = {name: matrix(rng, shape, k0 * growth ** step)
                   for name, shape, k0, growth in WEIGHTS}
        tensors["encoder.layers.0.bias"] = rng.standard_normal(24).astype(np.float32)
        save_file(tensors, str(folder / f"step-{step * 100:05d}.safetensors"))
    return folder


def slow_run(folder: Path, files: int = 8, n: int = 900, seed: int = 1) -> Path:
    """Weights-only checkpoints whose analysis takes a while (dense n x n SVDs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(files):
        save_file({f"w{j}": rng.standard_normal((n, n)).astype(np.float32) for j in range(3)},
                  str(folder / f"step-{i:03d}.safetensors"))
    return folder


def spectrum_exe() -> str:
    """The installed console script of the interpreter running the tests."""
    found = shutil.which("spectrum", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert found, "the spectrum console script is not installed"
    return found
