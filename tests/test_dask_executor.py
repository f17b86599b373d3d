"""Issue 12 item 2: the ``dask`` executor sends per-tensor (analyze) and per-checkpoint
(batch) tasks to an existing Dask cluster; the client writes the report. A real local
cluster (scheduler + 2 worker processes on 127.0.0.1) against local runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from safetensors.numpy import save_file  # noqa: E402

from spectrum_cli import plugins, trust  # noqa: E402
from spectrum_cli.core.errors import InputError, UsageError  # noqa: E402
from spectrum_cli.runs.dask import SCHEDULER_ENV, DaskExecutor, connect
from spectrum_cli.runs.executors import Cluster
from tests.helpers import run_cli, run_json, stripped  # noqa: E402

DASK = EntryPoint("dask", "spectrum_cli.runs.dask:DaskExecutor", "spectrum.executors")
SAMPLE = Path(__file__).resolve().parents[1] / "sample_checkpoints" / "sgd-momentum"
STEPS = (150, 155)  # the step before the sample run's first spike, and the spike


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two single-threaded worker processes on 127.0.0.1."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as c:
        yield c


@pytest.fixture
def with_dask(monkeypatch):
    """The ``dask`` executor registered as pyproject.toml will register it."""
    real = plugins.entry_points

    def patched(group):
        return list(real(group=group)) + ([DASK] if group == "spectrum.executors" else [])

    monkeypatch.setattr(plugins, "entry_points", patched)
    plugins.clear_cache()
    yield
    plugins.clear_cache()


@pytest.fixture
def on_cluster(cluster, with_dask, monkeypatch):
    monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler_address)
    return cluster


@pytest.fixture
def closed_port():
    """An address on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def several(tmp_path, rng):
    """Matrices of several sizes (the largest stored last), an LSTM recurrent weight
    (one stored tensor, several results), a conv kernel and a bias."""
    tensors = {
        "embed.weight": rng.standard_normal((64, 48)),
        "block.0.attn.weight": rng.standard_normal((160, 128)),
        "block.0.mlp.weight": rng.standard_normal((96, 200)),
        "rnn.weight_hh_l0": rng.standard_normal((4 * 24, 24)) / 5,
        "conv.weight": rng.standard_normal((16, 8, 3, 3)),
        "head.bias": rng.standard_normal(10),
        "zlast.weight": rng.standard_normal((220, 160)),
    }
    path = tmp_path / "several.safetensors"
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(path))
    return path


def test_analyze_on_the_cluster_gives_the_document_of_jobs_1(on_cluster, several):
    one, r1 = run_json(several, "--threads", "1", "--no-cache")
    t0 = time.perf_counter()
    two, r2 = run_json(several, "--threads", "1", "--jobs", "2", "--no-cache",
                       "--executor", "dask")
    elapsed = time.perf_counter() - t0
    assert r1.exit_code == r2.exit_code == 0, r2.stderr
    assert stripped(two) == stripped(one)  # every number, bit for bit, in plan order
    assert two["settings"]["run"]["executor"] == "dask"
    assert any(t["name"] == "rnn.weight_hh_l0[f]" for t in two["tensors"])
    print(f"dask analyze: {elapsed:.2f} s")


def test_allocate_on_the_cluster_gives_the_local_allocation(on_cluster, several):
    """``spectrum allocate`` measures through analyze's pipeline, so on the cluster too:
    every factor equals the local run's, bit for bit."""
    def factors(*extra: str) -> dict:
        r = run_cli("allocate", several, "--method", "tempbalance", "--min-eigenvalues",
                    "10", "--json", "--no-cache", *extra)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)["allocations"]

    local = factors()
    assert len(local) >= 4 and any(v != 1.0 for v in local.values())
    assert factors("--executor", "dask", "--jobs", "2") == local


def test_every_task_ran_on_a_worker(on_cluster, several):
    """The tasks reached the workers (not this process): the scheduler saw them."""
    before = _processed(on_cluster)
    doc, result = run_json(several, "--no-cache", "--executor", "dask")
    assert result.exit_code == 0, result.stderr
    stored = 5  # tensors the analysis measures (the bias is skipped)
    assert _processed(on_cluster) - before >= stored
    assert doc["summary"]["analysed"] >= stored


def test_a_relative_path_reaches_the_workers(on_cluster, several, monkeypatch):
    """Tasks carry absolute paths: a Dask worker has a working directory of its own."""
    monkeypatch.chdir(several.parent)
    doc, result = run_json(several.name, "--no-cache", "--executor", "dask")
    assert result.exit_code == 0, result.stderr
    assert doc["summary"]["errors"] == 0


