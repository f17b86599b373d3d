"""The framework-free monitor behind the training-loop callbacks.

:class:`SpectrumMonitor` measures the weights a training loop holds in memory (a
``torch.nn.Module`` or a state dict of tensors or arrays: no checkpoint file) exactly as
``spectrum analyze`` measures a checkpoint (:func:`spectrum_cli.core.analyze.analyze_source`
with the same settings, backends and metric plugins), builds the same document, and
reduces it to the indicators ``spectrum batch`` records per checkpoint
(:func:`spectrum_cli.runs.indicators.indicators`: ``tensors.max_kappa``, ``tensors.min_stable_rank``,
``<form>.spectral_radius``, ``optimizer.eos_ratio_gd``, ...), so a live series and a
batch trajectory of the same run have the same names and values. ``fail_on`` conditions
are the command line's (:mod:`spectrum_cli.core.thresholds`), evaluated on the tensors
and the operator entries as ``spectrum analyze --fail-on`` evaluates them.

Operator indicators (ρ(J), κ(V), edge-of-stability ratios, Hessian extremes) need the
model, the optimizer, a batch and the loss: pass ``loss`` to the monitor and the
optimizer and batch to :meth:`SpectrumMonitor.measure`
(:mod:`spectrum_cli.integrations.operators`).

Cost, paid while training waits: every selected matrix is copied to the CPU in float64,
one at a time, and gets a full SVD (O(m n min(m, n)) flops, Golub & Van Loan, *Matrix
Computations*, 4th ed., §8.6; about 1 s for the 40 matrices of a 22.7M-parameter model
of MiniLM's shape on one core, measured), recurrent weights (``weight_hh*``) also an
eigen-analysis (``square="none"`` skips it, ``square="all"`` extends it to every square
matrix). Restrict the
work with ``include``/``exclude`` globs (``*`` crosses dots, or ``re:REGEX``) and measure
every N steps rather than every step. Operator indicators cost far more (see
:mod:`~spectrum_cli.integrations.operators`). Tied weights (one tensor under two names)
are measured once. A ``DistributedDataParallel`` wrapper is unwrapped (the replica is
measured under the single-process names). :meth:`SpectrumMonitor.measure` is local: it
takes part in no collective and refuses sharded (DTensor) weights; under
``torch.distributed`` the callbacks measure once for the whole group, gathering FSDP2's
shards on every rank and measuring on rank 0 (:mod:`spectrum_cli.integrations.distributed`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from spectrum_cli.core.analyze import plan_source
from spectrum_cli.core.errors import ExitCode, UsageError
from spectrum_cli.core.results import SourceInfo
from spectrum_cli.core.selection import compile_pattern
from spectrum_cli.core.thresholds import parse_conditions
from spectrum_cli.integrations.distributed import described, is_sharded, unwrap
from spectrum_cli.integrations.operators import live_operators, named_state
from spectrum_cli.io.base import MemorySource, TensorInfo
from spectrum_cli.report.document import Checkable, json_safe
from spectrum_cli.runs.document import assemble, measure
from spectrum_cli.runs.indicators import indicators
from spectrum_cli.runs.job import check_settings, metric_names, resolve_job
from spectrum_cli.runs.optimizer import OperatorOptions
from spectrum_cli.runs.threads import default_threads, threads_limited
from spectrum_cli.settings import names

log = logging.getLogger("spectrum_cli.integrations")

#: Settings of the schema that mean something for weights in memory: the analysis
#: settings, BLAS threads, the operator settings other than what names code to import
#: (the loop hands over its model, optimizer and batch; ``loss`` is an argument of its
#: own, a name or a callable) and ``fail_on``.
ALLOWED = (*names("analysis"), "threads",
           *(n for n in names("operator") if n not in ("model", "data", "loss")), "fail_on")


#: The monitor's own indicator: how many selected matrices hold a NaN or Inf entry (their
#: spectra are not computed, so every other ``tensors.*`` indicator is over the finite
#: matrices only). Always reported (0.0 while the weights are finite).
NONFINITE = "tensors.nonfinite_tensors"


class NothingMatchedError(UsageError):
    """``include``/``exclude`` select no matrix of the weights: nothing would ever be
    measured and no ``fail_on`` condition could fire (``spectrum analyze`` exits 5)."""

    exit_code = ExitCode.NOTHING_MATCHED


def nothing_matched(skipped: Sequence[Any], include: Sequence[str] = (),
                    exclude: Sequence[str] = (), limit: int = 12) -> str:
    """The message of :class:`NothingMatchedError`: the selection, and the names that
    exist grouped by why each was not measured."""
    by_reason: dict[str, list[str]] = {}
    for t in skipped:
        reason = t.reason.replace("(--include/--exclude)", "(include/exclude)")
        by_reason.setdefault(reason, []).append(t.name)
    said = []
    for reason, got in by_reason.items():
        shown = ", ".join(got[:limit]) + (f", ... ({len(got) - limit} more)"
                                          if len(got) > limit else "")
        said.append(f"{reason}: {shown}")
    sel = "; ".join(f"{k}={list(v)!r}" for k, v in (("include", include), ("exclude", exclude))
                    if v) or "no include/exclude"
    return (f"spectrum: no matrix to measure ({sel}); of the {len(skipped)} tensor(s) "
            "the model holds: " + ("; ".join(said) if said else "none"))


@dataclass(frozen=True)
class Measurement:
    """One measurement of the weights at ``step``.

    ``indicators``: name -> value, the names of ``spectrum batch``'s trajectory (only
    those the monitor's ``indicators`` patterns select); ``violations``: the ``fail_on``
    violations (:class:`spectrum_cli.core.thresholds.Violation`); ``document``: the
    ``spectrum analyze --json`` document of these weights (JSON-safe);
    ``singular_values``: each analysed matrix's singular values (for histograms);
    ``warnings``: what went wrong without stopping the measurement (matrices holding
    NaN/Inf, a matrix or the operator indicators that could not be computed, a
    ``fail_on`` condition that had nothing to check)."""

    step: int
    indicators: dict[str, float]
    violations: tuple[Any, ...]
    document: dict[str, Any] = field(repr=False)
    singular_values: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    warnings: tuple[str, ...] = ()
    time_s: float = 0.0

    @property
    def failed(self) -> bool:
        """Whether some ``fail_on`` condition is violated."""
        return bool(self.violations)

    def message(self, limit: int = 5) -> str:
        """One line naming the violations (the first ``limit``), for a log."""
        if not self.violations:
            return f"spectrum: step {self.step}: no fail_on condition violated"
        shown = "; ".join(f"{v.tensor}: {v.condition.metric} = {v.value:.6g} violates "
                          f"{v.condition}" for v in self.violations[:limit])
        more = len(self.violations) - limit
        return (f"spectrum: step {self.step}: {len(self.violations)} fail_on violation(s): "
                f"{shown}" + (f" (and {more} more)" if more > 0 else ""))


class LiveTensors(MemorySource):
    """Weights in memory as a tensor source (the reader protocol of
    :mod:`spectrum_cli.io.base`): ``entries()`` from shapes and dtypes without copying,
    ``read(name)`` one float64 CPU copy at a time. A tensor stored under two names (tied
    weights) is listed once, the later names skipped with the reason."""

    format = "live"

    def __init__(self, weights: Mapping[str, Any], path: str = "<live weights>") -> None:
        super().__init__(path)
        self._weights = dict(weights)
        self.size_bytes = 0
        seen: dict[Any, str] = {}
        self._entries = []
        for name, value in self._weights.items():
            shape, dtype, key, nbytes = _describe(value)
            skip = None
            if key is not None and key in seen:
                skip = f"the same tensor as {seen[key]!r} (tied weights)"
            else:
                if key is not None:
                    seen[key] = name
                self.size_bytes += nbytes
            self._entries.append(TensorInfo(str(name), shape, dtype, skip))

    def entries(self) -> list[Any]:
        return list(self._entries)

    def read(self, name: str) -> np.ndarray:
        value = self._weights[name]
        if type(value).__module__.startswith("torch"):
            import torch

            return value.detach().to(device="cpu", dtype=torch.float64, copy=True).numpy()
        return np.array(value, dtype=np.float64, copy=True)



def _describe(value: Any) -> tuple[tuple[int, ...], str, Any, int]:
    """Shape, dtype name, identity of the stored data (None: unknown) and bytes."""
    if type(value).__module__.startswith("torch"):
        dtype = str(value.dtype).removeprefix("torch.")
        key = None
        if value.numel() and value.device.type != "meta":
            key = (str(value.device), value.untyped_storage().data_ptr(),
                   value.storage_offset(), tuple(value.shape), tuple(value.stride()), dtype)
        return tuple(value.shape), dtype, key, value.numel() * value.element_size()
    a = np.asarray(value)
    key = (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str) if a.size \
        else None
    return tuple(a.shape), a.dtype.name, key, a.nbytes


def _weights_of(model_or_state: Any) -> tuple[Mapping[str, Any], Any]:
    """(the state dict, the module or None); a ``DistributedDataParallel`` wrapper is
    unwrapped (its replica, under the single-process names)."""
    model_or_state = unwrap(model_or_state)
    if hasattr(model_or_state, "state_dict") and hasattr(model_or_state, "named_parameters"):
        return model_or_state.state_dict(), model_or_state
    if isinstance(model_or_state, Mapping):
        return model_or_state, None
    raise UsageError("expected a torch.nn.Module or a mapping of names to tensors/arrays, "
                     f"got {type(model_or_state).__name__}")


class SpectrumMonitor:
    """Measure in-memory weights; see the module docstring for what and at what cost.

    ``settings`` are the schema's analysis settings with underscores, as for
    :func:`spectrum_cli.analyze` (``include``, ``exclude``, ``square``, ``backend``,
    ``threads``, ``fail_on``, and for the operators ``params``, ``dense_max``,
    ``coordinates``, ``step_convention``); no configuration file or ``SPECTRUM_*``
    variable is read. ``indicators``: names or patterns (globs, ``re:REGEX``) of the
    indicators to report (None: all). ``loss``: ``"mse"``, ``"cross_entropy"`` or a
    callable ``(outputs, targets) -> scalar``; with it, :meth:`measure` given an
    optimizer and a batch adds the update-operator indicators. ``batch``: a held-out
    ``(inputs, targets)`` used when :meth:`measure` gets none.
    """

    def __init__(self, *, indicators: Sequence[str] | None = None,
                 loss: str | Callable[[Any, Any], Any] | None = None, batch: Any = None,
                 **settings: Any) -> None:
        unknown = sorted(set(settings) - set(ALLOWED))
        if unknown:
            raise UsageError(f"SpectrumMonitor: unknown or file-only setting(s) "
                             f"{', '.join(unknown)}; known: {', '.join(ALLOWED)}")
        if loss is not None and not (callable(loss) or loss in ("mse", "cross_entropy")):
            raise UsageError(f"loss: expected 'mse', 'cross_entropy' or a callable "
                             f"(outputs, targets) -> scalar, got {loss!r}")
        if isinstance(indicators, str):
            indicators = [indicators]
        checked = check_settings(settings, list(ALLOWED))
        self.job, _ = resolve_job("<live>", checked, use_config=False)
        self.conditions = parse_conditions(self.job.fail_on, metric_names())
        self.threads = checked.get("threads")
        self.loss, self.batch = loss, batch
        self.indicator_patterns = tuple(indicators) if indicators is not None else None
        self._match = None if indicators is None else [
            compile_pattern(p, "indicators") for p in indicators]
        self._said: set[str] = set()  # the once-only warnings already given

    @property
    def fail_on(self) -> tuple[str, ...]:
        return tuple(self.job.fail_on)

    def wants(self, name: str) -> bool:
        """Whether the indicator ``name`` is reported."""
        if self._match is None:
            return True
        return name in (self.indicator_patterns or ()) or any(m(name) for m in self._match)

    def check(self, model_or_state: Any) -> list[str]:
        """The names of the matrices :meth:`measure` would measure (no numerics: only the
        selection). None selected is a :class:`NothingMatchedError` naming the tensors
        that exist and why each is left out (the callbacks call this before training)."""
        return [p.name for p in self._planned(_weights_of(model_or_state)[0])]

    def sources(self, weights: Mapping[str, Any]) -> set[str]:
        """The names of the stored tensors :meth:`measure` would read from the state
        dict ``weights`` (decided from names, shapes and dtypes alone: the same on every
        rank of a sharded model)."""
        return {p.source for p in self._planned(weights)}

    def _planned(self, weights: Mapping[str, Any]) -> list[Any]:
        planned, skipped = plan_source(LiveTensors(described(weights)), self.job.options)
        if not planned:
            o = self.job.options
            raise NothingMatchedError(nothing_matched(skipped, o.include, o.exclude))
        return planned

    def measure(self, model_or_state: Any, step: int, *, optimizer: Any = None,
                batch: Any = None, loss_value: float | None = None) -> Measurement:
        """Measure the weights of ``model_or_state`` at training step ``step``.

        ``optimizer`` and ``batch`` (else the monitor's held-out batch) add the operator
        indicators when the monitor has a ``loss``; ``loss_value``, the training loss
        at this step if known, is recorded as the checkpoint's loss (as batch reads it
        from ``trainer_state.json``; without one, batch's indicators include the
        per-tensor κ of the largest tensors, ``tensor.kappa[<name>]``).

        What the caller got wrong raises: the arguments, an optimizer that is not this
        model's, a selection of no matrix (:class:`NothingMatchedError`). The operator
        indicators failing (parameters holding NaN/Inf, a NaN loss, any exception of
        theirs) and a matrix that cannot be analysed are lines of ``warnings``, and the
        rest is still measured; matrices holding NaN/Inf are counted in
        ``tensors.nonfinite_tensors`` and named in ``warnings``. (The callbacks go
        further: nothing raises from a measurement into the training loop.)"""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise UsageError(f"step: expected a non-negative integer, got {step!r}")
        weights, module = _weights_of(model_or_state)
        if is_sharded(weights):
            raise UsageError("the weights hold sharded DTensor parameters (FSDP2's "
                             "fully_shard): measure them through a callback (in a "
                             "hand-written loop spectrum_cli.integrations.loop."
                             "SpectrumCallback), which gathers them on every rank")
        with_operators = self.loss is not None and optimizer is not None
        if with_operators and module is None:
            raise UsageError("operator indicators need the torch.nn.Module, not a state "
                             "dict")
        use_batch = batch if batch is not None else self.batch
        if with_operators and use_batch is None:
            raise UsageError("operator indicators need a batch: pass batch= to the monitor"
                             " (held out) or to measure()")
        t0 = time.perf_counter()
        notes: list[str] = []
        # The BLAS/torch threads of a measurement: the monitor's ``threads``, else what
        # OMP/OPENBLAS/MKL_NUM_THREADS ask for, else every core this process may use.
        with threads_limited(default_threads(self.threads)):
            doc, result, violations = self._document(
                weights, int(step), module if with_operators else None, optimizer,
                use_batch, loss_value, notes)

        doc = json_safe(doc)
        broken = [t for t in result.tensors if t.status == "nonfinite"]
        values = indicators(doc)
        values[NONFINITE] = float(len(broken))
        values = {k: v for k, v in values.items() if self.wants(k)}
        self._unmatched_indicators(values, notes)
        singular = {t.name: np.asarray(t.singular_values.values) for t in result.tensors
                    if t.singular_values is not None}
        warnings = [f"{e.name}: {e.message}" for e in result.errors]
        if broken:
            shown = ", ".join(f"{t.name} ({'; '.join(t.notes) or 'NaN/Inf entries'})"
                              for t in broken[:5])
            warnings.append(f"{len(broken)} matrix(es) hold NaN/Inf entries, their spectra "
                            f"not computed (the tensors.* indicators are over the finite "
                            f"ones only): {shown}" + (" ..." if len(broken) > 5 else ""))
        warnings.extend(notes)
        return Measurement(int(step), values, tuple(violations), doc, singular,
                           tuple(warnings), time.perf_counter() - t0)

    def _once(self, key: str, note: str, notes: list[str]) -> None:
        if key not in self._said:
            self._said.add(key)
            notes.append(note)

    def _unmatched_indicators(self, values: dict[str, float], notes: list[str]) -> None:
        """Say once when ``indicators`` select nothing measured (a typo logs nothing)."""
        if self._match is not None and not values:
            self._once("indicators", f"indicators={list(self.indicator_patterns or ())!r} "
                       "select none of the indicators measured: nothing is reported", notes)

    def _unchecked_conditions(self, entries: Sequence[Any], step: int,
                              notes: list[str]) -> None:
        """Say once for each ``fail_on`` condition that had nothing to check."""
        for cond in self.conditions:
            match = compile_pattern(cond.scope) if cond.scope else None
            if any((match is None or match(e.name)) and e.metrics.get(cond.metric) is not None
                   for e in entries):
                continue
            where = f" in its scope {cond.scope!r}" if cond.scope else ""
            self._once(f"fail_on:{cond}", f"fail_on {str(cond)!r} checked nothing at step "
                       f"{step}: no measured matrix or operator{where} has a value of "
                       f"{cond.metric!r}, so it could not fire (measured: "
                       f"{', '.join(e.name for e in entries[:8]) or 'none'}"
                       f"{', ...' if len(entries) > 8 else ''})", notes)

    def _document(self, weights: Mapping[str, Any], step: int, module: Any, optimizer: Any,
                  batch: Any, loss_value: float | None, notes: list[str]
                  ) -> tuple[dict[str, Any], Any, list[Any]]:
        """The analysis document of the weights (plus the operators), as
        :func:`spectrum_cli.runs.document.analyze_checkpoint` builds it for a file; what could
        not be computed goes to ``notes``."""
        source = LiveTensors(weights, f"<live weights at step {step}>")
        info = SourceInfo(source.path, source.format, (), source.size_bytes, None)
        result = measure(source, info, self.job.options)
        if not result.tensors and not result.errors:
            o = self.job.options
            raise NothingMatchedError(nothing_matched(result.skipped, o.include, o.exclude))
        report = None
        if module is not None:
            report = self._operators(module, optimizer, batch, step, notes)
        operators = report.operators if report is not None else []
        self._unchecked_conditions(list(result.tensors) + [Checkable(o) for o in operators],
                                   step, notes)
        scalars = {"step": step} if loss_value is None else {"step": step,
                                                             "loss": float(loss_value)}
        out = assemble(result, self.conditions, report, scalars)
        return out.doc, result, out.violations

    def _operators(self, module: Any, optimizer: Any, batch: Any, step: int,
                   notes: list[str]) -> Any:
        """The live operator report, or None with a note saying why there is none: the
        parameters hold NaN/Inf (no Hessian to take), or its computation failed."""
        import torch


        named_state(module, optimizer)  # the caller's mistake (not this model's optimizer)
        bad = [n for n, p in module.named_parameters()
               if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all())]
        if bad:
            notes.append(f"operator indicators not computed at step {step}: the parameters "
                         f"hold NaN/Inf ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})")
            return None
        try:
            return live_operators(module, optimizer, batch, self.loss, self._operator_options())
        except Exception as exc:  # never into the training loop: this measurement goes on
            log.debug("spectrum: step %s: operator indicators failed", step, exc_info=True)
            notes.append(f"operator indicators not computed at step {step}: "
                         f"{type(exc).__name__}: {exc}")
            return None

    def _operator_options(self) -> Any:
        o, v = self.job.options, self.job.values
        return OperatorOptions(eps=o.eps, power_max=o.power_max, seed=o.seed,
                               params=tuple(v.get("params", ())),
                               **{k: v[k] for k in ("dense_max", "coordinates",
                                                    "step_convention") if k in v})
