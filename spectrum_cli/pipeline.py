"""One checkpoint, end to end: read, measure every matrix, analyse the optimizer state,
check ``--fail-on``, build the report document. ``spectrum analyze`` runs it once;
``spectrum batch`` runs it per checkpoint, possibly in worker processes (everything here
is picklable and prints nothing)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
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
        parse_conditions(fail_on, _metric_names())
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


def _metric_names() -> list[str]:
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
                       on_progress: Callable[[int, int, str], None] | None = None) -> Outcome:
    """Analyse one checkpoint (file or HF folder) as ``spectrum analyze`` does."""
    from spectrum_cli import plugins
    from spectrum_cli.core.analyze import analyze_source
    from spectrum_cli.core.results import SourceInfo
    from spectrum_cli.core.thresholds import evaluate, parse_conditions
    from spectrum_cli.io import open_source
    from spectrum_cli.io.base import sha256_files, total_size
    from spectrum_cli.report.document import build_document, unchecked

    t0 = time.perf_counter()
    conditions = parse_conditions(job.fail_on, _metric_names())
    warnings: list[str] = []
    source = open_source(str(path), job.policy)
    try:
        info = SourceInfo(str(path), source.format, source.files, total_size(source.files),
                          sha256_files(source.files) if digest else None, tuple(source.notes))
        result = analyze_source(source, info, job.options, plugins.get_backend,
                                on_progress=on_progress, metrics=plugins.metric_plugins())
        optim = optimizer_report(source, job, warnings)
        scalars = checkpoint_scalars(source, warnings)
    finally:
        source.close()
    operators = optim.operators if optim else []
    checked = list(result.tensors) + [Checkable(o) for o in operators]
    violations = evaluate(conditions, checked)
    doc = build_document(result, conditions, violations)
    doc["checkpoint"] = scalars
    if optim is not None:
        doc["optimizer"] = dict(optim.optimizer, notes=optim.notes)
        doc["operators"] = operators
        doc["fail_on"]["unchecked"] += unchecked(conditions, [Checkable(o) for o in operators])
        doc["summary"]["operators"] = len(operators)
    # All the work: reading, measuring, the optimizer state and its operators.
    doc["summary"]["wall_s"] = time.perf_counter() - t0
    return Outcome(doc, result, optim.arrays if optim else [], warnings, violations)


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
    out: dict[str, Any] = {}
    state_file = Path(source.path if Path(source.path).is_dir()
                      else Path(source.path).parent) / "trainer_state.json"
    if state_file.is_file():  # a FIFO or a folder of that name is not read
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


def trainer_state_scalars(path: Path) -> dict[str, Any]:
    """``global_step`` and the last logged ``loss`` at or before it from an HF
    ``trainer_state.json``; ValueError says what is wrong with a damaged one."""
    try:
        with open(path, "rb") as fh:
            blob = fh.read(_MAX_TRAINER_STATE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    if len(blob) > _MAX_TRAINER_STATE:
        raise ValueError(f"larger than {_MAX_TRAINER_STATE >> 20} MiB")
    try:
        state = json.loads(blob)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(state, dict) or not _is_number(state.get("global_step")):
        raise ValueError("no numeric global_step")
    step = int(state["global_step"])
    history = state.get("log_history", [])
    if not isinstance(history, list):
        raise ValueError("log_history is not a list")
    logged = [e for e in history if isinstance(e, dict) and _is_number(e.get("loss"))
              and _is_number(e.get("step", 0)) and int(e.get("step", 0)) <= step]
    out: dict[str, Any] = {"step": step, "from": "trainer_state.json"}
    if logged:
        out["loss"] = float(logged[-1]["loss"])
    return out


def config_values(cli: Mapping[str, Any], near: Path | None) -> tuple[dict[str, Any], Any]:
    """Resolved configuration (CLI > env > file) and the Config object."""
    from spectrum_cli import config

    cfg = config.resolve(cli, near=near)
    return cfg.values, cfg
