"""``spectrum batch``: analyse a directory of checkpoints into a trajectory.

Discovery: checkpoint files (``.pt .pth .ckpt .bin .safetensors``) and HF
``checkpoint-<step>/`` folders in a directory (or matching a glob), ordered by the step
the checkpoint itself stores, else by the last number in its name. Each is analysed
exactly as ``spectrum analyze`` would (pipeline.analyze_checkpoint).

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

Workers and threads: see :mod:`spectrum_cli.executors` (the ``spectrum.executors``
registry: ``serial`` and ``processes`` built in).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from spectrum_cli.core.errors import InputError, SpectrumError
from spectrum_cli.io import storage
from spectrum_cli.io.base import file_kind, hash_file
from spectrum_cli.core.metrics import METRICS
from spectrum_cli.executors import Plan, choose, plan

SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
#: Operator metrics that describe the Hessian or the optimizer, not one operator form
#: (and every edge-of-stability ratio, ``eos_ratio_*``, whichever rule reports it).
SHARED = frozenset({"hessian_lambda_max", "hessian_lambda_min", "commutator_norm_relative",
                    "preconditioner_spread"})


def _shared(key: str) -> bool:
    return key in SHARED or key.startswith("eos_ratio_")
HF_DIR = re.compile(r"checkpoint-\d+$")
#: Version of a cache entry's layout: entries of another version are misses.
CACHE_FORMAT = 2
#: A cache entry larger than this is not read (it is not one of ours).
CACHE_ENTRY_MAX = 1 << 30
#: Per-tensor κ indicators (weights-only checkpoints): at most this many tensors, the
#: largest by element count (a fixed choice along a run, so the series are aligned).
PER_TENSOR_MAX = 64
#: Set while a worker pool starts: the forkserver (whose parent has this pid) arms its
#: parent-death signal when it imports this module (see _arm_forkserver).

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    path: str
    name_step: int | None
    #: Why it is not read at all (a symlink leading out of the folder, not a regular
    #: file): recorded as a failed checkpoint without opening anything.
    refused: str | None = None


#: What marks a torch.distributed.checkpoint folder (written last by DCP).
DCP_METADATA = ".metadata"


#: Steps are int64 (TensorBoard, HDF5); a larger number in a name is not a step.
STEP_MAX = 2**63 - 1


def _last_number(name: str) -> int | None:
    """The step in a checkpoint's name: its last number, if it fits a step."""
    numbers = re.findall(r"\d+", name)
    if not numbers or len(numbers[-1]) > 19 or int(numbers[-1]) > STEP_MAX:
        return None
    return int(numbers[-1])


def discover(target: str) -> list[Candidate]:
    """The checkpoints of a folder (or matching a glob), ordered by the step in their
    names. An entry named like a checkpoint that must not be read (a symlink leading out
    of the folder, a file that is not a regular file: a FIFO, a device, ``/proc``'s
    files) is a candidate with :attr:`Candidate.refused` set, and is never opened."""
    if storage.is_url(target):
        return _discover_remote(target)
    p = Path(target)
    if p.is_dir():
        root = str(p)
        items = [e for e in sorted(p.iterdir())
                 if (e.suffix in SUFFIXES and not e.is_dir()) or (e.is_dir() and (
                     HF_DIR.match(e.name) or (e / DCP_METADATA).is_file()))]
    else:  # a glob lists a folder; a file named outright may be a link to anywhere
        root = _glob_root(target) if any(ch in target for ch in "*?[") else \
            os.path.dirname(os.path.realpath(target))
        items = [Path(x) for x in sorted(glob.glob(target))]
        if not items and not any(ch in target for ch in "*?["):
            raise InputError(f"{target}: no such file or directory")
    if not items:
        raise InputError(f"{target}: no checkpoints found (files {', '.join(SUFFIXES)} or "
                         "checkpoint-<step>/ or DCP folders)")
    found = [Candidate(str(e), _last_number(e.name), refusal(str(e), root)) for e in items]
    return sorted(found, key=lambda c: (c.name_step is None, c.name_step or 0, c.path))


