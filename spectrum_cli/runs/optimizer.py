"""Optimizer-state analysis: the linearized update operator a saved optimizer implies.

Glue between the checkpoint (weights and optimizer state), the user's Hessian source
(``--model``, ``--data``, ``--loss``) and the optimizer rule that recognised the state
(:mod:`spectrum_cli.optim`, registered in the ``spectrum.optimizers`` entry-point
group): the rule parses its family's state and builds the operator forms, with the exact
block formulas of :mod:`spectrum_cli.core.update_blocks`. Dense float64 Hessians up to
``dense_max`` parameters; beyond, matrix-free Lanczos at both ends of the spectrum
through the backend protocol, with every number labelled exact, bound or estimate. This
module never branches on the optimizer family. Derivations: docs/operators.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.core.hessian import build_problem
from spectrum_cli.core.metrics import OPERATOR_METRICS  # noqa: F401 (re-exported)
from spectrum_cli.core.selection import Selector
from spectrum_cli.io import optimizer_state as opt_io
from spectrum_cli.io.optimizer_state import locate
from spectrum_cli.io.usercode import load_callable, resolve_loss
from spectrum_cli.optim.base import OperatorContext
from spectrum_cli.optim.preconditioned import commutator_estimate  # noqa: F401 (re-exported)
from spectrum_cli.runs.threads import hessian_malloc

DEFAULT_DENSE_MAX = 2000


@dataclass(frozen=True)
class HessianSource:
    model: str
    data: str
    loss: str = "mse"


@dataclass(frozen=True)
class OperatorOptions:
    eps: tuple[float, ...] = ()
    power_max: int = 200
    dense_max: int = DEFAULT_DENSE_MAX
    params: tuple[str, ...] = ()
    coordinates: str = "stored"
    step_convention: str = "snapshot"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.coordinates not in ("stored", "scaled"):
            raise UsageError(f"coordinates: expected 'stored' or 'scaled', got "
                             f"{self.coordinates!r}")
        if self.step_convention not in ("snapshot", "next"):
            raise UsageError(f"step_convention: expected 'snapshot' or 'next', got "
                             f"{self.step_convention!r}")
        if not (isinstance(self.dense_max, int) and self.dense_max >= 1):
            raise UsageError(f"dense_max: expected a positive integer, got {self.dense_max!r}")


@dataclass
class OptimizerReport:
    """What goes into the report: the optimizer-only block and the operator entries."""

    optimizer: dict[str, Any]
    operators: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    arrays: list[dict[str, np.ndarray]] = field(default_factory=list)


def load_model(source: HessianSource, weights: Mapping[str, Any]) -> Any:
    """The user's model with the checkpoint's weights loaded (strict)."""
    import torch


    model = load_callable(source.model, "--model")()
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"--model {source.model}: returned {type(model).__name__}, "
                         "expected a torch.nn.Module")
    state = {k: torch.as_tensor(v) for k, v in weights.items()}
    expected = set(model.state_dict())
    prefixes = {k.split(".", 1)[0] for k in state}
    if not set(state) & expected and len(prefixes) == 1 and all("." in k for k in state):
        # One common prefix the model lacks (Lightning's "model."): strip it.
        state = {k.split(".", 1)[1]: v for k, v in state.items()}
    try:
        result = model.load_state_dict({k: v for k, v in state.items() if k in expected},
                                       strict=False)
    except RuntimeError as exc:  # size mismatches
        detail = " ".join(str(exc).split())[:300]
        raise InputError(f"--model {source.model}: the checkpoint's weights do not fit this "
                         f"model ({detail})") from None
    if result.missing_keys:
        raise InputError(f"--model {source.model}: the checkpoint lacks "
                         f"{', '.join(result.missing_keys[:6])}"
                         + (" …" if len(result.missing_keys) > 6 else "")
                         + " (is this the model the checkpoint was trained with?)")
    return model


def analyze_optimizer(state: Mapping, weights: Mapping[str, Any],
                      source: HessianSource | None, options: OperatorOptions,
                      backends: Callable[[str], Any] | None = None,
                      where: str = "the optimizer state") -> OptimizerReport:
    """Optimizer-only metrics, and with a Hessian source the update operators of the
    rule that recognised the state. ``where`` names the file (and key) the state came
    from, for messages."""
    model = None
    param_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}
    model_order = None
    if source is not None:
        model = load_model(source, weights)
        model_order = [n for n, p in model.named_parameters() if p.requires_grad]
        param_shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    snapshot = opt_io.parse(state, param_shapes, model_order if source else None, where)
    rule = snapshot.rule
    report = OptimizerReport(rule.optimizer_only(snapshot), notes=snapshot.notes)
    report.optimizer["named_by"] = snapshot.named_by
    if rule.refusal:
        if source is not None:
            raise InputError(f"{where}: {rule.refusal}")
        report.notes.append(rule.refusal)
        return report
    before_first = before_first_step(snapshot)
    if before_first and rule.before_first_step:
        report.notes.append(rule.before_first_step)
    if source is None:
        report.notes.append("optimizer-only metrics: a Hessian source (--model, --data, "
                            "--loss) would add ρ(J), κ(V), pseudospectral radii, transient "
                            "growth, the Kreiss bound and edge-of-stability ratios")
        return report
    if before_first and rule.before_first_step:
        raise InputError(f"{where}: {rule.before_first_step}; save the optimizer after at "
                         "least one step(), or analyse the weights without --model/--data")

    hessian_malloc()  # not in the callbacks (the host's process): they call operators_on
    return operators_on(snapshot, report, before_first, options, backends,
                        lambda names: (model, load_callable(source.data, "--data")(),
                                       resolve_loss(source.loss), names), "--params")


def operators_on(snapshot: opt_io.OptimizerSnapshot, report: OptimizerReport,
                 before_first: bool, options: OperatorOptions,
                 backends: Callable[[str], Any] | None,
                 problem_inputs: Callable[[list[str]], tuple[Any, Any, Any, list[str]]],
                 params_flag: str = "--params") -> OptimizerReport:
    """The update operators of ``snapshot``'s rule, added to ``report``: the parameters
    the optimizer tracks (all of them before the first step) that ``options.params``
    selects, the loss Hessian over them (checked once against double backward), the
    rule's operator forms. ``problem_inputs(names)`` gives ``(model, data, loss,
    names)`` for :func:`spectrum_cli.core.hessian.build_problem` (a checkpoint's model
    and the user's data, or a live model's copy and batch)."""
    rule = snapshot.rule
    tracked = [p for p in snapshot.params if p.moments]
    if before_first:  # buffers are state, not structure (SGD)
        tracked = [p for p in snapshot.params if p.shape is not None]
        report.notes.append(rule.without_state)
    selector = Selector(options.params, ())
    chosen = [p for p in tracked if selector(p.name)]
    if not chosen:
        raise UsageError(f"no optimizer-tracked parameter matches {params_flag} "
                         f"{list(options.params)}")
    problem = build_problem(*problem_inputs([p.name for p in chosen]))
    report.notes.extend(problem.notes)
    check = problem.check_against_double_backward(options.seed)
    if not check <= 1e-8:
        raise UsageError(f"Hessian-vector products disagree with double backward (relative "
                         f"{check:.2g}): the loss is not twice differentiable here?")
    report.optimizer["hvp_check_relative_difference"] = check
    ctx = OperatorContext(problem, options, backends)
    rule.operators(snapshot, chosen, ctx)
    report.operators.extend(ctx.entries)
    report.arrays.extend(ctx.arrays)
    report.notes.extend(ctx.notes)
    return report


def before_first_step(snapshot: opt_io.OptimizerSnapshot) -> bool:
    """True when no parameter has optimizer state at all: a snapshot saved before the
    first ``step()`` (or plain SGD without momentum, which never keeps buffers)."""
    return bool(snapshot.params) and not any(p.moments for p in snapshot.params)


def optimizer_report(source: Any, job: Any, warnings: list[str]) -> Any:
    """The optimizer-state analysis, when the checkpoint has an optimizer state."""
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
