"""The plan of a run: how many worker processes of how many threads, fitted to the
cores and to ``--max-memory``; sizes as the command line writes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from spectrum_cli.core.errors import UsageError
from spectrum_cli.runs.threads import available_cores, env_threads
from spectrum_cli.settings import format_bytes


@dataclass(frozen=True)
class Plan:
    """How the misses are computed: ``workers`` processes of ``threads`` threads each
    (``workers`` 0: in this process), out of ``jobs`` asked for on ``cores`` cores."""

    jobs: int
    workers: int
    threads: int
    cores: int

    def as_settings(self) -> dict[str, int]:
        return asdict(self)


def plan(jobs: int, threads: int | None, misses: int, cores: int | None = None) -> Plan:
    """Worker processes and threads per worker. ``threads`` None: cores // workers, or
    less where OMP/OPENBLAS/MKL_NUM_THREADS ask for less, so workers x threads <= cores.
    One miss (or ``jobs`` 1) is computed in this process (``workers`` 0)."""
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: expected at least 1, got {threads}")
    cores = cores or available_cores()
    workers = min(max(1, jobs), misses)
    share = max(1, cores // max(1, workers))
    chosen = threads or min(share, env_threads() or share)
    return Plan(max(1, jobs), workers if workers > 1 else 0, chosen, cores)


def fit_memory(chosen: Plan, needs: Sequence[int], limit: int | None,
               threads: int | None = None) -> Plan:
    """``chosen`` with fewer workers where the expected peak (the sum of the largest
    ``workers`` entries of ``needs``, bytes per task) would pass ``limit``; threads per
    worker are re-planned for the workers that remain. UsageError when the largest task
    alone needs more than ``limit``."""
    if limit is None or not needs:
        return chosen
    largest = sorted(needs, reverse=True)
    if largest[0] > limit:
        raise UsageError(f"--max-memory {format_bytes(limit)}: the largest tensor alone is "
                         f"expected to need {format_bytes(largest[0])}")
    workers = max(1, chosen.workers)
    while workers > 1 and sum(largest[:workers]) > limit:
        workers -= 1
    if workers == max(1, chosen.workers):
        return chosen
    fitted = plan(workers, threads, len(needs), chosen.cores)
    return Plan(chosen.jobs, fitted.workers, fitted.threads, chosen.cores)


def expected_peak(chosen: Plan, needs: Sequence[int]) -> int:
    """Bytes the plan's workers are expected to hold at most: its largest tasks'."""
    return sum(sorted(needs, reverse=True)[:max(1, chosen.workers)])