def _glob_root(pattern: str) -> str:
    """The folder a glob lists: its leading components without a wildcard."""
    parts: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def refusal(path: str, root: str, limit: int = 10_000) -> str | None:
    """Why the local checkpoint ``path`` (a file, or a checkpoint folder and its files)
    under the folder ``root`` must not be read, or None: a symlink (of it, or of a file
    or folder in it) that leads out of ``root``, or a file that is not a regular file.
    Decided from the links and ``stat`` alone: nothing is opened (a symlink to
    ``/proc/self/pagemap`` or to a FIFO would hang whoever reads it)."""
    base = os.path.realpath(root)

    def judge(p: str, shown: str) -> str | None:
        real = os.path.realpath(p)
        if not _within(real, base):
            return (f"refused: {shown}a symlink leading out of the folder {root} (to "
                    f"{real}); it is not read")
        try:
            st = os.stat(p)
        except OSError as exc:
            if os.path.islink(p):
                return f"refused: {shown}a symlink to a missing file (or a loop)"
            return f"cannot read {shown.removesuffix(' is ') or 'it'}: {exc.strerror or exc}"
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            return f"refused: {shown}{file_kind(st.st_mode)}, not a regular file"
        return None

    problem = judge(path, "")
    if problem is not None or not os.path.isdir(path):
        return problem
    seen = 0
    for folder, dirs, names in os.walk(path, followlinks=False):
        for n in sorted(dirs) + sorted(names):
            seen += 1
            if seen > limit:
                return None
            full = os.path.join(folder, n)
            if n in dirs and not os.path.islink(full):
                continue
            problem = judge(full, f"{full} is ")
            if problem is not None:
                return problem
    return None


def _discover_remote(target: str) -> list[Candidate]:
    """:func:`discover` for an object-store folder or glob."""
    if any(ch in target for ch in "*?["):
        items = [(u, storage.pisdir(u)) for u in storage.glob(target)]
    elif storage.is_dir(target):
        items = [(u, is_dir) for u, is_dir, _ in storage.entries(target)]
    else:
        items = [(target, False)]
    found = [Candidate(u, _last_number(storage.basename(u))) for u, is_dir in items
             if (is_dir and (HF_DIR.match(storage.basename(u))
                             or storage.exists(storage.join(u, DCP_METADATA))))
             or (not is_dir and os.path.splitext(u)[1] in SUFFIXES)]
    if not found:
        raise InputError(f"{target}: no checkpoints found (files {', '.join(SUFFIXES)} or "
                         "checkpoint-<step>/ or DCP folders)")
    return sorted(found, key=lambda c: (c.name_step is None, c.name_step or 0, c.path))


# --------------------------------------------------------------------------- hashing


