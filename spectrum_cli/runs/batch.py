"""``spectrum batch``: analyse a directory of checkpoints into a trajectory.

Discovery (:func:`spectrum_cli.io.layout.discover`): the files and folders the installed
readers declare (``.pt .pth .ckpt .bin .npz .npy .safetensors``, HF ``checkpoint-<step>/``
and DCP folders, a plugin's) in a directory (or matching a glob), ordered by the step
the checkpoint itself stores, else by the last number in its name. Each is analysed
exactly as ``spectrum analyze`` would (:func:`spectrum_cli.runs.document.analyze_checkpoint`).

Caching: results are cached by the checkpoint's content hash and the settings. The
parent process hashes the checkpoints and reads the cache first, so a fully cached run
imports neither torch nor the user's model code and starts no worker. Only the misses are
computed, in worker processes with ``--jobs N``; the parent writes each result atomically
as it arrives, so a re-run (after a kill, say) redoes only what is missing. A damaged
entry (not JSON, or not fitting the record's schema: a field missing, a value of the
wrong type) is a miss with one warning and is overwritten; an unusable cache folder is
one warning, and the run goes on without a cache. A broken checkpoint is recorded and
skipped; the batch goes on. An entry named like a checkpoint that is a symlink leading
out of the folder, or not a regular file, is refused before anything reads it.

Workers and threads: see :mod:`spectrum_cli.runs.executors` (the ``spectrum.executors``
registry: ``serial`` and ``processes`` built in)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from spectrum_cli.core.errors import InputError, SpectrumError
from spectrum_cli.io import storage
from spectrum_cli.io.layout import Candidate
from spectrum_cli.report.document import json_safe
from spectrum_cli.runs.cache import (
    ResultCache,
    Warn,
    cache_key,
    cacheable,
    content_hash,
)
from spectrum_cli.runs.document import analyze_checkpoint
from spectrum_cli.runs.executors import Cluster, choose
from spectrum_cli.runs.indicators import indicators, sv_histogram
from spectrum_cli.runs.job import RunOptions
from spectrum_cli.runs.plan import Plan, plan


def compute_record(path: str, job: Any, key: str, run: Any = None) -> dict[str, Any]:
    """Analyse one checkpoint (no cache): its record, ``status`` "ok" or "error".
    ``run`` (:class:`~spectrum_cli.runs.job.RunOptions`): its tensors in parallel."""
    t0 = time.perf_counter()
    try:
        out = analyze_checkpoint(path, job, digest=False, run=run)
    except SpectrumError as exc:
        return {"path": path, "status": "error", "error": str(exc)}
    except Exception as exc:  # a bug or a torch failure on this file: keep going
        return {"path": path, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    doc = json_safe(out.doc)
    changed = storage.is_url(path) and not key.startswith(content_hash(path) + "-")
    return {"path": path, "status": "ok", "key": key, "cached": False,
            "identity_changed": changed,
            "step": doc.get("checkpoint", {}).get("step"),
            "loss": doc.get("checkpoint", {}).get("loss"),
            "indicators": indicators(doc), "document": doc,
            "violations": doc["fail_on"]["violations"], "warnings": out.warnings,
            "sv_histogram": sv_histogram(out.result),
            "time_s": time.perf_counter() - t0}


def _hashed(path: str, job: Any) -> tuple[str | None, dict[str, Any] | None]:
    """(key, None), or (None, an error record) when the checkpoint cannot be read."""
    try:
        return cache_key(path, job), None
    except OSError as exc:
        return None, {"path": path, "status": "error", "error": f"cannot read: {exc}"}
    except InputError as exc:  # an object store refused or lost the object
        return None, {"path": path, "status": "error", "error": str(exc)}


def _from_cache(cache: ResultCache, path: str, key: str) -> dict[str, Any] | None:
    record = cache.get(key)
    if record is None:
        return None
    record.pop("cache_format", None)
    record.update(path=path, cached=True, indicators=indicators(record["document"]))
    return record


@dataclass
class BatchResult:
    """Records ordered by step, the plan the misses ran with, the cache's warnings."""

    records: list[dict[str, Any]]
    plan: Plan
    cache_warnings: list[str] = field(default_factory=list)
    parallel_over: str = "checkpoints"


def _hash_all(candidates: list[Candidate], job: Any, jobs: int
              ) -> list[tuple[str | None, dict[str, Any] | None]]:
    """Every candidate's key (or error record); hashing releases the GIL, so threads."""
    if jobs <= 1 or len(candidates) <= 1:
        return [_hashed(c.path, job) for c in candidates]
    with ThreadPoolExecutor(max_workers=min(jobs, len(candidates))) as hashers:
        return list(hashers.map(lambda c: _hashed(c.path, job), candidates))


