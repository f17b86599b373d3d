"""One checkpoint, end to end: read, measure every matrix, analyse the optimizer state,
check ``--fail-on``, build the report document. ``spectrum analyze`` runs it once;
``spectrum batch`` runs it per checkpoint, possibly in worker processes (everything here
is picklable and prints nothing)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from spectrum_cli import settings
from spectrum_cli.core.analyze import AnalyzeOptions
from spectrum_cli.io.base import LoadPolicy

#: Settings that shape the analysis (and so the cache key of batch results), from the
#: schema; include, exclude and eps are parsed first.
OPTION_KEYS = tuple(k for k in settings.names("analysis") if k not in ("include", "exclude",
                                                                     "eps"))
OPERATOR_KEYS = settings.names("operator")


@dataclass(frozen=True)
class Job:
    """Everything that decides what analysing a checkpoint produces."""

    options: AnalyzeOptions
    operator_values: tuple[tuple[str, Any], ...] = ()
    fail_on: tuple[str, ...] = ()
    policy: LoadPolicy = field(default_factory=LoadPolicy)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], policy: LoadPolicy) -> "Job":
        from spectrum_cli.core.thresholds import parse_conditions, parse_eps

        fail_on = tuple(values.get("fail_on", ()))
        # Validate now: a bad condition is a usage error up front.
        parse_conditions(fail_on, metric_names())
        options = AnalyzeOptions(
            include=tuple(values.get("include", ())), exclude=tuple(values.get("exclude", ())),
            eps=parse_eps(values.get("eps", [])),
            **{k: values[k] for k in OPTION_KEYS if k in values})
        ops = tuple((k, tuple(values[k]) if isinstance(values[k], list) else values[k])
                    for k in OPERATOR_KEYS if k in values)
        return cls(options, ops, fail_on, policy)

    @property
    def values(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.operator_values}

    def settings_key(self) -> str:
        """A hash of the settings and of spectrum's own code (for caching batch results:
        a new version, or any edit of the code, invalidates them)."""
        blob = json.dumps({"options": self.options.as_dict(), "ops": self.values,
                           "fail_on": list(self.fail_on), "code": code_fingerprint(),
                           "policy": asdict(self.policy)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def metric_names() -> list[str]:
    """Names --fail-on accepts beside the core's: the registered metrics (entry points
    only: nothing is imported) and the operator metrics each optimizer rule declares."""
    from spectrum_cli import plugins

    rules = plugins.optimizers.loaded().values()
    return plugins.metrics.names() + [m for r in rules for m in getattr(r, "metrics", {})]


_FINGERPRINT: list[str] = []


def code_fingerprint() -> str:
    """SHA-256 of the version and every source file of spectrum_cli and its backends."""
    if not _FINGERPRINT:
        import spectrum_backends
        import spectrum_cli

        h = hashlib.sha256(spectrum_cli.__version__.encode())
        for pkg in (spectrum_cli, spectrum_backends):
            root = Path(pkg.__file__).parent
            for f in sorted(root.rglob("*.py")):
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
        _FINGERPRINT.append(h.hexdigest()[:16])
    return _FINGERPRINT[0]


class Digest:
    """The SHA-256 of files (:func:`~spectrum_cli.io.base.sha256_files`), computed in a
    daemon thread from construction on; :meth:`result` waits for it and raises what the
    hashing raised."""

    def __init__(self, files: tuple[str, ...]) -> None:
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(files,), daemon=True,
                                        name="spectrum-sha256")
        self._thread.start()

    def _run(self, files: tuple[str, ...]) -> None:
        from spectrum_cli.io.base import sha256_files

        try:
            self._value = sha256_files(files)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


@dataclass
class Outcome:
    doc: dict[str, Any]
    result: Any
    operator_arrays: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    violations: list[Any] = field(default_factory=list)


class Checkable:
    """An operator entry seen as a tensor by --fail-on (name, metrics, unavailable)."""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.name = entry["name"]
        self.metrics = entry["metrics"]
        self.unavailable = entry.get("unavailable", {})


def analyze_checkpoint(path: str, job: Job, digest: bool = True,
                       on_progress: Callable[[int, int, str], None] | None = None,
                       run: "RunOptions | None" = None,
                       on_tick: "Callable[[Tick], None] | None" = None,
                       on_note: Callable[[str], None] | None = None) -> Outcome:
    """Analyse one checkpoint (file or HF folder) as ``spectrum analyze`` does.

    ``run`` None: every tensor in this process, as batch's workers do. Otherwise the
    tensors are measured as ``run`` says (worker processes, memory limit, per-tensor
    cache: :class:`Dispatch`), the plan is recorded in ``settings.run`` and the tensors
    taken from the cache are counted in ``summary.from_cache``; ``on_tick`` follows the
    progress (tensors, bytes) and ``on_note`` receives what is said up front (the
    expected peak memory of big inputs)."""
    from spectrum_cli import plugins
    from spectrum_cli.core.analyze import analyze_source
    from spectrum_cli.core.results import SourceInfo
    from spectrum_cli.core.thresholds import evaluate, parse_conditions
    from spectrum_cli.io import open_source
    from spectrum_cli.io.base import total_size
    from spectrum_cli.report.document import build_document

    t0 = time.perf_counter()
    conditions = parse_conditions(job.fail_on, metric_names())
    warnings: list[str] = []
    if run is not None:
        start_workers_early(str(path), run)
    source = open_source(str(path), job.policy)
    try:
        # The content hash runs beside the measurements (reading and hashing release the
        # GIL): on a 2 GB checkpoint it is ~1.6 s, on a 140 GB one minutes.
        content = Digest(tuple(source.files)) if digest else None
        info = SourceInfo(str(path), source.format, source.files, total_size(source.files),
                          None, tuple(source.notes))
        dispatch = None if run is None else Dispatch(str(path), source, info, job, run,
                                                     on_progress, on_tick, on_note,
                                                     content.result if content else None)
        result = analyze_source(source, info, job.options, plugins.get_backend,
                                on_progress=on_progress, metrics=plugins.metric_plugins(),
                                measure=dispatch)
        if content is not None:
            result = replace(result, source=replace(result.source, sha256=content.result()))
        optim = optimizer_report(source, job, warnings)
        scalars = checkpoint_scalars(source, warnings)
    finally:
        source.close()
    operators = optim.operators if optim else []
    checked = list(result.tensors) + [Checkable(o) for o in operators]
    violations = evaluate(conditions, checked)
    doc = build_document(result, conditions, violations)
    doc["checkpoint"] = scalars
    if dispatch is not None:
        doc["settings"]["run"] = dispatch.record
        doc["summary"]["from_cache"] = dispatch.from_cache
    attach_operators(doc, optim, conditions)
    # All the work: reading, measuring, the optimizer state and its operators.
    doc["summary"]["wall_s"] = time.perf_counter() - t0
    return Outcome(doc, result, optim.arrays if optim else [], warnings, violations)


def attach_operators(doc: dict[str, Any], optim: Any, conditions: Any) -> None:
    """Put an optimizer report (:class:`~spectrum_cli.optim.analysis.OptimizerReport`,
    or None) into an analysis document: the optimizer's metrics and notes, the operators,
    the --fail-on conditions they could not check, their count."""
    from spectrum_cli.report.document import unchecked

    if optim is None:
        return
    operators = optim.operators
    doc["optimizer"] = dict(optim.optimizer, notes=optim.notes)
    doc["operators"] = operators
    doc["fail_on"]["unchecked"] += unchecked(conditions, [Checkable(o) for o in operators])
    doc["summary"]["operators"] = len(operators)


# --------------------------------------------------------------------------- dispatch

#: An analysis whose expected peak memory reaches this says it up front.
ANNOUNCE_PEAK = 1 << 30
#: The command line's default cache serves checkpoints of at least this many bytes.
RESUME_MIN_BYTES = 256 << 20
#: Checkpoints of at least this many bytes (or any URL) start the workers' forkserver
#: before their headers are read, when the run may use worker processes.
EARLY_START_BYTES = 64 << 20


def start_workers_early(path: str, run: "RunOptions") -> None:
    """Start the worker processes' server (:func:`spectrum_cli.executors.start_early`)
    now when ``run`` will likely use it: ``--jobs`` > 1 on this machine, and a big
    checkpoint (by the sizes of its files, no reads) or one in object storage, whose
    headers take longest to read. Small ones and cached reruns may need no workers."""
    from spectrum_cli.executors import scheduler_named, start_early
    from spectrum_cli.io import storage

    if run.jobs < 2 or run.executor not in ("auto", "processes") or scheduler_named():
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
class RunOptions:
    """How one checkpoint's tensors are measured (what is measured is the :class:`Job`):
    ``jobs`` worker processes (1: this process) of ``threads`` threads, fewer where
    their expected peak would pass ``max_memory`` bytes; per-tensor results cached in
    ``cache_dir`` (None: no cache) for checkpoints of at least ``cache_min_bytes``."""

    jobs: int = 1
    threads: int | None = None
    max_memory: int | None = None
    executor: str = "auto"
    cache_dir: str | None = None
    cache_min_bytes: int = 0

    def __post_init__(self) -> None:
        from spectrum_cli.core.errors import UsageError

        if not (isinstance(self.jobs, int) and self.jobs >= 1):
            raise UsageError(f"--jobs: expected a positive integer, got {self.jobs!r}")


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
    from spectrum_cli import plugins
    from spectrum_cli.core.analyze import measure_group
    from spectrum_cli.executors import steady_malloc

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
    from spectrum_cli.io import open_source

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
        from spectrum_cli.core.analyze import MEMORY_RULE, expected_bytes, groups
        from spectrum_cli.executors import expected_peak, fit_memory

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
        from spectrum_cli.executors import thread_settings

        self.record = {**chosen.as_settings(), **thread_settings(chosen.threads,
                                                                 self.run.threads),
                       "executor": runner.name if runner else "serial",
                       "max_memory": self.run.max_memory, "expected_peak_bytes": peak,
                       "memory_rule": MEMORY_RULE,
                       "cache": str(cache.folder) if cache is not None else None}
        if misses and self.on_note and (peak >= ANNOUNCE_PEAK or self.run.max_memory):
            from spectrum_cli.executors import format_bytes

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
            from spectrum_cli import plugins
            from spectrum_cli.core.analyze import measure_group
            from spectrum_cli.executors import steady_malloc

            steady_malloc()
            metrics = plugins.metric_plugins()
            for i in misses:
                finished(i, measure_group(self.source, parts[i], options,
                                          plugins.get_backend, metrics))
        else:
            order = sorted(misses, key=lambda i: -needs[i])  # largest first
            from spectrum_cli.io import storage

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
        from spectrum_cli.core.errors import UsageError
        from spectrum_cli.executors import format_bytes

        limit = self.run.max_memory
        over = [i for i in misses if limit is not None and needs[i] > limit]
        if over:
            i = max(over, key=lambda k: needs[k])
            raise UsageError(f"{self.path}: tensor {parts[i][0].source!r} "
                             f"{tuple(parts[i][0].shape)} is expected to need "
                             f"{format_bytes(needs[i])}, more than --max-memory "
                             f"{format_bytes(limit)} ({len(over)} tensor(s) over the limit)")

    def _plan(self, needs: list[int]) -> Any:
        from spectrum_cli.executors import plan

        return plan(self.run.jobs, self.run.threads, len(needs))

    def _serial_threads(self, chosen: Any) -> Any:
        """In this process the threads are the caller's
        (:func:`~spectrum_cli.executors.default_threads`: ``threads``, else the
        environment's ``*_NUM_THREADS``, else every usable core)."""
        from spectrum_cli.executors import Plan, default_threads

        if chosen.workers:
            return chosen
        return Plan(chosen.jobs, 0, default_threads(self.run.threads), chosen.cores)

    def _runner(self, chosen: Any) -> Any:
        """The executor of the misses; None: this process's loop (no workers, and no
        executor other than auto or serial asked for)."""
        from spectrum_cli.executors import choose, scheduler_named

        if not chosen.workers and (self.run.executor == "serial" or
                                   self.run.executor == "auto" and not scheduler_named()):
            return None
        return choose(self.run.executor, chosen)

    def _cache(self, parts: list[tuple[Any, ...]]) -> tuple[Any, list[str]]:
        """The cache (None: not used for this checkpoint) and each stored tensor's key:
        the files' content hash, the settings and code (:meth:`Job.settings_key`) and the
        tensor's name."""
        run = self.run
        if run.cache_dir is None or self.info.size_bytes < run.cache_min_bytes \
                or not self.source.files:
            return None, [""] * len(parts)
        from spectrum_cli.batch import ResultCache
        from spectrum_cli.io.base import sha256_files

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

    from spectrum_cli.core.analyze import itemsize

    return math.prod(group[0].shape) * itemsize(group[0].dtype)


def failed(group: tuple[Any, ...], exc: BaseException) -> list[Any]:
    """Each matrix of a task that raised instead of returning: a TensorError."""
    from spectrum_cli.core.errors import SpectrumError
    from spectrum_cli.core.results import TensorError

    why = str(exc) if isinstance(exc, SpectrumError) else \
        f"worker failed: {type(exc).__name__}: {exc}"
    return [TensorError(p.name, why) for p in group]


def cached_results(cache: Any, key: str) -> list[Any] | None:
    """The results cached under ``key``, or None (absent, damaged or not ours)."""
    record = cache.get(key)
    if record is None or not isinstance(record.get("results"), list):
        return None
    try:
        return [decode(r) for r in record["results"]]
    except (TypeError, ValueError, KeyError, AttributeError, ImportError, RecursionError):
        return None


def store_results(cache: Any, key: str, results: list[Any], path: str = "") -> None:
    """Cache one stored tensor's results (only when every matrix of it succeeded: a
    failure is tried again next time), in the layout batch's ResultCache accepts."""
    from spectrum_cli.core.results import TensorResult
    from spectrum_cli.report.document import json_safe, tensor_entry

    if not results or not all(isinstance(r, TensorResult) for r in results):
        return
    try:
        encoded = [encode(r) for r in results]
    except TypeError:  # something the codec does not know: not cached
        return
    cache.put(key, {"path": path, "status": "ok", "key": key, "step": None, "loss": None,
                    "violations": [], "warnings": [], "results": encoded,
                    "document": {"tensors": [json_safe(tensor_entry(r)) for r in results]}})


#: Dataclasses the result codec rebuilds: spectrum's own core results, nothing else.
_CODEC_MODULES = ("spectrum_cli.core.",)


def encode(x: Any) -> Any:
    """A result (a TensorResult and what it holds) as JSON-able data that
    :func:`decode` turns back into an equal object, bit for bit (floats are written as
    their shortest repr, which reads back exactly). TypeError for anything else."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        cls = type(x)
        if not cls.__module__.startswith(_CODEC_MODULES):
            raise TypeError(f"not a result: {cls.__module__}.{cls.__qualname__}")
        return {"__dc__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: encode(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biufc":
            raise TypeError(f"array of {x.dtype}")
        flat = x.ravel().tolist()
        data = [[v.real, v.imag] for v in flat] if x.dtype.kind == "c" else flat
        return {"__nd__": x.dtype.str, "shape": list(x.shape), "data": data}
    if isinstance(x, np.generic):
        return encode(x.item())
    if isinstance(x, complex):
        return {"__c__": [x.real, x.imag]}
    if isinstance(x, tuple):
        return {"__t__": [encode(v) for v in x]}
    if isinstance(x, list):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise TypeError("a mapping with keys other than strings")
        return {"__d__": {k: encode(v) for k, v in x.items()}}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"not a result: {type(x).__name__}")


def decode(x: Any) -> Any:
    """The object :func:`encode` wrote (ValueError/TypeError for anything it did not:
    only dataclasses of spectrum's core are rebuilt, nothing is imported from elsewhere)."""
    import dataclasses
    import importlib

    import numpy as np

    if isinstance(x, list):
        return [decode(v) for v in x]
    if not isinstance(x, dict):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"unexpected {type(x).__name__}")
    if "__t__" in x:
        return tuple(decode(v) for v in x["__t__"])
    if "__d__" in x:
        return {str(k): decode(v) for k, v in x["__d__"].items()}
    if "__c__" in x:
        return complex(*x["__c__"])
    if "__nd__" in x:
        dtype = np.dtype(str(x["__nd__"]))
        if dtype.kind not in "biufc":
            raise TypeError(f"array of {dtype}")
        data = [complex(*v) for v in x["data"]] if dtype.kind == "c" else x["data"]
        return np.asarray(data, dtype=dtype).reshape([int(n) for n in x["shape"]])
    if "__dc__" in x:
        module, _, name = str(x["__dc__"]).partition(":")
        if not module.startswith(_CODEC_MODULES) or not name.isidentifier():
            raise ValueError(f"not a result class: {x['__dc__']!r}")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"not a result class: {x['__dc__']!r}")
        return cls(**{str(k): decode(v) for k, v in x["fields"].items()})
    raise ValueError("unexpected mapping")


