"""Thread counts of ``spectrum batch`` (issue 10, item 18): workers x threads <= cores,
set in every worker (BLAS/OpenMP through threadpoolctl, and torch) and in this process
when it computes alone; ``threads`` overrides."""

from __future__ import annotations

import os

import pytest

from spectrum_cli.io import layout
from spectrum_cli.runs import batch as B
from spectrum_cli.runs import executors
from spectrum_cli.runs import threads as T
from spectrum_cli.runs import plan as planning
from tests.batch.folders import weights_only_run


@pytest.fixture
def no_thread_env(monkeypatch):
    for name in T.THREAD_ENV:
        monkeypatch.delenv(name, raising=False)


def test_plan_divides_the_cores_among_the_workers(no_thread_env):
    assert planning.plan(2, None, 10, cores=2) == planning.Plan(2, 2, 1, 2)
    assert planning.plan(4, None, 10, cores=16) == planning.Plan(4, 4, 4, 16)
    assert planning.plan(3, None, 10, cores=2) == planning.Plan(3, 3, 1, 2)  # never 0 threads
    assert planning.plan(8, None, 2, cores=8) == planning.Plan(8, 2, 4, 8)  # 2 misses: 2 workers
    assert planning.plan(1, None, 5, cores=4) == planning.Plan(1, 0, 4, 4)  # in this process
    assert planning.plan(4, None, 1, cores=4) == planning.Plan(4, 0, 4, 4)  # one miss: no pool
    assert planning.plan(2, 3, 10, cores=2).threads == 3  # asked for: obeyed
    for plan in (planning.plan(j, None, 9, cores=c) for j in (1, 2, 3, 5) for c in (1, 2, 6)):
        assert max(1, plan.workers) * plan.threads <= max(plan.cores, max(1, plan.workers))


def test_plan_takes_the_environment_as_a_ceiling(monkeypatch, no_thread_env):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert planning.plan(1, None, 5, cores=8).threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert planning.plan(2, None, 5, cores=8).threads == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert planning.plan(2, None, 5, cores=8).threads == 4
    with pytest.raises(ValueError):
        planning.plan(1, 0, 5)


def test_available_cores_is_the_affinity_mask():
    assert T.available_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.skipif(T.available_cores() < 2, reason="needs 2 cores")
def test_workers_run_with_the_chosen_thread_count(threads):
    with executors.worker_pool(2, threads) as pool:
        reports = [f.result(timeout=120) for f in [pool.submit(T.threads_in_use)
                                                   for _ in range(4)]]
    assert all(r["pid"] != os.getpid() for r in reports)
    for r in reports:
        assert r["torch"] == threads, r
        assert r["threadpools"], r  # threadpoolctl sees numpy's BLAS at least
        assert all(p["num_threads"] == threads for p in r["threadpools"]), r


@pytest.mark.skipif(T.available_cores() < 2, reason="needs 2 cores")
def test_this_process_computes_with_the_chosen_thread_count(tmp_path, monkeypatch):
    """jobs 1: the misses run here, with the limits set only while they run."""
    import threadpoolctl

    folder = weights_only_run(tmp_path / "run", steps=2)
    seen = []
    real = B.compute_record
    monkeypatch.setattr(B, "compute_record",
                        lambda *a: seen.append(T.threads_in_use()) or real(*a))
    before = {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info()}
    from spectrum_cli.runs.job import Job
    from spectrum_cli.core.analyze import AnalyzeOptions

    chosen = 2  # not the 1 of the test environment, and no more than the cores
    result = B.run_batch(layout.discover(str(folder)), Job(AnalyzeOptions()), jobs=1,
                         threads=chosen)
    assert result.plan.threads == chosen and result.plan.workers == 0
    assert len(seen) == 2
    assert all(p["num_threads"] == chosen for s in seen for p in s["threadpools"]), seen
    after = {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info()}
    assert {k: after[k] for k in before} == before  # restored; and those loaded meanwhile
    assert all(after[k] == (T.env_threads() or chosen) for k in after.keys() - before.keys())
    assert all(r["status"] == "ok" for r in result.records)


def test_default_threads_honours_the_environment(monkeypatch, no_thread_env):
    """Issue 22 item 2: a process computing alone took every core whatever the thread
    variables said; now --threads, else the variables, else the cores."""
    assert T.default_threads() == T.available_cores()
    assert T.threads_from() == "cores"
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    assert T.default_threads() == 1 and T.threads_from() == "environment"
    assert T.default_threads(3) == 3 and T.threads_from(3) == "--threads"
    with pytest.raises(ValueError):
        T.default_threads(0)


def test_threads_limited_sets_the_matrix_budget_and_records_the_callers_env(
        monkeypatch, no_thread_env):
    from spectrum_cli.core import measure

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = measure._budget
    with T.threads_limited(2):
        assert measure.matrix_threads() == 2
        assert T.caller_thread_env() == {"OMP_NUM_THREADS": "1"}  # not the block's 2
        assert T.thread_settings(2)["threads_from"] == "environment"
    assert measure._budget == before
    assert T.blas_threads_for((4096, 1024), 2) == 2 and T.blas_threads_for((64, 64), 8) == 1


@pytest.mark.parametrize("n, want", [(40, 1), (600, 2)])
def test_the_dense_hessians_eigenproblem_gets_blas_threads_by_its_size(n, want,
                                                                        monkeypatch):
    """eigvalsh of a small Hessian on one BLAS thread whatever the budget (a second
    thread gains nothing below ~512 and spins beside torch); a large one may use the
    budget (core/measure.py's rule)."""
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    from spectrum_cli.core import measure
    from spectrum_cli.optim.base import OperatorContext, hessian_spectrum
    from spectrum_cli.runs.optimizer import OperatorOptions

    class Quadratic:  # a Hessian source with H given
        def __init__(self, h):
            self.h, self.n, self.n_hvp = h, h.shape[0], 0

        def dense(self):
            return self.h

    seen: list[int] = []
    real = np.linalg.eigvalsh

    def spy(a, *args, **kwargs):
        seen.append(max(i["num_threads"] for i in threadpool_info()
                        if i["user_api"] == "blas"))
        return real(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "eigvalsh", spy)
    h = np.diag(np.arange(1.0, n + 1))
    monkeypatch.setattr(measure, "_budget", 2)
    with threadpool_limits(2, user_api="blas"):
        lam, info = hessian_spectrum(OperatorContext(Quadratic(h), OperatorOptions()), None)
    assert seen == [want]
    assert np.array_equal(lam, np.arange(1.0, n + 1)) and info["kind"] == "exact"
