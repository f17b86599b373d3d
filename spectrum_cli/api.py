"""The public Python API: what the command line does, for notebooks and scripts.

>>> import numpy as np, spectrum_cli
>>> t = spectrum_cli.analyze_matrix(np.diag([4.0, 2.0, 1.0]))
>>> round(t.metrics["kappa"], 12)
4.0

``analyze(path, **settings)`` runs exactly what ``spectrum analyze PATH --json`` runs: the
settings are the schema's (:mod:`spectrum_cli.settings`, the option names with
underscores), resolved like the command line's (given here > ``SPECTRUM_*`` > the nearest
``spectrum.toml`` / ``[tool.spectrum]``, unless ``use_config=False``), and
:attr:`Analysis.document` is the ``--json`` document. The command line is a thin layer
over these functions. Nothing here prints; errors are
:class:`~spectrum_cli.core.errors.SpectrumError` subclasses.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from spectrum_cli.core.errors import ExitCode, UsageError
from spectrum_cli.settings import BY_NAME, CONFIG_KEYS

__all__ = ["Analysis", "Trajectory", "analyze", "analyze_arrays", "analyze_matrix",
           "pseudospectral_radius", "trajectory"]

_SAFETY = ("allow_global", "trust_checkpoint", "storage_option")


@dataclass(frozen=True)
class Analysis:
    """One analysed checkpoint: the ``--json`` document and the typed results."""

    document: dict[str, Any]
    result: Any  # spectrum_cli.core.results.AnalysisResult
    violations: tuple[Any, ...] = ()
    warnings: tuple[str, ...] = ()
    config_file: str | None = None
    operator_arrays: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tensors(self) -> tuple[Any, ...]:
        """Per-matrix results (:class:`~spectrum_cli.core.results.TensorResult`)."""
        return tuple(self.result.tensors)

    def tensor(self, name: str) -> Any:
        """The result of the matrix called ``name`` (KeyError if none)."""
        for t in self.result.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def exit_code(self) -> int:
        """What ``spectrum analyze`` exits with (without ``--strict``/``--exit-zero``)."""
        if not self.result.tensors and not self.result.errors:
            return int(ExitCode.NOTHING_MATCHED)
        if self.result.errors:
            return int(ExitCode.USAGE_OR_INPUT_ERROR)
        return int(ExitCode.THRESHOLD_VIOLATED if self.violations else ExitCode.OK)

    def write_report(self, path: str | os.PathLike, *, force: bool = False) -> None:
        """The HDF5 report ``--report`` writes (atomically; never over an input)."""
        from spectrum_cli.report.hdf5 import write_report

        write_report(str(path), self._raw, self.result, self.operator_arrays, force=force,
                     inputs=list(self.result.source.files))


def check_settings(settings: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """Validate setting names (a typo is an error naming the known ones) and normalise
    list-valued settings given as a single string."""
    out = {}
    for key, value in settings.items():
        if key not in allowed:
            raise UsageError(f"unknown setting {key!r}; known: {', '.join(sorted(allowed))}")
        if BY_NAME[key].kind == "list" and isinstance(value, str):
            value = [value]
        elif BY_NAME[key].kind == "list" and value is not None:
            value = [str(v) for v in value]
        out[key] = value
    return out


def resolve_job(path: str | os.PathLike, settings: Mapping[str, Any],
                use_config: bool = True, near: Path | None = None) -> tuple[Any, Any]:
    """The job for ``path`` (settings > ``SPECTRUM_*`` > file) and the configuration it
    came from. Loading safety (``allow_global``, ``trust_checkpoint``) is taken from
    ``settings`` only, for the files named there."""
    from spectrum_cli.pipeline import Job

    cfg = resolve_config(path, settings, use_config, near)
    return Job.from_values(cfg.values, load_policy(settings, cfg.values.get("weights_key"))), cfg


def resolve_config(path: str | os.PathLike, settings: Mapping[str, Any],
                   use_config: bool = True, near: Path | None = None) -> Any:
    """The configuration for ``path``: settings > ``SPECTRUM_*`` > the nearest
    spectrum.toml / [tool.spectrum] (looked for beside a local path only; never in a
    bucket)."""
    from spectrum_cli import config
    from spectrum_cli.io import storage

    given = {k: (v if v is not False else None) for k, v in settings.items()
             if k in CONFIG_KEYS}
    if not use_config:
        return config.Config(values={k: v for k, v in given.items()
                                     if v is not None and v != []})
    p = Path(path)
    if near is None and not storage.is_url(path) and p.exists():
        near = p.resolve() if p.is_dir() else p.resolve().parent
    return config.resolve(given, near=near)


def load_policy(settings: Mapping[str, Any], weights_key: str | None = None) -> Any:
    """How far checkpoints are trusted and how URLs are reached, from the command line's
    settings only (``allow_global``, ``trust_checkpoint``, ``storage_option``); the
    storage options apply to this process from now on (listing, hashing)."""
    from spectrum_cli.io import storage
    from spectrum_cli.io.base import LoadPolicy

    policy = LoadPolicy(tuple(settings.get("allow_global") or ()),
                        bool(settings.get("trust_checkpoint")), weights_key,
                        tuple(settings.get("storage_option") or ()))
    storage.configure(policy.storage_options)
    return policy


def analyze(path: str | os.PathLike, *, use_config: bool = True, digest: bool = True,
            on_progress: Any = None, cache_dir: str | os.PathLike | None = None,
            cache_min_bytes: int = 0, on_tick: Any = None, on_note: Any = None,
            **settings: Any) -> Analysis:
    """Analyse one checkpoint (a file, shards' index, or an HF folder) as
    ``spectrum analyze PATH --json`` does; ``settings`` are the option names of
    ``spectrum analyze --help`` with underscores (``fail_on=["kappa>1e4"]``,
    ``square="all"``, ``threads=2``, ``jobs=4``, ``max_memory="8GiB"``).

    ``cache_dir``: per-tensor results are cached there (for checkpoints of at least
    ``cache_min_bytes``), so that an interrupted analysis resumes (None: no cache).
    ``on_progress(done, total, name)`` and ``on_tick(pipeline.Tick)`` follow the
    progress; ``on_note(text)`` receives what is said up front (the expected peak
    memory of big inputs) and the cache's warnings."""
    from spectrum_cli.executors import default_threads, threads_limited
    from spectrum_cli.pipeline import analyze_checkpoint

    s = check_settings(settings, list(CONFIG_KEYS) + list(_SAFETY))
    job, cfg = resolve_job(path, s, use_config)
    _require_device(cfg.values)
    run = run_options(cfg.values, cache_dir, cache_min_bytes)
    # --threads, else OMP/OPENBLAS/MKL_NUM_THREADS, else every core (never more threads
    # than the environment asks for: two spinning BLAS threads cost 3x on a busy machine)
    with threads_limited(default_threads(cfg.values.get("threads"))), \
            _scheduler(cfg.values):
        out = analyze_checkpoint(str(path), job, digest=digest, on_progress=on_progress,
                                 run=run, on_tick=on_tick, on_note=on_note)
    out.doc["settings"]["config_file"] = cfg.file
    from spectrum_cli.report.document import dumps

    return Analysis(json.loads(dumps(out.doc)), out.result, tuple(out.violations),
                    tuple(out.warnings), cfg.file, out.operator_arrays, out.doc)


@contextlib.contextmanager
def _scheduler(values: Mapping[str, Any]) -> Iterator[None]:
    """``scheduler``/``scheduler_file`` (from any origin) as the variables the Dask
    executor reads, for the duration of a run."""
    from spectrum_cli.executors import environ_set

    wanted = {f"SPECTRUM_{k.upper()}": str(values[k]) for k in ("scheduler", "scheduler_file")
              if values.get(k)}
    with environ_set(wanted):
        yield


def run_options(values: Mapping[str, Any], cache_dir: str | os.PathLike | None = None,
                cache_min_bytes: int = 0) -> Any:
    """How the tensors are measured, from the resolved settings (jobs, threads,
    max_memory, executor) and the cache folder."""
    from spectrum_cli.pipeline import RunOptions

    return RunOptions(jobs=int(values.get("jobs") or 1), threads=values.get("threads"),
                      max_memory=_size_or_none(values.get("max_memory")),
                      executor=values.get("executor") or "auto",
                      cache_dir=None if cache_dir is None else str(cache_dir),
                      cache_min_bytes=cache_min_bytes)


def _require_device(values: Mapping[str, Any]) -> None:
    """``--device cuda`` where this machine computes and has no CUDA device is a usage
    error said once, before anything is read (on a Dask cluster the workers decide)."""
    if values.get("device") != "cuda":
        return
    from spectrum_cli.executors import scheduler_named

    if values.get("executor") == "dask" or values.get("scheduler") or \
            values.get("scheduler_file") or scheduler_named():
        return
    import torch

    if not torch.cuda.is_available():
        built = "built with CUDA " + torch.version.cuda if torch.version.cuda else \
            "a CPU-only build"
        raise UsageError(f"--device cuda: torch sees no CUDA device on this machine "
                         f"(torch {torch.__version__}, {built})")


def _size_or_none(limit: Any) -> int | None:
    from spectrum_cli.executors import parse_size

    return None if limit in (None, "") else parse_size(limit)


def _as_arrays(arrays: Any) -> dict[str, Any]:
    """``arrays`` as a dict of named numeric numpy arrays; UsageError (naming the
    argument or the entry) for anything else: a list, a ragged entry, text."""
    import numpy as np

    if not isinstance(arrays, Mapping):
        hint = " (name them: {'w': a, ...})" if isinstance(arrays, (list, tuple)) else ""
        raise UsageError(f"arrays: expected a mapping of names to arrays{hint}, got "
                         f"{type(arrays).__name__}")
    out = {}
    for k, v in arrays.items():
        try:
            a = np.asarray(v)
        except (ValueError, TypeError) as exc:  # ragged nested lists, say
            raise UsageError(f"arrays[{str(k)!r}]: not an array: {exc}") from None
        if a.dtype.kind not in "biufc":
            raise UsageError(f"arrays[{str(k)!r}]: expected numbers, got dtype {a.dtype}")
        out[str(k)] = a
    return out


def _arrays_source(arrays: Mapping[str, Any]) -> Any:
    """In-memory matrices as a tensor source (the reader protocol of io/base.py)."""
    from spectrum_cli.io.base import MemorySource, TensorInfo

    checked = _as_arrays(arrays)

    class Arrays(MemorySource):
        format = "arrays"

        def __init__(self) -> None:
            super().__init__("<arrays>")
            self._arrays = checked

        def entries(self) -> list[Any]:
            return [TensorInfo(k, tuple(v.shape), v.dtype.name)
                    for k, v in self._arrays.items()]

        def read(self, name: str) -> Any:
            return self._arrays[name]

    return Arrays()


def analyze_arrays(arrays: Mapping[str, Any], **settings: Any) -> Any:
    """Analyse named in-memory arrays (a mapping of names to numpy arrays or anything
    ``numpy.asarray`` takes) with the analysis settings; returns an
    :class:`~spectrum_cli.core.results.AnalysisResult`. UsageError for anything but a
    mapping of numeric arrays. Threads: ``threads``, else the environment's, else every
    core (:func:`spectrum_cli.executors.default_threads`); the numbers do not depend on
    them."""
    from spectrum_cli import plugins
    from spectrum_cli.core.analyze import analyze_source
    from spectrum_cli.core.results import SourceInfo
    from spectrum_cli.executors import default_threads, threads_limited

    s = check_settings(settings, list(CONFIG_KEYS))
    source = _arrays_source(arrays)
    job, cfg = resolve_job("<arrays>", s, use_config=False)
    info = SourceInfo(source.path, source.format, (), 0, None)
    with threads_limited(default_threads(cfg.values.get("threads"))):
        return analyze_source(source, info, job.options, plugins.get_backend,
                              metrics=plugins.metric_plugins())


def analyze_matrix(a: Any, name: str = "matrix", **settings: Any) -> Any:
    """Every metric of one matrix: a :class:`~spectrum_cli.core.results.TensorResult`
    (``.metrics``, ``.singular_values``, ``.eigen``/``.nonnormal`` for square matrices
    under ``square``)."""
    result = analyze_arrays({name: a}, **settings)
    if result.errors:
        raise UsageError(f"{name}: {result.errors[0].message}")
    if not result.tensors:
        reason = result.skipped[0].reason if result.skipped else "nothing to analyse"
        raise UsageError(f"{name}: not analysed ({reason})")
    return result.tensors[0]


def pseudospectral_radius(a: Any, eps: float) -> Any:
    """ρ_ε(A) = max{|z| : σ_min(zI - A) <= ε} of a square matrix (criss-cross, Mengi &
    Overton 2005): a :class:`~spectrum_cli.core.pseudospectra.PseudospectralRadius`."""
    import numpy as np

    from spectrum_cli.core.pseudospectra import pseudospectral_radius as rho_eps

    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise UsageError(f"expected a square matrix, got shape {a.shape}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise UsageError(f"eps: expected a positive number, got {eps!r}")
    return rho_eps(a, float(eps))


@dataclass(frozen=True)
class Trajectory:
    """A run folder analysed: the ``spectrum batch --json`` document and its records."""

    document: dict[str, Any]
    records: list[dict[str, Any]] = field(repr=False)
    inputs: tuple[str, ...] = field(default=(), repr=False)
    _raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def exit_code(self) -> int:
        """What ``spectrum batch`` exits with (without ``--exit-zero``)."""
        s = self.document["summary"]
        if not s["analysed"] or s["failed"]:
            return int(ExitCode.USAGE_OR_INPUT_ERROR)
        return int(ExitCode.THRESHOLD_VIOLATED if self.document["fail_on"]["violations"]
                   else ExitCode.OK)

    def write_report(self, path: str | os.PathLike, *, force: bool = False) -> None:
        """The HDF5 trajectory ``--report`` writes (atomically; never over an input)."""
        from spectrum_cli.report import trajectory as T

        T.write(str(path), self._raw, self.records, force=force, inputs=self.inputs)


def trajectory(target: str | os.PathLike, *, jobs: int = 1,
               cache_dir: str | os.PathLike | None = None, spike_factor: float = 2.0,
               spike_window: int = 10, use_config: bool = True, on_result: Any = None,
               on_warning: Any = None, **settings: Any) -> Trajectory:
    """Analyse every checkpoint of a run folder (or glob) as ``spectrum batch --json``
    does (``cache_dir=None``: no cache); ``on_result(record)`` follows the progress and
    ``on_warning(text)`` receives the warnings (an unusable cache, say)."""
    from spectrum_cli import batch as B
    from spectrum_cli.core.trajectory import SpikeRule
    from spectrum_cli.report import trajectory as T
    from spectrum_cli.report.document import dumps

    s = check_settings(settings, list(CONFIG_KEYS) + list(_SAFETY))
    job, cfg = resolve_job(str(target), s, use_config)
    _require_device(cfg.values)
    try:
        rule = SpikeRule(spike_factor, spike_window)
    except ValueError as exc:
        raise UsageError(f"spike_{exc}") from None
    candidates = B.discover(str(target))
    with _scheduler(cfg.values):
        result = B.run_batch(candidates, job, jobs,
                             None if cache_dir is None else str(cache_dir),
                             threads=cfg.values.get("threads"), on_result=on_result,
                             on_warning=on_warning, executor=cfg.values.get("executor", "auto"),
                             max_memory=_size_or_none(cfg.values.get("max_memory")))
    doc = T.build(result.records, str(target),
                  {"analysis": job.options.as_dict(), "operator": job.values, "jobs": jobs,
                   "config_file": cfg.file, "executor": cfg.values.get("executor", "auto"),
                   "parallel_over": result.parallel_over,
                   **result.plan.as_settings()}, rule, job.fail_on)
    inputs = (str(target), *(str(c.path) for c in candidates))
    return Trajectory(json.loads(dumps(doc)), result.records, inputs, doc)


def candidates(target: str | os.PathLike) -> list[Any]:
    """The checkpoints ``trajectory`` would analyse, in order (for early checks)."""
    from spectrum_cli import batch as B

    return B.discover(str(target))
