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


ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"


#: Test modules whose tests share an expensive module-scoped fixture (a run computed once,
#: a process group launched once, a Dask cluster, moto's server, a built wheel, the import
#: of transformers): under
#: pytest-xdist each runs whole on one worker, so that fixture is made once instead of
#: once per worker. Every other test is a unit of its own. (xdist's ``--dist loadgroup``
#: would do this from ``xdist_group`` marks, but it renames node ids, which pytest 9
#: ignores: the marked tests were spread over the workers.)
WHOLE_MODULES = frozenset({
    "tests/cli/test_batch.py", "tests/integrations/test_distributed.py",
    "tests/test_dask_executor.py", "tests/io/test_remote.py",
    "tests/hostile/test_remote_and_cluster.py", "tests/batch/test_weights_only.py",
    "tests/batch/test_determinism.py", "tests/test_packaging.py",
    "tests/cli/test_allocate.py", "tests/integrations/test_huggingface.py",
})


def pytest_xdist_make_scheduler(config, log):
    """Load scheduling by units: a module of :data:`WHOLE_MODULES`, else one test. The
    biggest units go first (xdist's ``loadscopereorder``)."""
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in WHOLE_MODULES else nodeid

    return Units(config, log)


def pytest_configure(config):
    """Byte-compile spectrum's own sources once, before any test starts a process.

    Hundreds of tests run the console script in a subprocess. Where the environment says
    PYTHONDONTWRITEBYTECODE (a CI image's habit, and the hostile suite's case
    environment), no process would leave its bytecode behind and every one compiled the
    package's ~150 modules again (~0.2 CPU-s a process). compileall writes the
    ``__pycache__`` files whatever that variable says, and skips the up-to-date ones."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it
        return
    import compileall

    for package in ("spectrum_cli", "backends"):
        compileall.compile_dir(ROOT / package, quiet=1)


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