def test_workers_read_from_s3_with_the_storage_options_of_the_command(on_cluster, several):
    """Workers read the object themselves: the URL and --storage-option travel with the
    task (the workers' environment has no endpoint or credentials)."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from tests.remote import moto_s3

    local, r1 = run_json(several, "--threads", "1", "--no-cache")
    with moto_s3() as s3:
        url = s3.upload(several, "s3://dask-bucket/several.safetensors")
        s3.proxy.reset()
        remote, r2 = run_json(url, "--threads", "1", "--jobs", "2", "--no-cache",
                              "--executor", "dask",
                              "--storage-option", f"endpoint_url={s3.endpoint}",
                              "--storage-option", "key=testing",
                              "--storage-option", "secret=testing")
        assert s3.proxy.received >= several.stat().st_size  # the workers did read it
    assert r1.exit_code == r2.exit_code == 0, r2.stderr
    assert remote["settings"]["run"]["executor"] == "dask"
    a, b = stripped(local), stripped(remote)
    a.pop("source"), b.pop("source")
    assert a == b  # every number, bit for bit


def test_scheduler_option_alone_selects_dask(on_cluster, several, monkeypatch):
    """--scheduler (no --executor): the tasks go to that cluster."""
    address = os.environ["SPECTRUM_SCHEDULER"]
    monkeypatch.delenv("SPECTRUM_SCHEDULER")
    before = _processed(on_cluster)
    doc, result = run_json(several, "--no-cache", "--jobs", "2", "--scheduler", address)
    assert result.exit_code == 0, result.stderr
    assert _processed(on_cluster) > before
    assert "SPECTRUM_SCHEDULER" not in os.environ  # never put there


def test_scheduler_with_one_job_still_uses_the_cluster(on_cluster, several, monkeypatch):
    """--scheduler implies the dask executor even at the default --jobs 1: the cluster's
    workers compute, not the client."""
    address = os.environ["SPECTRUM_SCHEDULER"]
    monkeypatch.delenv("SPECTRUM_SCHEDULER")
    before = _processed(on_cluster)
    doc, result = run_json(several, "--no-cache", "--scheduler", address)
    assert result.exit_code == 0, result.stderr
    assert doc["settings"]["run"]["executor"] == "dask"
    assert _processed(on_cluster) - before >= 5


def _processed(cluster) -> int:
    """How many ``measure_task`` tasks the scheduler has seen."""
    def count(dask_scheduler):
        prefix = dask_scheduler.task_prefixes.get("measure_task")
        return 0 if prefix is None else sum(prefix.state_counts.values())

    with distributed.Client(cluster.scheduler_address, set_as_default=False) as c:
        return c.run_on_scheduler(count)


@pytest.fixture
def run_dir(tmp_path):
    """Two checkpoints of the sample SGD run and its (trusted) spectrum.toml."""
    d = tmp_path / "run"
    d.mkdir()
    for step in STEPS:
        shutil.copy(SAMPLE / f"step-{step:05d}.pt", d)
    shutil.copy(SAMPLE / "spectrum.toml", d)
    trust.trust(d / "spectrum.toml")
    return d


def batch_json(*args):
    result = run_cli("batch", *args, "--json", "--no-progress", "--no-cache")
    return (json.loads(result.stdout) if result.stdout.strip() else None), result


def _comparable(doc):
    out = json.loads(json.dumps(doc))
    out.pop("created")
    for c in out["checkpoints"]:
        c.pop("cached")
        c.get("document", {}).get("summary", {}).pop("wall_s", None)
    out["summary"].pop("from_cache")
    return out


def test_batch_on_the_cluster_gives_the_local_trajectory(on_cluster, run_dir):
    t0 = time.perf_counter()
    local, r1 = batch_json(run_dir)
    t1 = time.perf_counter()
    remote, r2 = batch_json(run_dir, "--executor", "dask")
    print(f"batch local {t1 - t0:.2f} s, dask {time.perf_counter() - t1:.2f} s")
    assert r1.exit_code == 0, r1.stderr
    assert r2.exit_code == 0, r2.stderr
    a, b = _comparable(local)["checkpoints"], _comparable(remote)["checkpoints"]
    assert [c["path"] for c in a] == [c["path"] for c in b]
    assert [c["step"] for c in b] == list(STEPS)
    for ca, cb in zip(a, b):
        assert cb["status"] == "ok"
        assert ca["indicators"].keys() == cb["indicators"].keys()
        for k, v in ca["indicators"].items():
            if isinstance(v, str):
                assert cb["indicators"][k] == v
            else:
                assert cb["indicators"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert remote["spikes"] == local["spikes"]
    assert remote["summary"] == dict(local["summary"], from_cache=0)


def test_task_errors_come_back_as_results(on_cluster):
    """A task that raises is handed to ``done`` as its exception; the others complete."""
    got = {}
    DaskExecutor(Cluster(on_cluster.scheduler_address)).run(_maybe_fail, [(1,), (0,), (3,)],
                                                            None, got.__setitem__)
    assert got[0] == 1.0 and got[2] == pytest.approx(1 / 3)
    assert isinstance(got[1], ZeroDivisionError)


def _maybe_fail(x: int) -> float:
    return 1 / x


def test_a_lost_worker_costs_only_its_task(on_cluster, tmp_path):
    """The worker running task 0 dies (once); Dask reruns that task elsewhere and every
    result comes back."""
    marker = tmp_path / "died"
    got = {}
    DaskExecutor(Cluster(on_cluster.scheduler_address)).run(
        _die_once, [(str(marker), i) for i in range(4)], None, got.__setitem__)
    assert marker.exists()
    assert got == {i: i for i in range(4)}


def _die_once(marker: str, i: int) -> int:
    if i == 0 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)  # the worker process dies mid-task
    return i


def test_unreachable_scheduler_is_exit_2_quickly(several, closed_port):
    """The console script in a fresh interpreter: exit 2, the address named, no
    traceback (not even from the half-made client at exit), within the timeout."""
    t0 = time.perf_counter()
    result = spectrum_subprocess("analyze", several, "--no-cache", "--executor", "dask",
                                 env={SCHEDULER_ENV: closed_port,
                                      "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Dask scheduler" in result.stderr
    assert closed_port in result.stderr and "Traceback" not in result.stderr
    assert time.perf_counter() - t0 < 30


def test_bad_address_is_exit_2(with_dask, several):
    result = run_cli("analyze", several, "--no-cache", "--executor", "dask",
                     env={SCHEDULER_ENV: "nope://127.0.0.1:1"})
    assert result.exit_code == 2, result.stderr
    assert "nope://127.0.0.1:1" in result.stderr and "scheme" in result.stderr


def test_a_scheduler_without_workers_is_a_usage_error(with_dask, monkeypatch):
    import dask

    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=":0") as empty, \
            dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(UsageError, match="no workers"):
            connect(Cluster(scheduler=empty.scheduler_address))


def test_no_scheduler_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(SCHEDULER_ENV, "tcp://127.0.0.1:1")  # the environment is not read
    with pytest.raises(UsageError, match="--scheduler"):
        connect(Cluster())


def test_scheduler_file(cluster, tmp_path, monkeypatch):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError, match="nope.json"):
        connect(Cluster(scheduler_file=str(missing)))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        connect(Cluster(scheduler_file=str(bad)))
    good = tmp_path / "scheduler.json"
    good.write_text(json.dumps({"address": cluster.scheduler_address}))
    got = {}
    DaskExecutor(Cluster(scheduler_file=str(good))).run(_maybe_fail, [(2,)], None, got.__setitem__)
    assert got == {0: 0.5}


SPECTRUM = """
import sys
from importlib.metadata import EntryPoint
if sys.argv[1] == "--without-distributed":  # as if the extra were not installed
    sys.modules["distributed"] = None
    del sys.argv[1]