def optimizer_report(source: Any, job: Job, warnings: list[str]) -> Any:
    """The optimizer-state analysis, when the checkpoint has an optimizer state."""
    from spectrum_cli.core.errors import UsageError
    from spectrum_cli.io.optimizer_state import locate
    from spectrum_cli.optim.analysis import HessianSource, OperatorOptions, analyze_optimizer

    v = job.values
    if bool(v.get("model")) != bool(v.get("data")):
        raise UsageError("--model and --data go together (a Hessian needs both)")
    hess = HessianSource(v["model"], v["data"], v.get("loss", "mse")) if v.get("model") \
        else None
    state, where, weights = locate(source, job.policy)
    if state is None:
        if hess is not None:
            warnings.append("--model/--data given but the checkpoint holds no optimizer "
                            "state: there is no update operator to build")
        return None
    o = job.options
    opts = OperatorOptions(eps=o.eps, power_max=o.power_max, seed=o.seed,
                           params=tuple(v.get("params", ())),
                           **{k: v[k] for k in ("dense_max", "coordinates", "step_convention")
                              if k in v})
    report = analyze_optimizer(state, weights, hess, opts, where=f"{source.path} ({where})")
    report.optimizer["found_in"] = where
    report.optimizer["hessian_source"] = None if hess is None else {
        "model": hess.model, "data": hess.data, "loss": hess.loss}
    stored = source.scalars()
    if report.optimizer.get("step") is None and "step" in stored:
        report.optimizer["step"] = stored["step"]  # SGD keeps no step: the checkpoint's
        report.optimizer["step_from"] = "checkpoint"
    return report


