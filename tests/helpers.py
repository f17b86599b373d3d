"""Shared test helpers: matrices with prescribed spectra and the CLI runner."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner


def haar(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """m x k with orthonormal columns (Haar-distributed, sign-fixed QR)."""
    q, r = np.linalg.qr(rng.standard_normal((m, k)))
    return q * np.sign(np.diag(r))


def with_spectrum(rng: np.random.Generator, shape: tuple[int, int], s: np.ndarray) -> np.ndarray:
    """A float64 matrix with singular values ``s`` (length min(shape))."""
    m, n = shape
    k = min(m, n)
    assert len(s) == k
    return (haar(rng, m, k) * s) @ haar(rng, n, k).T


def spectrum_of(kind: str, k: int, kappa: float) -> np.ndarray:
    """Named singular-value profiles (descending, sigma_max = 1)."""
    if k == 1:
        return np.ones(1)
    if kind == "geometric":
        return np.geomspace(1.0, 1.0 / kappa, k)
    if kind == "flat_one_small":
        s = np.ones(k)
        s[-1] = 1.0 / kappa
        return s
    if kind == "two_clusters":
        return np.where(np.arange(k) < k // 2, 1.0, 1.0 / kappa)
    if kind == "decaying":
        return 1.0 / (1.0 + np.arange(k)) ** (np.log(kappa) / np.log(k))
    raise ValueError(kind)


def oracle_svdvals(a: np.ndarray) -> np.ndarray:
    """The reference: LAPACK float64 gesdd through numpy on the same float64 matrix."""
    return np.linalg.svd(np.asarray(a, dtype=np.float64), compute_uv=False)


def run_cli(*args: str, env: dict | None = None):
    from spectrum_cli.cli.app import app

    return CliRunner(env={"COLUMNS": "80", "NO_COLOR": "1", **(env or {})}).invoke(
        app, [str(a) for a in args])


def run_json(*args: str, env: dict | None = None) -> tuple[dict, object]:
    result = run_cli("analyze", *args, "--json", env=env)
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout), result


#: What may differ between two runs of the same analysis: timings, the run plan (workers,
#: executor), the cache count and where the configuration came from.
RUN_DEPENDENT = frozenset({"time_s", "wall_s", "created", "run", "from_cache", "config_file"})


def stripped(doc, keys=RUN_DEPENDENT):
    """A document without the fields named in ``keys`` (by default
    :data:`RUN_DEPENDENT`), at any depth, for comparing two runs."""
    if isinstance(doc, dict):
        return {k: stripped(v, keys) for k, v in doc.items() if k not in keys}
    if isinstance(doc, list):
        return [stripped(v, keys) for v in doc]
    return doc
