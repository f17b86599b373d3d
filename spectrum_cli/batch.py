"""``spectrum batch``: analyse a directory of checkpoints into a trajectory.

Discovery: checkpoint files (``.pt .pth .ckpt .bin .safetensors``) and HF
``checkpoint-<step>/`` folders in a directory (or matching a glob), ordered by the step
the checkpoint itself stores, else by the last number in its name. Each is analysed
exactly as ``spectrum analyze`` would (pipeline.analyze_checkpoint), in worker processes
with ``--jobs N`` (spawned; BLAS threads divided among them). Results are cached by the
checkpoint's content hash and the settings, written atomically as each finishes, so a
re-run (after a kill, say) redoes only what is missing. A broken checkpoint is recorded
and skipped; the batch goes on.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from spectrum_cli.core.errors import InputError, SpectrumError
from spectrum_cli.pipeline import Job

SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
#: Operator metrics that describe the Hessian or the optimizer, not one operator form.
SHARED = frozenset({"hessian_lambda_max", "hessian_lambda_min", "eos_ratio_gd",
                    "eos_ratio_momentum", "eos_ratio_adam", "commutator_norm_relative",
                    "preconditioner_spread"})
HF_DIR = re.compile(r"checkpoint-\d+$")


@dataclass(frozen=True)
class Candidate:
    path: str
    name_step: int | None


def _last_number(name: str) -> int | None:
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def discover(target: str) -> list[Candidate]:
    p = Path(target)
    if p.is_dir():
        items = [e for e in sorted(p.iterdir())
                 if (e.is_file() and e.suffix in SUFFIXES) or (e.is_dir() and HF_DIR.match(e.name))]
    else:
        items = [Path(x) for x in sorted(glob.glob(target))]
        if not items and not any(ch in target for ch in "*?["):
            raise InputError(f"{target}: no such file or directory")
    if not items:
        raise InputError(f"{target}: no checkpoints found (files {', '.join(SUFFIXES)} or "
                         "checkpoint-<step>/ folders)")
    found = [Candidate(str(e), _last_number(e.name)) for e in items]
    return sorted(found, key=lambda c: (c.name_step is None, c.name_step or 0, c.path))


def content_hash(path: str) -> str:
    """SHA-256 of every file of a checkpoint (one file, or a folder's files in order)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("SPECTRUM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "spectrum")
    return Path(base) / "batch"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def analyze_one(path: str, job: Job, cache_dir: str | None) -> dict[str, Any]:
    """One checkpoint's record (from the cache when its content and settings match)."""
    from spectrum_cli.pipeline import analyze_checkpoint
    from spectrum_cli.report.document import json_safe

    t0 = time.perf_counter()
    try:
        key = f"{content_hash(path)}-{job.settings_key()}"
    except OSError as exc:
        return {"path": path, "status": "error", "error": f"cannot read: {exc}"}
    cached = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            record = json.loads(cached.read_text())
            record.update(path=path, cached=True)
            record["indicators"] = indicators(record["document"])
            return record
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    try:
        out = analyze_checkpoint(path, job, digest=False)
    except SpectrumError as exc:
        return {"path": path, "status": "error", "error": str(exc)}
    except Exception as exc:  # a bug or a torch failure on this file: keep going
        return {"path": path, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    doc = json_safe(out.doc)
    record = {"path": path, "status": "ok", "key": key, "cached": False,
              "step": doc.get("checkpoint", {}).get("step"),
              "loss": doc.get("checkpoint", {}).get("loss"),
              "indicators": indicators(doc), "document": doc,
              "violations": doc["fail_on"]["violations"], "warnings": out.warnings,
              "time_s": time.perf_counter() - t0}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(cached, json.dumps(record))
    return record


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def indicators(doc: dict[str, Any]) -> dict[str, float]:
    """The scalar indicators of one checkpoint's document (see docs in README)."""
    out: dict[str, float] = {}
    ok = [t for t in doc.get("tensors", []) if t["status"] == "ok"]

    def collect(metric: str) -> list[float]:
        vals = [_number(t["metrics"].get(metric)) for t in ok]
        return [v for v in vals if v is not None and not math.isnan(v)]

    for metric, how in (("kappa", max), ("sigma_max", max), ("stable_rank", min),
                        ("spectral_entropy", "mean"), ("spectral_entropy_normalized", "mean"),
                        ("kappa_V", max), ("spectral_radius", max)):
        vals = collect(metric)
        if vals:
            name = f"tensors.{'mean' if how == 'mean' else how.__name__}_{metric}"
            out[name] = float(sum(vals) / len(vals)) if how == "mean" else float(how(vals))
    for op in doc.get("operators", []):
        for key, value in op["metrics"].items():
            v = _number(value)
            if v is not None:
                # Hessian-level metrics are the same for every operator of a checkpoint.
                prefix = "optimizer" if key in SHARED else op["form"]
                out[f"{prefix}.{key}"] = v
        for p in op.get("details", {}).get("pseudospectral_radius", []):
            v = _number(p["value"])
            if v is not None:
                out[f"{op['form']}.rho_eps[{float(p['eps']):g}]"] = v
    spread = _number(doc.get("optimizer", {}).get("preconditioner_spread"))
    if spread is not None:
        out["optimizer.preconditioner_spread"] = spread
    return out


def _worker_init(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def run(candidates: list[Candidate], job: Job, jobs: int = 1, cache_dir: str | None = None,
        on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Analyse every candidate; records come back ordered by step."""
    records: dict[str, dict[str, Any]] = {}

    def done(c: Candidate, record: dict[str, Any]) -> None:
        records[c.path] = record
        if on_result:
            on_result(record)

    if jobs <= 1 or len(candidates) <= 1:
        for c in candidates:
            done(c, analyze_one(c.path, job, cache_dir))
    else:
        _run_parallel(candidates, job, jobs, cache_dir, done)
    ordered = [records[c.path] for c in candidates]
    for c, r in zip(candidates, ordered):
        if r.get("step") is None:
            r["step"] = c.name_step
    return sorted(ordered, key=lambda r: (r.get("step") is None, r.get("step") or 0))


def _context():
    """Workers fork from a server that imported torch and spectrum once (where the
    platform has one): otherwise each worker pays an interpreter start and a ~2 s torch
    import before its first result. BLAS is single-threaded there, so forking is safe."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "spectrum_cli.pipeline", "spectrum_cli.optimizer",
                                    "spectrum_backends.dense"])
        return ctx
    return multiprocessing.get_context("spawn")


def _run_parallel(candidates, job, jobs, cache_dir, done) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: str(threads) for k in names})  # inherited by the workers
    try:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init,
                                 initargs=(threads,), mp_context=_context()) as pool:
            pending = {pool.submit(analyze_one, c.path, job, cache_dir): c for c in candidates}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    c = pending.pop(future)
                    try:
                        done(c, future.result())
                    except Exception as exc:  # a worker died (OOM, signal)
                        done(c, {"path": c.path, "status": "error",
                                 "error": f"worker failed: {exc}"})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
