import os

import numpy as np
import pytest

# BLAS at one thread: deterministic and fast on the 2-core CI machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    """Run every test in an empty git-root directory with no SPECTRUM_* variables,
    so that the developer's own configuration cannot leak in."""
    for key in list(os.environ):
        if key.startswith("SPECTRUM_"):
            monkeypatch.delenv(key)
    work = tmp_path / "cwd"
    work.mkdir()
    (work / ".git").mkdir()
    monkeypatch.chdir(work)
    yield
