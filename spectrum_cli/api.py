"""The public Python API: what the command line does, for notebooks and scripts.

>>> import numpy as np, spectrum_cli
>>> t = spectrum_cli.analyze_matrix(np.diag([4.0, 2.0, 1.0]))
>>> round(t.metrics["kappa"], 12)
4.0

``analyze(path, **settings)`` runs exactly what ``spectrum analyze PATH --json`` runs: the
settings are the schema's (:mod:`spectrum_cli.settings`, the option names with
underscores), resolved like the command line's (given here > ``SPECTRUM_*`` > the nearest
``spectrum.toml`` / ``[tool.spectrum]``, unless ``use_config=False``), and
:attr:`Analysis.document` is the ``--json`` document. ``analyze_arrays`` gives the same
:class:`Analysis` for in-memory arrays, ``trajectory`` and ``watch`` a :class:`Trajectory`
(``spectrum batch`` and ``spectrum watch``). The command line is a thin layer over these
functions. Nothing here prints; errors are
:class:`~spectrum_cli.core.errors.SpectrumError` subclasses (a missing path is a
:class:`~spectrum_cli.core.errors.CheckpointNotFoundError`, which is also a
:class:`FileNotFoundError`). ``to_pandas()`` needs ``pip install 'spectrum-cli[pandas]'``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from spectrum_cli.core.errors import ExitCode, UsageError
from spectrum_cli.core.pseudospectra import pseudospectral_radius as rho_eps
from spectrum_cli.core.results import SourceInfo
from spectrum_cli.core.thresholds import parse_conditions
from spectrum_cli.core.trajectory import SpikeRule
from spectrum_cli.io.base import MemorySource, TensorInfo
from spectrum_cli.io.layout import check_folder, discover
from spectrum_cli.report import trajectory as T
from spectrum_cli.report.document import as_number, dumps
from spectrum_cli.report.hdf5 import write_report
from spectrum_cli.runs import watch as W
from spectrum_cli.runs.batch import run_batch
from spectrum_cli.runs.document import analyze_checkpoint, assemble, measure
from spectrum_cli.runs.job import (
    SAFETY,
    check_settings,
    cluster_of,
    metric_names,
    require_device,
    resolve_job,
    run_options,
    size_or_none,
)
from spectrum_cli.runs.plan import plan
from spectrum_cli.runs.threads import default_threads, threads_limited
from spectrum_cli.settings import BY_NAME, CONFIG_KEYS

__all__ = ["Analysis", "Trajectory", "analyze", "analyze_arrays", "analyze_matrix",
           "candidates", "pseudospectral_radius", "trajectory", "watch"]

PANDAS_HINT = "pip install 'spectrum-cli[pandas]'"


def _pandas() -> Any:
    """pandas, or an ImportError saying how to install it (it is an optional extra)."""
    try:
        import pandas
    except ImportError:
        raise ImportError(f"to_pandas() needs pandas: {PANDAS_HINT}") from None
    return pandas


def _short(x: Any) -> str:
    """A number in a few characters: 3 significant digits, ``3.2e4`` for large ones."""
    text = f"{float(x):.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _short_name(path: str) -> str:
    return os.path.basename(str(path).rstrip("/\\")) or str(path)


@dataclass(frozen=True, repr=False)
class Analysis:
    """One analysed checkpoint (or set of arrays): the ``--json`` document and the typed
    results. Made by :func:`analyze` and :func:`analyze_arrays`.

    Attributes:
        document: the ``spectrum analyze --json`` document (a plain dict).
        result: the typed :class:`~spectrum_cli.core.results.AnalysisResult`
            (``.tensors``, ``.skipped``, ``.errors``, ``.source``).
        violations: the ``fail_on`` conditions violated
            (:class:`~spectrum_cli.core.thresholds.Violation`).
        warnings: what was said about the input (an ignored ``trainer_state.json``, ...).
        config_file: the configuration file the settings came from, or None.

    Example:
        >>> import numpy as np, spectrum_cli
        >>> a = spectrum_cli.analyze_arrays({"w": np.diag([100.0, 10.0, 1.0])},
        ...                                 fail_on=["kappa>50"])
        >>> a
        <Analysis arrays: 1 tensor, 1 violation, kappa max 100>
        >>> a.tensor("w").metrics["kappa"], a.exit_code
        (100.0, 1)
    """

    document: dict[str, Any]
    result: Any  # spectrum_cli.core.results.AnalysisResult
    violations: tuple[Any, ...] = ()
    warnings: tuple[str, ...] = ()
    config_file: str | None = None
    operator_arrays: list[dict[str, Any]] = field(default_factory=list)
    _raw: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        r = self.result
        name = "arrays" if r.source.format == "arrays" else _short_name(r.source.path)
        parts = [_count(len(r.tensors), "tensor"), _count(len(self.violations), "violation")]
        if r.errors:
            parts.append(_count(len(r.errors), "error"))
        kappas = [t.metrics.get("kappa") for t in r.tensors]
        kappas = [float(k) for k in kappas if isinstance(k, (int, float)) and not math.isnan(k)]
        if kappas:
            parts.append(f"kappa max {_short(max(kappas))}")
        return f"<Analysis {name}: {', '.join(parts)}>"

    @property
    def tensors(self) -> tuple[Any, ...]:
        """Per-matrix results (:class:`~spectrum_cli.core.results.TensorResult`)."""
        return tuple(self.result.tensors)

    def tensor(self, name: str) -> Any:
        """The result of the matrix called ``name`` (KeyError if none).

        Example:
            >>> import numpy as np, spectrum_cli
            >>> a = spectrum_cli.analyze_arrays({"w": np.eye(3)})
            >>> a.tensor("w").matrix_shape
            (3, 3)
        """
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

    def to_pandas(self) -> Any:
        """The analysed matrices as a :class:`pandas.DataFrame`: one row per tensor
        (in the document's order), the columns ``name``, ``shape``, ``dtype``, ``kind``,
        ``status`` and then every metric (NaN where a metric is undefined or was not
        computed for that tensor). Skipped tensors and read errors are not rows (see
        :attr:`result` ``.skipped`` and ``.errors``).

        Raises:
            ImportError: pandas is not installed (``pip install 'spectrum-cli[pandas]'``).

        Example:
            >>> import numpy as np, spectrum_cli
            >>> a = spectrum_cli.analyze_arrays({"a": np.diag([2.0, 1.0]),
            ...                                  "b": np.diag([8.0, 1.0, 1.0])})
            >>> df = a.to_pandas()
            >>> df[["name", "shape", "status", "kappa"]]
              name   shape status  kappa
            0    a  (2, 2)     ok    2.0
            1    b  (3, 3)     ok    8.0
        """
        pd = _pandas()
        head = ["name", "shape", "dtype", "kind", "status"]
        metrics = list(dict.fromkeys(k for t in self.result.tensors for k in t.metrics))
        rows = [{"name": t.name, "shape": tuple(t.shape), "dtype": t.dtype, "kind": t.kind,
                 "status": t.status,
                 **{k: (math.nan if v is None else v) for k, v in t.metrics.items()}}
                for t in self.result.tensors]
        return pd.DataFrame(rows, columns=head + [m for m in metrics if m not in head])

    def write_report(self, path: str | os.PathLike, *, force: bool = False) -> None:
        """The HDF5 report ``--report`` writes (atomically; never over an input).

        Args:
            path: where to write it.
            force: replace an existing file that spectrum did not write.
        """
        write_report(str(path), self._raw, self.result, self.operator_arrays, force=force,
                     inputs=list(self.result.source.files))


def analyze(path: str | os.PathLike, *, use_config: bool = True, digest: bool = True,
            on_progress: Any = None, cache_dir: str | os.PathLike | None = None,
            cache_min_bytes: int = 0, on_tick: Any = None, on_note: Any = None,
            **settings: Any) -> Analysis:
    """Analyse one checkpoint as ``spectrum analyze PATH --json`` does.

    Args:
        path: a checkpoint file (torch, safetensors, .npy/.npz, ...), a shards' index, an
            HF model folder, or an fsspec URL.
        use_config: read ``SPECTRUM_*`` and the nearest ``spectrum.toml`` /
            ``[tool.spectrum]`` (the settings given here come first).
        digest: compute the files' SHA-256 (``document["source"]["sha256"]``).
        on_progress: ``on_progress(done, total, name)`` after each tensor.
        cache_dir: cache per-tensor results there (for checkpoints of at least
            ``cache_min_bytes``) so that an interrupted analysis resumes; None: no cache.
        cache_min_bytes: see ``cache_dir``.
        on_tick: ``on_tick(dispatch.Tick)``: the progress in tensors and bytes.
        on_note: ``on_note(text)``: what is said up front (the expected peak memory of
            big inputs) and the cache's warnings.
        **settings: the option names of ``spectrum analyze --help`` with underscores:
            ``fail_on=["kappa>1e4"]``, ``include=["*.weight"]``, ``square="all"``,
            ``threads=2``, ``jobs=4``, ``max_memory="8GiB"``, ``trust_checkpoint=True``.

    Returns:
        An :class:`Analysis` (``.document`` is the ``--json`` document).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist (also a FileNotFoundError).
        UsageError: an unknown setting or a bad value (the message names the known ones).
        InputError: ``path`` is not a checkpoint spectrum can read.

    Example:
        >>> import spectrum_cli
        >>> a = spectrum_cli.analyze("sample_checkpoints/tiny-mlp/checkpoint.pt",
        ...                          use_config=False, include=["*.weight"])
        >>> a
        <Analysis checkpoint.pt: 3 tensors, 0 violations, kappa max 116>
        >>> [t.name for t in a.tensors]
        ['0.weight', '2.weight', '4.weight']
        >>> a.document["checkpoint"]["step"], a.exit_code
        (300, 0)
    """
    s = check_settings(settings, list(CONFIG_KEYS) + list(SAFETY))
    job, cfg = resolve_job(path, s, use_config)
    require_device(cfg.values)
    run = run_options(cfg.values, cache_dir, cache_min_bytes)
    # --threads, else OMP/OPENBLAS/MKL_NUM_THREADS, else every core (never more threads
    # than the environment asks for: two spinning BLAS threads cost 3x on a busy machine)
    with threads_limited(default_threads(cfg.values.get("threads"))):
        out = analyze_checkpoint(str(path), job, digest=digest, on_progress=on_progress,
                                 run=run, on_tick=on_tick, on_note=on_note)
    out.doc["settings"]["config_file"] = cfg.file

    return Analysis(json.loads(dumps(out.doc)), out.result, tuple(out.violations),
                    tuple(out.warnings), cfg.file, out.operator_arrays, out.doc)


def _as_arrays(arrays: Any) -> dict[str, Any]:
    """``arrays`` as a dict of named numeric numpy arrays, integers and booleans as
    float64; UsageError (naming the argument or the entry) for anything else: a list, a
    ragged entry, text."""
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
        if a.dtype.kind in "biu":  # np.arange(9).reshape(3, 3): a matrix, not labels
            a = a.astype(np.float64)
        out[str(k)] = a
    return out


def _arrays_source(arrays: Mapping[str, Any]) -> Any:
    """In-memory matrices as a tensor source (the reader protocol of io/base.py)."""
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


def analyze_arrays(arrays: Mapping[str, Any], **settings: Any) -> Analysis:
    """Analyse named in-memory arrays as :func:`analyze` analyses a checkpoint.

    The document is assembled as the command line's (``--fail-on`` checked the same
    way); there is no file, so ``document["source"]["path"]`` is ``"<arrays>"``. Nothing
    is read from ``SPECTRUM_*`` or a configuration file. The numbers do not depend on the
    threads.

    Args:
        arrays: a mapping of names to numpy arrays (or anything ``numpy.asarray``
            takes); integer and boolean arrays are analysed as float64.
        **settings: the analysis settings of :func:`analyze` (``fail_on``, ``square``,
            ``include``, ``threads``, ...). ``threads``: else the environment's
            (``OMP/OPENBLAS/MKL_NUM_THREADS``), else every core.

    Returns:
        An :class:`Analysis`; ``.result`` is the
        :class:`~spectrum_cli.core.results.AnalysisResult`.

    Raises:
        UsageError: ``arrays`` is not a mapping of numeric arrays, or an unknown setting
            (the message names the known ones).

    Example:
        >>> import numpy as np, spectrum_cli
        >>> a = spectrum_cli.analyze_arrays({"w": np.diag([3.0, 1.0]),
        ...                                  "b": np.ones(4)}, fail_on=["kappa>2"])
        >>> [t.name for t in a.tensors], [s.reason for s in a.result.skipped]
        (['w'], ['1-D'])
        >>> a.document["fail_on"]["violations"][0]["value"]
        3.0
    """
    s = check_settings(settings, list(CONFIG_KEYS))
    source = _arrays_source(arrays)
    job, cfg = resolve_job("<arrays>", s, use_config=False)
    conditions = parse_conditions(job.fail_on, metric_names())
    info = SourceInfo(source.path, source.format, (), 0, None)
    t0 = time.perf_counter()
    with threads_limited(default_threads(cfg.values.get("threads"))):
        result = measure(source, info, job.options)
    out = assemble(result, conditions)
    out.doc["settings"]["config_file"] = None
    out.doc["summary"]["wall_s"] = time.perf_counter() - t0
    return Analysis(json.loads(dumps(out.doc)), out.result, tuple(out.violations),
                    tuple(out.warnings), None, out.operator_arrays, out.doc)


def analyze_matrix(a: Any, name: str = "matrix", **settings: Any) -> Any:
    """Every metric of one matrix.

    Args:
        a: a 2-D array (or anything ``numpy.asarray`` takes; integers become float64).
        name: its name in the result.
        **settings: as :func:`analyze_arrays` (``square="all"`` for the eigen and
            non-normal analysis of a square matrix, ``eps=["0.1"]``, ...).

    Returns:
        A :class:`~spectrum_cli.core.results.TensorResult`: ``.metrics``,
        ``.singular_values``, ``.eigenvalues``/``.nonnormal`` for square matrices under
        ``square``.

    Raises:
        UsageError: ``a`` is not a matrix of numbers, or it could not be analysed.

    Example:
        >>> import numpy as np, spectrum_cli
        >>> t = spectrum_cli.analyze_matrix(np.arange(9).reshape(3, 3))
        >>> t.metrics["numerical_rank"], t.dtype
        (2, 'float64')
    """
    result = analyze_arrays({name: a}, **settings).result
    if result.errors:
        raise UsageError(f"{name}: {result.errors[0].message}")
    if not result.tensors:
        reason = result.skipped[0].reason if result.skipped else "nothing to analyse"
        raise UsageError(f"{name}: not analysed ({reason})")
    return result.tensors[0]


def pseudospectral_radius(a: Any, eps: float) -> Any:
    """ρ_ε(A) = max{|z| : σ_min(zI - A) <= ε} of a square matrix (criss-cross, Mengi &
    Overton 2005).

    Args:
        a: a square matrix.
        eps: ε > 0 (absolute).

    Returns:
        A :class:`~spectrum_cli.core.pseudospectra.PseudospectralRadius` (``.value``).

    Raises:
        UsageError: ``a`` is not square, or ``eps`` is not a positive number.

    Example:
        >>> import numpy as np, spectrum_cli
        >>> r = spectrum_cli.pseudospectral_radius(np.diag([0.5, -0.9]), 1e-3)
        >>> round(r.value, 9)  # a normal matrix: rho + eps
        0.901
    """
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise UsageError(f"expected a square matrix, got shape {a.shape}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise UsageError(f"eps: expected a positive number, got {eps!r}")
    return rho_eps(a, float(eps))


@dataclass(frozen=True, repr=False)
class Trajectory:
    """A run's checkpoints analysed: the ``spectrum batch --json`` document and its
    records. Made by :func:`trajectory` and :func:`watch`.

    Attributes:
        document: the ``spectrum batch --json`` document (``checkpoints``,
            ``indicators``, ``spikes``, ``scorecard``, ``fail_on``, ``summary``).
        records: one dict per checkpoint (``path``, ``step``, ``loss``, ``status``,
            ``indicators``, and its analysis ``document``), in step order.

    Example:
        >>> import spectrum_cli
        >>> run = spectrum_cli.trajectory("sample_checkpoints/sgd-momentum/step-0001?.pt",
        ...                               use_config=False)
        >>> run
        <Trajectory step-0001?.pt: 2 checkpoints, steps 10..15, 0 violations>
    """

    document: dict[str, Any]
    records: list[dict[str, Any]]
    inputs: tuple[str, ...] = ()
    _raw: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        d = self.document
        s = d["summary"]
        parts = [_count(s["checkpoints"], "checkpoint")]
        if s["failed"]:
            parts[0] += f" ({s['failed']} failed)"
        steps = [c["step"] for c in d["checkpoints"] if c.get("step") is not None]
        if steps:
            parts.append(f"steps {min(steps)}..{max(steps)}")
        parts.append(_count(s["violations"], "violation"))
        return f"<Trajectory {_short_name(d['source'])}: {', '.join(parts)}>"

    @property
    def exit_code(self) -> int:
        """What ``spectrum batch`` exits with (without ``--exit-zero``)."""
        s = self.document["summary"]
        if not s["analysed"] or s["failed"]:
            return int(ExitCode.USAGE_OR_INPUT_ERROR)
        return int(ExitCode.THRESHOLD_VIOLATED if self.document["fail_on"]["violations"]
                   else ExitCode.OK)

    def to_pandas(self) -> Any:
        """The trajectory as a :class:`pandas.DataFrame`: one row per checkpoint (in
        step order), the columns ``step``, ``loss``, ``path``, ``status`` and then every
        indicator of ``document["indicators"]`` (NaN where a checkpoint lacks one, or
        could not be read).

        Raises:
            ImportError: pandas is not installed (``pip install 'spectrum-cli[pandas]'``).

        Example:
            >>> import spectrum_cli
            >>> run = spectrum_cli.trajectory(
            ...     "sample_checkpoints/sgd-momentum/step-0001?.pt", use_config=False)
            >>> df = run.to_pandas()
            >>> df["step"].tolist(), "tensors.max_kappa" in df.columns
            ([10, 15], True)
        """
        pd = _pandas()
        head = ["step", "loss", "path", "status"]
        names = [n for n in self.document["indicators"] if n not in head]
        rows = []
        for c in self.document["checkpoints"]:
            indicators = c.get("indicators") or {}
            row = {"step": c.get("step"), "loss": c.get("loss"), "path": c["path"],
                   "status": c["status"]}
            for n in names:
                row[n] = _as_float(indicators.get(n))
            rows.append(row)
        frame = pd.DataFrame(rows, columns=head + names)
        frame["loss"] = [_as_float(x) for x in frame["loss"]]
        return frame

    def write_report(self, path: str | os.PathLike, *, force: bool = False) -> None:
        """The HDF5 trajectory ``--report`` writes (atomically; never over an input).

        Args:
            path: where to write it.
            force: replace an existing file that spectrum did not write.
        """
        T.write(str(path), self._raw, self.records, force=force, inputs=self.inputs)


def _as_float(value: Any) -> float:
    """A document's number as a float (its ``"inf"``/``"nan"`` strings too; NaN for
    None and anything else)."""
    number = as_number(value)
    return math.nan if number is None else number


def _spike_rule(spike_factor: float, spike_window: int) -> SpikeRule:
    try:
        return SpikeRule(spike_factor, spike_window)
    except ValueError as exc:
        raise UsageError(f"spike_{exc}") from None


def trajectory(target: str | os.PathLike, *, jobs: int = 1,
               cache_dir: str | os.PathLike | None = None, spike_factor: float = 2.0,
               spike_window: int = 10, use_config: bool = True, on_result: Any = None,
               on_warning: Any = None, **settings: Any) -> Trajectory:
    """Analyse every checkpoint of a run folder (or glob) as ``spectrum batch --json``
    does.

    Args:
        target: a folder of checkpoints (files, HF ``checkpoint-<step>/`` and DCP
            folders), or a glob.
        jobs: checkpoints analysed in parallel (worker processes).
        cache_dir: cache each checkpoint's record there; None: no cache.
        spike_factor: a loss spike is a loss this many times the running median...
        spike_window: ...of this many earlier checkpoints.
        use_config: read ``SPECTRUM_*`` and the nearest configuration file.
        on_result: ``on_result(record)`` after each checkpoint.
        on_warning: ``on_warning(text)`` for each warning (an unusable cache, say).
        **settings: the settings of :func:`analyze` (``include``, ``fail_on``,
            ``threads``, ``executor``, ...).

    Returns:
        A :class:`Trajectory`.

    Raises:
        CheckpointNotFoundError: ``target`` does not exist (also a FileNotFoundError).
        InputError: no checkpoint there.
        UsageError: an unknown setting or a bad value.

    Example:
        >>> import spectrum_cli
        >>> run = spectrum_cli.trajectory("sample_checkpoints/sgd-momentum/step-0001?.pt",
        ...                               use_config=False, include=["*weight*"])
        >>> [c["step"] for c in run.document["checkpoints"]], run.exit_code
        ([10, 15], 0)
    """
    s = check_settings(settings, list(CONFIG_KEYS) + list(SAFETY))
    job, cfg = resolve_job(str(target), s, use_config)
    require_device(cfg.values)
    rule = _spike_rule(spike_factor, spike_window)
    found = discover(str(target))
    result = run_batch(found, job, jobs, None if cache_dir is None else str(cache_dir),
                       threads=cfg.values.get("threads"), on_result=on_result,
                       on_warning=on_warning, executor=cfg.values.get("executor", "auto"),
                       max_memory=size_or_none(cfg.values.get("max_memory")),
                       cluster=cluster_of(cfg.values))
    doc = T.build(result.records, str(target),
                  {"analysis": job.options.as_dict(), "operator": job.values, "jobs": jobs,
                   "config_file": cfg.file, "executor": cfg.values.get("executor", "auto"),
                   "parallel_over": result.parallel_over,
                   **result.plan.as_settings()}, rule, job.fail_on)
    inputs = (str(target), *(str(c.path) for c in found))
    return Trajectory(json.loads(dumps(doc)), result.records, inputs, doc)


#: What ``watch`` accepts beside its own arguments: the settings of ``spectrum watch``
#: that a configuration may hold (analysis, ``fail_on``, ``poll``, ``settle``,
#: ``idle_timeout``, ``threads``) and the loading safety.
_WATCH_SETTINGS = tuple(k for k in CONFIG_KEYS if "watch" in BY_NAME[k].commands) + SAFETY


class _Enough(Exception):
    """Ends :meth:`Watch.run` from a callback: the count or the time is reached."""


def watch(target: str | os.PathLike, *, count: int | None = None,
          timeout: float | None = None, keep_going: bool = False,
          cache_dir: str | os.PathLike | None = None, spike_factor: float = 2.0,
          spike_window: int = 10, use_config: bool = True,
          on_update: Callable[[Any], None] | None = None,
          on_alert: Callable[[Any], None] | None = None,
          on_warning: Callable[[str], None] | None = None, **settings: Any) -> Trajectory:
    """Follow a run's checkpoint folder while training writes it, as ``spectrum watch``
    does (each checkpoint is read once it is complete and has settled), and return the
    trajectory when ``count`` checkpoints are in, ``timeout`` seconds have passed, no
    new checkpoint came for ``idle_timeout`` seconds, or (unless ``keep_going``) a
    ``fail_on`` condition is violated, whichever comes first.

    Args:
        target: the folder (local or an fsspec URL); a local one may not exist yet.
        count: return once this many checkpoints are in the trajectory.
        timeout: return after this many seconds (checked between polls).
        keep_going: go on at a violation (the alert is in the document) instead of
            returning at the first one.
        cache_dir: cache each checkpoint's record there; None: no cache.
        spike_factor, spike_window: the loss-spike rule, as :func:`trajectory`'s.
        use_config: read ``SPECTRUM_*`` and the nearest configuration file.
        on_update: ``on_update(update)`` after each checkpoint
            (:class:`spectrum_cli.runs.watch.Update`: ``.record``, ``.alerts``).
        on_alert: ``on_alert(alert)`` for each alert
            (:class:`spectrum_cli.runs.alerts.Alert`).
        on_warning: ``on_warning(text)`` for each warning.
        **settings: ``poll`` (seconds between two looks, default 2), ``settle``
            (seconds a checkpoint must stay unchanged, default 2), ``idle_timeout``, and
            the analysis settings of :func:`analyze` (``include``, ``fail_on`` with
            trajectory conditions such as ``"loss>10"`` or ``"spike"``, ``threads``).

    Returns:
        A :class:`Trajectory` (``spectrum batch``'s document; the trajectory alerts are
        listed with the violations). It may hold no checkpoint when none came in time.

    Raises:
        UsageError: none of ``count``, ``timeout``, ``idle_timeout`` is given (it would
            watch forever), or a bad setting.
        InputError: ``target`` is not a folder.

    Example:
        >>> import spectrum_cli
        >>> run = spectrum_cli.watch("sample_checkpoints/sgd-momentum", count=2,
        ...                          use_config=False, poll=0.05, settle=0)
        >>> [c["step"] for c in run.document["checkpoints"]]
        [5, 10]
    """
    if count is not None and not (isinstance(count, int) and count >= 1):
        raise UsageError(f"count: expected a positive integer, got {count!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise UsageError(f"timeout: expected a number >= 0, got {timeout!r}")
    s = check_settings(settings, list(_WATCH_SETTINGS))
    target = str(target)
    job, cfg, conditions = W.resolve(target, s, use_config)  # first: storage options
    require_device(cfg.values)

    def value(name: str) -> Any:
        return cfg.values.get(name, BY_NAME[name].default)

    poll, settle, idle = value("poll"), value("settle"), value("idle_timeout")
    if count is None and timeout is None and idle is None:
        raise UsageError("watch: give count, timeout or idle_timeout (else it would "
                         "watch forever)")
    rule = _spike_rule(spike_factor, spike_window)
    check_folder(target)
    chosen = plan(1, cfg.values.get("threads"), 1)
    doc_settings = {"analysis": job.options.as_dict(), "operator": job.values, "jobs": 1,
                    "config_file": cfg.file, "executor": "serial", **chosen.as_settings(),
                    "watch": {"poll": poll, "settle": settle, "idle_timeout": idle,
                              "trajectory_conditions": [str(c) for c in conditions]}}
    w = W.Watch(target, job, cache_dir=None if cache_dir is None else str(cache_dir),
                rule=rule, conditions=conditions, settle=settle, settings=doc_settings,
                warn=on_warning)
    deadline = None if timeout is None else time.monotonic() + timeout

    def updated(update: Any) -> None:
        if on_update is not None:
            on_update(update)
        for alert in update.alerts:
            if on_alert is not None:
                on_alert(alert)
        if count is not None and len(w.records) >= count:
            raise _Enough

    def sleep(seconds: float) -> None:
        if deadline is None:
            time.sleep(seconds)
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Enough
        time.sleep(min(seconds, left))
        if time.monotonic() >= deadline:
            raise _Enough

    try:
        with threads_limited(chosen.threads):
            w.run(poll=poll, idle_timeout=idle, keep_going=keep_going, on_update=updated,
                  sleep=sleep)
    except _Enough:
        pass
    finally:
        w.close()
    doc = w.document()
    inputs = (target, *(r["path"] for r in w.records))
    return Trajectory(json.loads(dumps(doc)), list(w.records), inputs, doc)


def candidates(target: str | os.PathLike) -> list[Any]:
    """The checkpoints :func:`trajectory` would analyse, in step order (for early
    checks).

    Args:
        target: a folder of checkpoints, or a glob.

    Returns:
        A list of :class:`~spectrum_cli.io.layout.Candidate` (``.path``,
        ``.name_step``, ``.refused``).

    Raises:
        CheckpointNotFoundError: ``target`` does not exist (also a FileNotFoundError).
        InputError: no checkpoint there.

    Example:
        >>> import spectrum_cli
        >>> found = spectrum_cli.candidates("sample_checkpoints/sgd-momentum")
        >>> len(found), [c.name_step for c in found[:3]]
        (120, [5, 10, 15])
    """
    return discover(str(target))