from spectrum_cli import plugins
real = plugins.entry_points
dask = EntryPoint("dask", "spectrum_cli.runs.dask:DaskExecutor", "spectrum.executors")
plugins.entry_points = lambda group: list(real(group=group)) + (
    [dask] if group == "spectrum.executors" else [])
sys.argv = ["spectrum", *sys.argv[1:]]
from spectrum_cli.cli.entry import main
main()
"""


def spectrum_subprocess(*args, env=None, without_distributed=False):
    """``spectrum ARGS`` in a fresh interpreter (the console script's ``main``), with
    the ``dask`` executor registered."""
    first = ["--without-distributed"] if without_distributed else []
    return subprocess.run([sys.executable, "-c", SPECTRUM, *first, *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})},
                          cwd=Path(__file__).resolve().parents[1])


def test_missing_distributed_names_the_extra(several):
    """Without dask.distributed: exit 2 and the pip command (a fresh interpreter, so
    the running cluster keeps its own import of distributed)."""
    result = spectrum_subprocess("analyze", several, "--no-cache", "--executor", "dask",
                                 env={SCHEDULER_ENV: "tcp://127.0.0.1:1"},
                                 without_distributed=True)
    assert result.returncode == 2, result.stderr
    assert "pip install 'spectrum-cli[distributed]'" in result.stderr
    assert "Traceback" not in result.stderr
