"""The dispatch of one checkpoint's tensors: cached ones first, then the misses in this
process or as tasks of an executor (worker processes, Dask), largest first, with the
memory plan and the progress ticks."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from spectrum_cli import plugins
from spectrum_cli.core.analyze import (
    MEMORY_RULE,
    AnalyzeOptions,
    expected_bytes,
    groups,
    itemsize,
    measure_group,
)
from spectrum_cli.core.errors import SpectrumError, UsageError
from spectrum_cli.core.results import TensorError
from spectrum_cli.io import open_source, storage
from spectrum_cli.io.base import LoadPolicy, sha256_files
from spectrum_cli.runs.cache import ResultCache, cached_results, store_results
from spectrum_cli.runs.executors import choose, start_early
from spectrum_cli.runs.job import Job, RunOptions
from spectrum_cli.runs.plan import Plan, expected_peak, fit_memory, plan
from spectrum_cli.runs.threads import default_threads, steady_malloc, thread_settings
from spectrum_cli.settings import format_bytes

#: An analysis whose expected peak memory reaches this says it up front.
ANNOUNCE_PEAK = 1 << 30


#: The command line's default cache serves checkpoints of at least this many bytes.
RESUME_MIN_BYTES = 256 << 20


#: Checkpoints of at least this many bytes (or any URL) start the workers' forkserver
#: before their headers are read, when the run may use worker processes.
EARLY_START_BYTES = 64 << 20


def start_workers_early(path: str, run: "RunOptions") -> None:
    """Start the worker processes' server (:func:`spectrum_cli.runs.executors.start_early`)
    now when ``run`` will likely use it: ``--jobs`` > 1 on this machine, and a big
    checkpoint (by the sizes of its files, no reads) or one in object storage, whose
    headers take longest to read. Small ones and cached reruns may need no workers."""
    if run.jobs < 2 or run.executor not in ("auto", "processes") or run.cluster.named:
        return
    remote = storage.is_url(path)
    if not remote:
        try:
            if os.path.isdir(path):
                with os.scandir(path) as it:  # sizes only: nothing is opened
                    size = sum(e.stat().st_size for e in it if e.is_file(follow_symlinks=False))
            else:
                size = os.stat(path).st_size
        except OSError:
            return  # opening it says what is wrong
        if size < EARLY_START_BYTES:
            return
    start_early(remote)


@dataclass(frozen=True)
class Tick:
    """Progress of a dispatched analysis: matrices and stored bytes done of all
    (``cached`` of them taken from the cache), the stored tensor last finished."""

    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int
    cached_bytes: int
    name: str


def measure_task(path: str, policy: LoadPolicy, options: AnalyzeOptions,
                 group: tuple[Any, ...], run: str = "") -> list[Any]:
    """A worker's task: open the source at ``path`` itself, read the one stored tensor
    ``group`` names and measure its matrices (TensorResult or TensorError each).

    ``run`` names the dispatch the task belongs to: a shareable source (headers only,
    :attr:`~spectrum_cli.io.base.SourceBase.shareable`) opened for an earlier task of the
    same run is used again instead of reading its index and headers once more (from
    object storage, ~4 requests and ~46 ms a task)."""
    steady_malloc()  # a Dask worker's first task sets it; then a no-op
    source, own = _task_source(path, policy, run)
    try:
        return measure_group(source, group, options, plugins.get_backend,
                             plugins.metric_plugins())
    finally:
        if own:
            source.close()


#: Shareable sources this process opened for its tasks: (path, policy, run) -> source,
#: the most recent :data:`KEEP_SOURCES` (a long-lived Dask worker serves many runs).
_sources: dict[tuple[str, LoadPolicy, str], Any] = {}


_sources_lock = threading.Lock()


KEEP_SOURCES = 4


def _task_source(path: str, policy: LoadPolicy, run: str) -> tuple[Any, bool]:
    """(the source for a task, whether the task must close it)."""
    key = (path, policy, run)
    if run:
        with _sources_lock:
            kept = _sources.pop(key, None)
            if kept is not None:
                _sources[key] = kept  # most recent last
                return kept, False
    source = open_source(path, policy)
    if not run or not getattr(source, "shareable", False):
        return source, True
    with _sources_lock:
        source = _sources.setdefault(key, source)  # another thread may have been first
        while len(_sources) > KEEP_SOURCES:
            del _sources[next(iter(_sources))]  # shareable: nothing to close
    return source, False


class Dispatch:
    """The ``measure`` hook of :func:`~spectrum_cli.core.analyze.analyze_source` for one
    checkpoint: cached stored tensors first, then the misses in this process (one worker
    or fewer: today's path, in plan order) or as tasks of an executor, largest first.
    Outcomes come back in plan order whatever the order of completion."""

    def __init__(self, path: str, source: Any, info: Any, job: Job, run: RunOptions,
                 on_progress: Callable[[int, int, str], None] | None = None,
                 on_tick: Callable[[Tick], None] | None = None,
                 on_note: Callable[[str], None] | None = None,
                 content: Callable[[], str] | None = None) -> None:
        self.path, self.source, self.info, self.job, self.run = path, source, info, job, run
        self.on_progress, self.on_tick, self.on_note = on_progress, on_tick, on_note
        self.content = content  # the files' hash (waits for it), when already under way
        self.record: dict[str, Any] = {}
        self.from_cache = 0

    def __call__(self, planned: list[Any]) -> list[Any]:
        parts = groups(planned)
        options = self.job.options
        needs = [expected_bytes(g, options) for g in parts]
        self._sizes = [stored_bytes(g) for g in parts]
        self._total = (len(planned), sum(self._sizes))
        self._done = [0, 0, 0]  # matrices, bytes, cached bytes
        cache, keys = self._cache(parts)
        outcomes: list[list[Any] | None] = [None] * len(parts)
        for i, key in enumerate(keys):
            hit = cached_results(cache, key) if cache is not None else None
            if hit is not None and len(hit) == len(parts[i]):
                outcomes[i] = hit
                self.from_cache += len(hit)
                self._tick(i, parts[i], cached=True)
        misses = [i for i, o in enumerate(outcomes) if o is None]
        self._check_memory(parts, needs, misses)
        chosen = self._plan([needs[i] for i in misses])
        chosen = fit_memory(chosen, [needs[i] for i in misses], self.run.max_memory,
                            self.run.threads)
        chosen = self._serial_threads(chosen)
        peak = expected_peak(chosen, [needs[i] for i in misses]) if misses else 0
        runner = self._runner(chosen)

        self.record = {**chosen.as_settings(), **thread_settings(chosen.threads,
                                                                 self.run.threads),
                       "executor": runner.name if runner else "serial",
                       "max_memory": self.run.max_memory, "expected_peak_bytes": peak,
                       "memory_rule": MEMORY_RULE,
                       "cache": str(cache.folder) if cache is not None else None}
        if misses and self.on_note and (peak >= ANNOUNCE_PEAK or self.run.max_memory):
            self.on_note(f"expected peak memory {format_bytes(peak)} ({max(1, chosen.workers)}"
                         f" worker(s) x {chosen.threads} thread(s), {len(misses)} tensor(s) "
                         f"to measure; {MEMORY_RULE})")

        def finished(i: int, result: Any) -> None:
            if isinstance(result, BaseException):  # the worker died or could not read
                result = failed(parts[i], result)
            outcomes[i] = result
            if cache is not None:
                store_results(cache, keys[i], result, self.path)
            self._tick(i, parts[i], cached=False)

        if runner is None:
            steady_malloc()
            metrics = plugins.metric_plugins()
            for i in misses:
                finished(i, measure_group(self.source, parts[i], options,
                                          plugins.get_backend, metrics))
        else:
            order = sorted(misses, key=lambda i: -needs[i])  # largest first

            where = storage.absolute(self.path)
            run = uuid.uuid4().hex  # this dispatch's tasks share their worker's source
            tasks = [(where, self.job.policy, options, parts[i], run) for i in order]
            runner.run(measure_task, tasks, chosen, lambda k, r: finished(order[k], r))
        if self.on_progress:
            self.on_progress(len(planned), len(planned), "")
        return [o for part in outcomes for o in (part or [])]

    def _check_memory(self, parts: list[tuple[Any, ...]], needs: list[int],
                      misses: list[int]) -> None:
        """UsageError when one tensor to measure alone passes ``--max-memory``."""
        limit = self.run.max_memory
        over = [i for i in misses if limit is not None and needs[i] > limit]
        if over:
            i = max(over, key=lambda k: needs[k])
            raise UsageError(f"{self.path}: tensor {parts[i][0].source!r} "
                             f"{tuple(parts[i][0].shape)} is expected to need "
                             f"{format_bytes(needs[i])}, more than --max-memory "
                             f"{format_bytes(limit)} ({len(over)} tensor(s) over the limit)")

    def _plan(self, needs: list[int]) -> Any:
        return plan(self.run.jobs, self.run.threads, len(needs))

    def _serial_threads(self, chosen: Any) -> Any:
        """In this process the threads are the caller's
        (:func:`~spectrum_cli.runs.threads.default_threads`: ``threads``, else the
        environment's ``*_NUM_THREADS``, else every usable core)."""
        if chosen.workers:
            return chosen
        return Plan(chosen.jobs, 0, default_threads(self.run.threads), chosen.cores)

    def _runner(self, chosen: Any) -> Any:
        """The executor of the misses; None: this process's loop (no workers, and no
        executor other than auto or serial asked for)."""
        if not chosen.workers and (self.run.executor == "serial" or
                                   self.run.executor == "auto" and not self.run.cluster.named):
            return None
        return choose(self.run.executor, chosen, self.run.cluster)

    def _cache(self, parts: list[tuple[Any, ...]]) -> tuple[Any, list[str]]:
        """The cache (None: not used for this checkpoint) and each stored tensor's key:
        the files' content hash, the settings and code (:meth:`Job.settings_key`) and the
        tensor's name."""
        run = self.run
        if run.cache_dir is None or self.info.size_bytes < run.cache_min_bytes \
                or not self.source.files:
            return None, [""] * len(parts)

        content = (self.info.sha256 or (self.content() if self.content else None)
                   or sha256_files(tuple(self.source.files)))
        prefix = hashlib.sha256(f"{content}-{self.job.settings_key()}".encode()).hexdigest()
        keys = [f"{prefix[:32]}-{hashlib.sha256(g[0].source.encode()).hexdigest()[:32]}"
                for g in parts]
        cache = ResultCache(run.cache_dir, self.on_note)
        return (cache if cache.enabled else None), keys

    def _tick(self, i: int, group: tuple[Any, ...], cached: bool) -> None:
        self._done[0] += len(group)
        self._done[1] += self._sizes[i]
        self._done[2] += self._sizes[i] if cached else 0
        if self.on_progress:
            self.on_progress(self._done[0], self._total[0], group[0].name)
        if self.on_tick:
            self.on_tick(Tick(self._done[0], self._total[0], self._done[1], self._total[1],
                              self._done[2], group[0].name))


def stored_bytes(group: tuple[Any, ...]) -> int:
    """Bytes of the stored tensor a group of planned matrices is read from."""
    import math


    return math.prod(group[0].shape) * itemsize(group[0].dtype)


def failed(group: tuple[Any, ...], exc: BaseException) -> list[Any]:
    """Each matrix of a task that raised instead of returning: a TensorError."""
    why = str(exc) if isinstance(exc, SpectrumError) else \
        f"worker failed: {type(exc).__name__}: {exc}"
    return [TensorError(p.name, why) for p in group]

