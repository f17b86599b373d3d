import os
from pathlib import Path

import numpy as np
import pytest

# BLAS at one thread: deterministic and fast on the 2-core CI machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"


@pytest.fixture(scope="session")
def trust_home(tmp_path_factory):
    """An XDG data home in which the sample folders' spectrum.toml files are trusted
    (``spectrum trust``), as the README's main job does; nothing else is."""
    from spectrum_cli import trust

    home = tmp_path_factory.mktemp("xdg-data")
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(home)
    try:
        for toml in sorted(SAMPLES.glob("*/spectrum.toml")):
            trust.trust(toml)
    finally:
        if old is None:
            del os.environ["XDG_DATA_HOME"]
        else:
            os.environ["XDG_DATA_HOME"] = old
    return home


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch, trust_home):
    """Run every test in an empty git-root directory with no SPECTRUM_* variables and
    a trust store of its own, so that the developer's own configuration and consents
    cannot leak in."""
    for key in list(os.environ):
        if key.startswith("SPECTRUM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(trust_home))
    work = tmp_path / "cwd"
    work.mkdir()
    (work / ".git").mkdir()
    monkeypatch.chdir(work)
    yield