def checkpoint_scalars(source: Any, warnings: list[str] | None = None) -> dict[str, Any]:
    """Step and loss stored in a training checkpoint's top level, or in an HF
    ``trainer_state.json`` beside the weights (its last logged loss at or before the
    checkpoint's global step). A damaged ``trainer_state.json`` is ignored with a
    warning: the scalars are a courtesy, the weights are the analysis."""
    from spectrum_cli.io import storage

    out: dict[str, Any] = {}
    folder = source.path if storage.pisdir(source.path) else storage.pdirname(source.path)
    state_file = storage.pjoin(folder, "trainer_state.json")
    present = (storage.exists(state_file) if storage.is_url(state_file)
               else os.path.isfile(state_file))  # a FIFO or a folder of that name: no
    if present:
        try:
            out.update(trainer_state_scalars(state_file))
        except ValueError as exc:
            if warnings is not None:
                warnings.append(f"{state_file}: ignored ({exc})")
    stored = source.scalars()
    if "step" not in out and "step" in stored:
        out["step"] = stored["step"]
    if "loss" in stored:
        out["loss"] = stored["loss"]
    return out


_MAX_TRAINER_STATE = 64 << 20


def _is_number(x: Any) -> bool:
    import math

    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def trainer_state_scalars(path: str | os.PathLike) -> dict[str, Any]:
    """``global_step`` and the last logged ``loss`` at or before it from an HF
    ``trainer_state.json`` (a local path or a URL); ValueError says what is wrong with a
    damaged one."""
    from spectrum_cli.core.errors import InputError
    from spectrum_cli.io.base import open_regular

    try:
        with open_regular(os.fspath(path)) as fh:
            blob = fh.read(_MAX_TRAINER_STATE + 1)
    except (OSError, InputError) as exc:
        raise ValueError(f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(blob) > _MAX_TRAINER_STATE:
        raise ValueError(f"larger than {_MAX_TRAINER_STATE >> 20} MiB")
    try:
        state = json.loads(blob)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not JSON: {type(exc).__name__}") from None
    from spectrum_cli.io.readers import stored_loss, stored_step

    step = stored_step(state.get("global_step")) if isinstance(state, dict) else None
    if step is None:  # missing, negative, beyond int64, not a number
        raise ValueError("no global_step from 0 to 2**63-1")
    history = state.get("log_history", [])
    if not isinstance(history, list):
        raise ValueError("log_history is not a list")
    logged = [e for e in history if isinstance(e, dict)
              and stored_loss(e.get("loss")) is not None
              and (s := stored_step(e.get("step", 0))) is not None and s <= step]
    out: dict[str, Any] = {"step": step, "from": "trainer_state.json"}
    if logged:
        out["loss"] = stored_loss(logged[-1]["loss"])
    return out


def config_values(cli: Mapping[str, Any], near: Path | None) -> tuple[dict[str, Any], Any]:
    """Resolved configuration (CLI > env > file) and the Config object."""
    from spectrum_cli import config

    cfg = config.resolve(cli, near=near)
    return cfg.values, cfg
