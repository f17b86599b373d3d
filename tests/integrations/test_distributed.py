"""The callbacks under ``torch.distributed``: two real processes, gloo on 127.0.0.1.

One launch of two ranks (``distributed_worker.py``) runs every scenario in one process
group, so each process pays for one torch import; the tests read what each rank saw.
Oracles: a single-process :class:`SpectrumMonitor` measurement of the same weights (rank
0's DDP replica; for FSDP2, the full tensors rebuilt here from both ranks' local shards,
not from spectrum's gather) and numpy's float64 SVD of them (κ). A hang fails: every
join has a deadline, and both ranks are killed when it passes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover - builds without it
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

from spectrum_cli.integrations import SpectrumMonitor  # noqa: E402
from tests.integrations.distributed_worker import EVERY, FAIL_AT, POISON_AT, STEPS  # noqa: E402

# One launch for the module: under pytest-xdist the module runs whole on one worker
# (tests/conftest.py, WHOLE_MODULES) instead of each worker launching its own two ranks.

WORKER = Path(__file__).with_name("distributed_worker.py")
JOIN_S = 120.0
TOL = 1e-12


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, *flags: str) -> list[dict]:
    """Both ranks' results; fails (after killing both) if they do not end within
    JOIN_S seconds or one exits non-zero."""
    try:
        import lightning.pytorch  # noqa: F401
        flags = (*flags, "--lightning")
    except ImportError:
        pass
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs, logs = [], []
    for rank in range(2):
        fh = open(out / f"rank{rank}.log", "w")
        logs.append(fh)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), "2", port, str(out), *flags],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
            cwd=Path(__file__).resolve().parents[2]))
    deadline = time.monotonic() + JOIN_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        pytest.fail(f"the two ranks did not end within {JOIN_S:.0f} s (a hang); "
                    f"rank 0's log:\n{(out / 'rank0.log').read_text()[-3000:]}")
    finally:
        for fh in logs:
            fh.close()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, (f"rank {rank} exited {p.returncode}:\n"
                                   f"{(out / f'rank{rank}.log').read_text()[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_ranks")
    return launch(out), out


def oracle(weights: dict[str, np.ndarray], step: int) -> dict[str, float]:
    """The prefixed values a single process logs for these weights."""
    m = SpectrumMonitor(fail_on=["kappa>1e6"]).measure(weights, step)
    return {f"spectrum/{k}": v for k, v in m.indicators.items()}


def max_kappa(weights: dict[str, np.ndarray]) -> float:
    out = 0.0
    for w in weights.values():
        if w.ndim == 2:
            s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
            out = max(out, s[0] / s[-1])
    return out


def at_step(npz: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    return {k.split("/", 1)[1]: v for k, v in npz.items() if k.startswith(f"{step}/")}


def assert_values_equal(got: dict[str, float], want: dict[str, float]) -> None:
    got = {k: v for k, v in got.items() if k != "spectrum/fail_on_violations"}
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=TOL, abs=TOL), k


def test_ddp_values_are_logged_once_and_equal_a_single_process_measurement(ranks):
    (r0, r1), out = ranks
    assert [s for s, _ in r0["ddp"]["logged"]] == list(range(EVERY, STEPS + 1, EVERY))
    assert r1["ddp"]["logged"] == []  # rank 1 logs nothing
    assert r0["ddp"]["moved"] > 1e-3  # the weights did train
    weights = dict(np.load(out / "ddp.npz"))
    for step, values in r0["ddp"]["logged"]:
        w = at_step(weights, step)
        assert_values_equal(values, oracle(w, step))
        assert values["spectrum/tensors.max_kappa"] == pytest.approx(max_kappa(w), rel=TOL)
        assert values["spectrum/fail_on_violations"] == 0.0
    # Every rank holds rank 0's indicators, and ran every step.
    assert r1["ddp"]["last"] == r0["ddp"]["last"] and r1["ddp"]["last_step"] == STEPS
    assert r0["ddp"]["steps_run"] == r1["ddp"]["steps_run"] == STEPS


def test_a_fail_on_violation_seen_by_rank_0_alone_stops_both_ranks_at_that_step(ranks):
    (r0, r1), _ = ranks
    for r in (r0, r1):
        assert r["fail_on"]["steps_run"] == POISON_AT
        assert r["fail_on"]["stopped_step"] == POISON_AT
        assert r["fail_on"]["violations"] == 1
    assert r0["fail_on"]["logged_steps"] == list(range(1, POISON_AT + 1))
    assert r1["fail_on"]["logged_steps"] == []


def test_a_measurement_failing_on_rank_0_leaves_no_rank_waiting(ranks):
    (r0, r1), _ = ranks
    # Step FAIL_AT is not measured (last stays at the step before) and the loop goes
    # on: each rank took every step and every later measurement.
    want = [1, 1, 3, 4]
    assert FAIL_AT == 2
    assert r0["failing"]["last_step_after_each"] == want
    assert r1["failing"]["last_step_after_each"] == want


def test_fsdp2_shards_are_gathered_and_measured_once(ranks):
    (r0, r1), out = ranks
    if "unsupported" in r0["fsdp2"]:
        pytest.skip(f"FSDP2 fully_shard on CPU/gloo: {r0['fsdp2']['unsupported']}")
    assert r0["fsdp2"]["kinds"] == r1["fsdp2"]["kinds"] == ["DTensor"]
    assert [s for s, _ in r0["fsdp2"]["logged"]] == list(range(EVERY, STEPS + 1, EVERY))
    assert r1["fsdp2"]["logged"] == []
    shards = [dict(np.load(out / f"fsdp{r}.npz")) for r in range(2)]
    for step, values in r0["fsdp2"]["logged"]:
        parts = [at_step(s, step) for s in shards]
        assert all(parts[1][k].shape[0] < parts[0][k].shape[0] + parts[1][k].shape[0]
                   for k in parts[0])  # each rank held a part only
        full = {k: np.concatenate([parts[0][k], parts[1][k]]) for k in parts[0]}
        assert full["0.weight"].shape == (9, 6) and full["2.weight"].shape == (4, 9)
        want = oracle(full, step)
        assert_values_equal({k: v for k, v in values.items()}, want)
        assert values["spectrum/tensors.max_kappa"] == pytest.approx(max_kappa(full), rel=TOL)
    assert r1["fsdp2"]["last"] == r0["fsdp2"]["last"]


def test_lightning_ddp_logs_once_and_stops_every_rank(ranks):
    (r0, r1), out = ranks
    if "lightning" not in r0:
        pytest.skip("lightning is not installed")
    for r in (r0, r1):
        assert r["lightning"]["global_step"] == POISON_AT  # both stopped at that step
        assert r["lightning"]["stopped_step"] == POISON_AT
        assert r["lightning"]["callback_metric"] == 1.0  # on every rank
    rows = (Path(r0["lightning"]["log_dir"]) / "metrics.csv").read_text().splitlines()
    assert "spectrum/tensors.max_kappa" in rows[0]
    assert len(rows) - 1 == POISON_AT  # one row per measurement (steps 1..3)
    assert not list((out / "pl1").rglob("metrics.csv"))  # rank 1 wrote none