def _open_regular(path: Path, limit: int | None = None) -> int:
    """A read-only descriptor of a regular file (never blocks on a FIFO or a device)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if limit is not None and st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def content_hash(path: str) -> str:
    """SHA-256 of every file of a checkpoint (one file, or a folder's files in order); for
    a URL, of what the store says of each object's content (size, ETag: see
    :mod:`spectrum_cli.io.storage`), so that nothing is downloaded to hash it."""
    if storage.is_url(path):
        return "remote-" + storage.identity_digest(storage.objects(path))
    p = Path(path)
    files = [p] if not p.is_dir() else sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    for f in files:
        h.update(os.fsencode(f.relative_to(p) if p.is_dir() else f.name))
        hash_file(h, str(f), buf)  # regular files only, /proc's refused, stat size exactly
    return h.hexdigest()


def cacheable(record: dict[str, Any]) -> bool:
    """Whether a computed record may be cached: it is "ok", none of its tensors failed to
    be read (a transient I/O failure must not be remembered), and the checkpoint's
    identity did not change while it was analysed (an object replaced between the
    listing the key came from and the reader's pinned open: the values are the new
    object's, the key the old one's)."""
    return (record["status"] == "ok" and not record["document"].get("errors")
            and record.get("identity_changed") is not True)


def cache_key(path: str, job: Any) -> str:
    """The cache key of one checkpoint under ``job``: its content and the settings. Needs
    neither torch nor the user's code (``--model`` is a name here, not an import)."""
    return f"{content_hash(path)}-{job.settings_key()}"


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    base = os.environ.get("SPECTRUM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "spectrum")
    return Path(base) / "batch"


def _stderr_warning(message: str) -> None:
    """The default warning sink (the CLI passes its own): stderr, control characters
    shown as ``?``."""
    shown = "".join("?" if ord(c) < 32 or ord(c) == 127 else c for c in message)
    print(f"warning: {shown}", file=sys.stderr, flush=True)


class ResultCache:
    """Per-checkpoint records as ``<key>.json`` files in one folder.

    Never fatal: an entry that cannot be read or is not a record of this format is a
    miss; the first failure to create the folder or write into it is one warning, after
    which the run goes on without writing (reads go on where the folder is readable).
    Entries are written to a temporary file beside them and renamed into place; a failed
    write leaves no temporary file behind.
    """

    def __init__(self, folder: str | os.PathLike[str] | None, warn: Warn | None = None
                 ) -> None:
        self.warn = warn or _stderr_warning
        self.folder = Path(folder) if folder is not None else None
        self.readable = self.writable = self.folder is not None
        self.warnings: list[str] = []
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
                self.readable = self.writable = False
                self._disable(exc)

    @property
    def enabled(self) -> bool:
        return self.readable

    def entry(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record of ``key``, or None (absent, unreadable or not a record).
        An entry that is there but damaged (not JSON, or not fitting the record's
        schema: a field missing, a value of the wrong type) is a miss with one warning;
        the result computed again overwrites it. An entry of another cache format (an
        older spectrum's) is a miss without a warning."""
        if not self.readable:
            return None
        path = self.entry(key)
        try:
            with os.fdopen(_open_regular(path, CACHE_ENTRY_MAX), "rb") as fh:
                record = json.loads(fh.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, UTF-8
            if isinstance(exc, OSError) and path.is_dir():
                return None  # a folder in the way: put() says so
            why = "not JSON" if not isinstance(exc, OSError) else \
                (exc.strerror or str(exc)).lower()
            self._damaged(path, why)
            return None
        if isinstance(record, dict) and isinstance(record.get("cache_format"), int) \
                and record["cache_format"] != CACHE_FORMAT:
            return None
        problem = record_problem(record, key)
        if problem is not None:
            self._damaged(path, problem)
            return None
        return record

    def _damaged(self, path: Path, why: str) -> None:
        self.warn(f"cache entry {path} is damaged ({why}); it is ignored and the "
                  "checkpoint analysed again")

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Store ``record`` under ``key`` atomically (best effort, see the class)."""
        if not self.writable:
            return
        target = self.entry(key)
        text = json.dumps(dict(record, cache_format=CACHE_FORMAT))
        try:
            self._replace(target, text)
        except IsADirectoryError:  # a folder where the entry goes: left alone
            self.warn(f"cache entry {target} is a folder; this result is not cached")
        except OSError as exc:
            self.writable = False
            self._disable(exc)

    def _replace(self, target: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            if target.is_dir() and not target.is_symlink():
                with contextlib.suppress(OSError):
                    target.rmdir()  # an empty folder in the way is removed, no other
                if target.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "a folder", str(target))
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _disable(self, exc: Exception) -> None:
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            why = "not a folder"
        else:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        message = (f"cache folder {self.folder} is not usable ({why}); results are not "
                   "cached in this run")
        self.warnings.append(message)
        self.warn(message)


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def valid_record(record: Any, key: str) -> bool:
    """Whether ``record`` is a complete result of this cache format for ``key``."""
    return record_problem(record, key) is None


#: What a cached record must hold besides its document (which must fit the analysis
#: document's schema, :data:`spectrum_cli.report.document.ANALYSIS_SPEC`).
def _record_spec() -> dict[str, Any]:
    from spectrum_cli.report.document import _metric

    return {"path": str, "status": str, "key": str,
            "violations": [{"condition": str, "tensor": str, "value": _metric,
                            "?metric": str}],
            "warnings": [str], "document": dict}


def record_problem(record: Any, key: str) -> str | None:
    """Why ``record`` is not a complete result of this cache format for ``key`` (the
    first field that is missing or has the wrong type), or None when it is one."""
    from spectrum_cli.report.document import ANALYSIS_SPEC, _mismatch

    if not isinstance(record, dict):
        return "not a record"
    if record.get("cache_format") != CACHE_FORMAT:
        return f"cache format {record.get('cache_format')!r}, not {CACHE_FORMAT}"
    where = _mismatch(record, _record_spec(), "")
    if where is not None:
        return f"{where.lstrip('.') or 'the record'} is missing or has the wrong type"
    if record["status"] != "ok":
        return f"status {record['status']!r}"
    if record["key"] != key:
        return "the key it holds is another checkpoint's"
    if "results" in record:  # one stored tensor's results (pipeline.store_results)
        if not isinstance(record["results"], list):
            return "results is missing or has the wrong type"
        where = _mismatch(record["document"], {"tensors": ANALYSIS_SPEC["tensors"]},
                          "document")
        return None if where is None else f"{where} is missing or has the wrong type"
    where = _mismatch(record["document"], ANALYSIS_SPEC, "document")
    if where is not None:
        return f"{where} is missing or has the wrong type"
    if not (_is_number_or_none(record.get("step")) and _is_number_or_none(record.get("loss"))):
        return "step or loss is not a number"
    for t in record["document"]["tensors"]:
        if t["nonnormal"] is not None and not isinstance(
                t["nonnormal"].get("pseudospectral_radius", []), list):
            return f"the nonnormal entry of tensor {t['name']!r} has the wrong shape"
    try:
        indicators(record["document"])
    except (KeyError, TypeError, AttributeError, ValueError):
        return "its indicators cannot be computed"
    return None


# --------------------------------------------------------------------------- one checkpoint


def compute_record(path: str, job: Any, key: str, run: Any = None) -> dict[str, Any]:
    """Analyse one checkpoint (no cache): its record, ``status`` "ok" or "error".
    ``run`` (:class:`~spectrum_cli.pipeline.RunOptions`): its tensors in parallel."""
    from spectrum_cli.pipeline import analyze_checkpoint
    from spectrum_cli.report.document import json_safe

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


#: Bins of :func:`sv_histogram`: log10 σ from LO to HI in BINS equal bins.
SV_HIST_LO, SV_HIST_HI, SV_HIST_BINS = -8.0, 4.0, 240


def sv_histogram(result: Any) -> dict[str, Any]:
    """The distribution of the singular values computed for a checkpoint (every
    analysed matrix together; all of them with the dense backend, the extremes with an
    iterative one): counts of log10 σ in fixed bins, so that checkpoints compare (for
    TensorBoard's histograms); σ below the range (zeros included) and above it are
    counted in ``below`` and ``above``."""
    import numpy as np

    parts = [np.asarray(t.singular_values.values, dtype=np.float64)
             for t in getattr(result, "tensors", ())
             if getattr(t, "singular_values", None) is not None]
    sv = np.concatenate(parts) if parts else np.zeros(0)
    sv = sv[np.isfinite(sv)]
    with np.errstate(divide="ignore"):
        x = np.log10(np.abs(sv))
    inside = (x >= SV_HIST_LO) & (x <= SV_HIST_HI)
    counts, _ = np.histogram(x[inside], bins=SV_HIST_BINS, range=(SV_HIST_LO, SV_HIST_HI))
    return {"lo": SV_HIST_LO, "hi": SV_HIST_HI, "counts": [int(c) for c in counts],
            "below": int((x < SV_HIST_LO).sum()), "above": int((x > SV_HIST_HI).sum())}


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


def analyze_one(path: str, job: Any, cache_dir: str | None,
                warn: Warn | None = None) -> dict[str, Any]:
    """One checkpoint's record (from the cache when its content and settings match)."""
    key, error = _hashed(path, job)
    if error is not None:
        return error
    assert key is not None
    cache = ResultCache(cache_dir, warn)
    record = _from_cache(cache, path, key)
    if record is None:
        record = compute_record(path, job, key)
        if cacheable(record):
            cache.put(key, record)
    return record


# --------------------------------------------------------------------------- indicators


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def _numel(shape: Any) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        return 0
    return math.prod(shape)


def indicators(doc: dict[str, Any]) -> dict[str, float]:
    """The scalar indicators of one checkpoint's document.

    ``tensors.*``: max κ, max σ_max, min stable rank, mean entropies over the tensors;
    ``<form>.*`` and ``optimizer.*``: the update operators' metrics. A checkpoint with
    neither an optimizer operator nor a loss (weights only) also gets
    ``tensor.kappa[<name>]`` for its :data:`PER_TENSOR_MAX` largest tensors.
    """
    out: dict[str, float] = {}
    ok = [t for t in doc.get("tensors", []) if t["status"] == "ok"]

    def collect(metric: str) -> list[float]:
        vals = [_number(t["metrics"].get(metric)) for t in ok]
        return [v for v in vals if v is not None and not math.isnan(v)]

    for metric, how in (("kappa", max), ("sigma_max", max), ("stable_rank", min),
                        ("spectral_entropy", "mean"), ("spectral_entropy_normalized", "mean"),
                        ("kappa_V", max), ("spectral_radius", max),
                        # WeightWatcher's model-level averages
                        ("alpha", "mean"), ("alpha_weighted", "mean"),
                        ("log_alpha_norm", "mean"), ("rand_distance", "mean")):
        vals = collect(metric)
        if vals:
            name = f"tensors.{'mean' if how == 'mean' else how.__name__}_{metric}"
            out[name] = float(sum(vals) / len(vals)) if how == "mean" else float(how(vals))
    for metric in sorted({k for t in ok for k in t["metrics"]} - set(METRICS)):
        vals = collect(metric)  # a metric plugin's values: their largest over the tensors
        if vals:
            out[f"tensors.max_{indicator_name(metric)}"] = float(max(vals))
    operators = doc.get("operators", [])
    for op in operators:
        for key, value in op["metrics"].items():
            v = _number(value)
            if v is not None:
                # Hessian-level metrics are the same for every operator of a checkpoint.
                prefix = "optimizer" if _shared(key) else op["form"]
                out[f"{prefix}.{key}"] = v
        for p in op.get("details", {}).get("pseudospectral_radius", []):
            v = _number(p["value"])
            if v is not None:
                out[f"{op['form']}.rho_eps[{float(p['eps']):g}]"] = v
    spread = _number(doc.get("optimizer", {}).get("preconditioner_spread"))
    if spread is not None:
        out["optimizer.preconditioner_spread"] = spread
    if not operators and doc.get("checkpoint", {}).get("loss") is None:
        out.update(per_tensor_kappa(ok))
    return out


def per_tensor_kappa(tensors: list[dict[str, Any]]) -> dict[str, float]:
    """``tensor.kappa[<name>]`` of the largest tensors (by element count, then name);
    the name as :func:`indicator_name` writes it."""
    chosen = sorted((t for t in tensors if _number(t["metrics"].get("kappa")) is not None),
                    key=lambda t: (-_numel(t.get("shape")), str(t.get("name"))))
    out: dict[str, float] = {}
    for t in chosen[:PER_TENSOR_MAX]:
        out[f"tensor.kappa[{indicator_name(str(t.get('name')))}]"] = float(
            _number(t["metrics"]["kappa"]))  # type: ignore[arg-type]
    return out


_UNSAFE = frozenset("%/|[]") | {chr(c) for c in (*range(32), 127)}


def indicator_name(name: str) -> str:
    """A tensor name as part of an indicator name: ``%``, ``/``, ``|``, brackets and
    control characters percent-encoded (``a/b`` is ``a%2Fb``), so distinct tensors
    keep distinct names in every form of the trajectory (HDF5 paths included)."""
    return "".join(f"%{ord(c):02X}" if c in _UNSAFE else c for c in name)


# --------------------------------------------------------------------------- the batch


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
              max_memory: int | None = None) -> BatchResult:
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
        from spectrum_cli.pipeline import RunOptions

        chosen = plan(jobs, threads, jobs)
        tensors = RunOptions(jobs=jobs, threads=chosen.threads, max_memory=max_memory,
                             executor=executor)
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

        runner = choose(executor, chosen)
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


def run(candidates: list[Candidate], job: Any, jobs: int = 1, cache_dir: str | None = None,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        threads: int | None = None, on_warning: Warn | None = None) -> list[dict[str, Any]]:
    """Analyse every candidate; records come back ordered by step (see run_batch)."""
    return run_batch(candidates, job, jobs, cache_dir, threads, on_result,
                     on_warning).records
