"""Helpers shared by the built-in backends."""

from __future__ import annotations

import glob
import os
import sys
from typing import Any

import numpy as np

from spectrum_cli.core.errors import UsageError

DTYPES = ("float64", "float32")


def check_options(backend: str, dtype: str, device: str, devices: tuple[str, ...]) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    if device not in devices:
        raise UsageError(f"backend {backend!r} runs on {', '.join(devices)}, not {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device here")


def torch_installed() -> bool:
    """Whether torch can be imported, without importing it (1-2 s saved per process)."""
    import importlib.util

    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def _gpu_driver_present() -> bool:
    """A CUDA (or ROCm) driver's device files, checked without importing torch."""
    return (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd")
            or bool(glob.glob("/dev/nvidia[0-9]*")))


def cuda_note() -> str:
    """'cuda' if usable here, else why not. Never imports torch: when torch is already
    loaded it is asked; otherwise the answer rests on the driver's device files."""
    if not torch_installed():
        return "cuda (torch not installed)"
    if "torch" in sys.modules:
        return "cuda" if sys.modules["torch"].cuda.is_available() else "cuda (no device here)"
    return "cuda" if _gpu_driver_present() else "cuda (no device here)"


def as_torch(a: Any, device: str, dtype: str):
    import torch

    t = a if type(a).__module__.startswith("torch") else torch.from_numpy(np.asarray(a))
    return t.to(device=device, dtype=getattr(torch, dtype))


def select(values: np.ndarray, k: int | None, which: str) -> np.ndarray:
    """The k largest or smallest of descending ``values`` (still descending)."""
    if which == "all" or k is None:
        return values
    if not 1 <= k <= values.size:
        raise ValueError(f"k: expected 1 <= k <= {values.size}, got {k}")
    return values[:k] if which == "largest" else values[-k:]


def gap_refined(theta: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Error bounds for Ritz values ``theta`` with residual norms ``r``.

    Each ``r_i`` bounds the distance to some exact value; when the neighbours are
    separated (``δ_i = min_{j≠i} |θ_i - θ_j| - r_j > r_i``) the error is at most
    ``r_i² / δ_i`` (Parlett, *The Symmetric Eigenvalue Problem*, Thm 11.7.1; Saad,
    *Numerical Methods for Large Eigenvalue Problems*, Thm 3.9). ``theta`` should hold
    every available Ritz value (also the unrequested ones): they define the gaps.
    """
    theta = np.asarray(theta, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    out = r.copy()
    if theta.size < 2:
        return out
    diff = np.abs(theta[:, None] - theta[None, :]) - r[None, :]
    np.fill_diagonal(diff, np.inf)
    delta = diff.min(axis=1)
    ok = delta > r
    out[ok] = np.minimum(r[ok], r[ok] ** 2 / delta[ok])
    return out