#: A checkpoint at least this big is analysed with its tensors in parallel, not whole in
#: one worker (which would serialise its tensors and hold the pool's other workers idle).
BIG_CHECKPOINT = 1 << 30


def checkpoint_bytes(path: str) -> int:
    """The stored size of a checkpoint (a file, or a folder's files), 0 if unknown."""
    try:
        if storage.is_url(path):
            return sum(int(m.get("size") or 0) for m in storage.objects(path).values())
        p = Path(path)
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except (OSError, SpectrumError):
        return 0


def parallel_over(misses: int, jobs: int, sizes: list[int], max_memory: int | None) -> str:
    """``"checkpoints"`` (one worker per checkpoint) or ``"tensors"`` (checkpoints one at
    a time, each one's tensors in parallel, largest first). Tensors when there are fewer
    checkpoints to compute than workers, when one of them is big
    (:data:`BIG_CHECKPOINT`), or under ``--max-memory``, whose per-tensor estimate only
    the tensor path can honour."""
    if jobs <= 1 or misses == 0:
        return "checkpoints"
    if max_memory is not None or misses < jobs or any(n >= BIG_CHECKPOINT for n in sizes):
        return "tensors"
    return "checkpoints"


def run_batch(candidates: list[Candidate], job: Any, jobs: int = 1,
              cache_dir: str | None = None, threads: int | None = None,
              on_result: Callable[[dict[str, Any]], None] | None = None,
              on_warning: Warn | None = None, executor: str = "auto",
              max_memory: int | None = None, cluster: Cluster = Cluster()
              ) -> BatchResult:
    """Analyse every candidate: cached results first (in this process: no torch, no
    user code), then the misses with ``executor`` (a name in the ``spectrum.executors``
    registry; ``auto``: worker processes when ``jobs`` > 1 and there are several), one
    checkpoint per task or, for big checkpoints and under ``max_memory`` (bytes), one
    tensor per task (:func:`parallel_over`)."""
    records: dict[str, dict[str, Any]] = {}
    cache = ResultCache(cache_dir, on_warning)

    def done(c: Candidate, record: dict[str, Any]) -> None:
        records[c.path] = record
        if on_result:
            on_result(record)

    misses: list[tuple[Candidate, str]] = []
    for c in candidates:  # never hashed, never opened
        if c.refused is not None:
            done(c, {"path": c.path, "status": "error", "error": c.refused})
    readable = [c for c in candidates if c.refused is None]
    for c, (key, error) in zip(readable, _hash_all(readable, job, jobs)):
        if error is not None or key is None:
            done(c, error or {"path": c.path, "status": "error", "error": "no key"})
            continue
        hit = _from_cache(cache, c.path, key)
        if hit is not None:
            done(c, hit)
        else:
            misses.append((c, key))

    def computed(c: Candidate, key: str, record: dict[str, Any]) -> None:
        if cacheable(record):
            cache.put(key, record)
        done(c, record)

    mode = parallel_over(len(misses), jobs, [checkpoint_bytes(c.path) for c, _ in misses]
                         if jobs > 1 and misses else [], max_memory)
    if mode == "tensors":
        chosen = plan(jobs, threads, jobs)
        tensors = RunOptions(jobs=jobs, threads=chosen.threads, max_memory=max_memory,
                             executor=executor, cluster=cluster)
        for c, key in misses:  # one checkpoint at a time; its tensors on every worker
            record = compute_record(storage.absolute(c.path), job, key, tensors)
            record["path"] = c.path
            computed(c, key, record)
        misses = []
    else:
        chosen = plan(jobs, threads, len(misses))
    if misses:
        def finished(i: int, result: Any) -> None:
            c, key = misses[i]
            if isinstance(result, BaseException):  # a worker died (OOM, signal)
                result = {"path": c.path, "status": "error",
                          "error": f"worker failed: {type(result).__name__}: {result}"}
            result["path"] = c.path  # as the user named it (the task had it absolute)
            computed(c, key, result)

        runner = choose(executor, chosen, cluster)
        # Absolute paths: a worker (a Dask one, say) has a working directory of its own.
        runner.run(compute_record,
                   [(storage.absolute(c.path), job, key) for c, key in misses],
                   chosen, finished)
    ordered = [records[c.path] for c in candidates]
    for c, r in zip(candidates, ordered):
        if r.get("step") is None:
            r["step"] = c.name_step
    ordered.sort(key=lambda r: (r.get("step") is None, r.get("step") or 0))
    return BatchResult(ordered, chosen, cache.warnings, mode)

