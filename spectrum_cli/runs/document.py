"""One checkpoint, end to end, into its analysis document: read, measure every matrix,
analyse the optimizer state, check ``--fail-on``. The one assembly of the document for
``analyze``, ``batch``, ``watch``, the training callbacks and the array API (everything
here is picklable and prints nothing)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from spectrum_cli import plugins
from spectrum_cli.core.analyze import analyze_source
from spectrum_cli.core.results import SourceInfo
from spectrum_cli.core.thresholds import evaluate, parse_conditions
from spectrum_cli.io import open_source
from spectrum_cli.io.base import sha256_files, total_size
from spectrum_cli.io.trainer_state import checkpoint_scalars
from spectrum_cli.report.document import Checkable, build_document
from spectrum_cli.runs.dispatch import Dispatch, Tick, start_workers_early
from spectrum_cli.runs.job import Job, RunOptions, metric_names
from spectrum_cli.runs.optimizer import (
    optimizer_report,
)


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
        result = measure(source, info, job.options, on_progress, dispatch)
        if content is not None:
            result = replace(result, source=replace(result.source, sha256=content.result()))
        optim = optimizer_report(source, job, warnings)
        scalars = checkpoint_scalars(source, warnings)
    finally:
        source.close()
    out = assemble(result, conditions, optim, scalars, dispatch)
    out.warnings.extend(warnings)
    # All the work: reading, measuring, the optimizer state and its operators.
    out.doc["summary"]["wall_s"] = time.perf_counter() - t0
    return out


def measure(source: Any, info: Any, options: Any,
            on_progress: Callable[[int, int, str], None] | None = None,
            dispatch: Dispatch | None = None) -> Any:
    """Every selected matrix of ``source`` measured with the registered backends and
    metrics (:func:`spectrum_cli.core.analyze.analyze_source`), in this process or as
    ``dispatch`` (:class:`~spectrum_cli.runs.dispatch.Dispatch`) says."""
    return analyze_source(source, info, options, plugins.get_backend,
                          on_progress=on_progress, metrics=plugins.metric_plugins(),
                          measure=dispatch)


def assemble(result: Any, conditions: Any, optim: Any = None,
             checkpoint: Mapping[str, Any] | None = None,
             dispatch: Dispatch | None = None) -> Outcome:
    """The analysis document of measured tensors (``result``), the optimizer report
    ``optim`` (or None) and the checkpoint's scalars (step, loss): ``--fail-on`` checked
    on the tensors and the operators, the run plan and the tensors taken from the cache
    when a ``dispatch`` measured them. The one place a document is put together
    (``analyze``, ``batch``, ``watch``, the callbacks and the array API)."""
    operators = optim.operators if optim else []
    violations = evaluate(conditions, list(result.tensors) + [Checkable(o) for o in operators])
    doc = build_document(result, conditions, violations, optim, checkpoint)
    if dispatch is not None:
        doc["settings"]["run"] = dispatch.record
        doc["summary"]["from_cache"] = dispatch.from_cache
    return Outcome(doc, result, optim.arrays if optim else [], [], violations)
