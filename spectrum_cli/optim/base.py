"""The optimizer-rule protocol, the parsed snapshot, and what every rule shares.

A rule is one optimizer *family*: it recognises the family's ``state_dict()`` (its
``param_groups`` keys and per-parameter state keys), normalizes its hyper-parameters,
names the per-parameter tensors to read, and turns a parsed snapshot plus a Hessian
source into update-operator entries. Rules are registered in the entry-point group
``spectrum.optimizers`` (:data:`spectrum_cli.plugins.optimizers`), the built-ins exactly
like a third-party rule; the glue (:mod:`spectrum_cli.runs.optimizer`,
:mod:`spectrum_cli.io.optimizer_state`) never branches on the family.

The operator forms and their derivations are in docs/operators.md.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.core.measure import blas_threads_for, matrix_threads, single_threaded
from spectrum_cli.core.update_blocks import analyze_blocks
from spectrum_cli.plugins import get_backend


@dataclass
class ParamState:
    """One parameter's optimizer state: its tensors (float64) and scalars."""

    index: int
    group: int
    name: str
    shape: tuple[int, ...] | None
    moments: dict[str, np.ndarray] = field(default_factory=dict)
    step: int | None = None
    scalars: dict[str, float] = field(default_factory=dict)
    dtype: str | None = None  # the stored tensors' dtype, e.g. "torch.float32"


@dataclass
class OptimizerSnapshot:
    kind: str  # what the report calls the optimizer: "sgd", "adam", "adamw", "rmsprop", ...
    groups: list[dict[str, Any]]
    params: list[ParamState]
    named_by: str  # "param_names", "model", "state_dict order", "index"
    notes: list[str] = field(default_factory=list)
    rule: Any = None  # the OptimizerRule that recognised the state

    @property
    def step(self) -> int | None:
        steps = {p.step for p in self.params if p.step is not None}
        return max(steps) if steps else None


@dataclass
class OperatorContext:
    """What a rule's :meth:`OptimizerRule.operators` gets beside the snapshot: the Hessian
    problem (:class:`spectrum_cli.core.hessian.HessianProblem`), the
    :class:`spectrum_cli.runs.optimizer.OperatorOptions`, the backend lookup, and lists the
    rule appends to (report entries, their arrays, notes)."""

    problem: Any
    options: Any
    backends: Callable[[str], Any] | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    arrays: list[dict[str, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, entry: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        self.entries.append(entry)
        self.arrays.append(arrays or {})


@runtime_checkable
class OptimizerRule(Protocol):
    """One optimizer family. Required by the registry: ``name``, ``description``,
    ``identify`` and ``operators``; :class:`Rule` gives defaults for the rest."""

    name: str
    description: str
    #: Per-parameter state tensors to read (others are ignored).
    moments: tuple[str, ...]
    #: Per-parameter state scalars to read besides ``step`` (NAdam's ``mu_product``).
    scalars: tuple[str, ...]
    #: Why the operator is undefined for a state with no tensors (saved before the first
    #: step); None when the operator needs none (SGD).
    before_first_step: str | None

    def identify(self, groups: Sequence[Mapping], state_keys: frozenset[str]) -> int:
        """0 if the state is not this family's, else a specificity score (the highest
        score among the rules wins; ties between two rules are an input error)."""

    def kind(self, groups: Sequence[Mapping]) -> str:
        """The optimizer's name in the report (``adam`` or ``adamw`` for one rule)."""

    def hyper(self, group: Mapping) -> dict[str, Any]:
        """One group's hyper-parameters, normalized (floats, bools; JSON-ready)."""

    def shape_ok(self, key: str, value: tuple[int, ...], param: tuple[int, ...]) -> bool:
        """Whether state tensor ``key`` of shape ``value`` fits a parameter of ``param``."""

    def infer_shape(self, moments: Mapping[str, np.ndarray]) -> tuple[int, ...] | None:
        """The parameter's shape from its state tensors (no weights to ask)."""

    def optimizer_only(self, snapshot: OptimizerSnapshot) -> dict[str, Any]:
        """What the state alone says (per-tensor rows, spreads)."""

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        """Append the update-operator entries of ``chosen`` to ``ctx``."""


class Rule:
    """Defaults for a rule: identification by required group keys (and optional state
    keys), plain hyper-parameters, moments of the parameter's shape, and optimizer-only
    metrics from :meth:`preconditioner` when the family has one."""

    name = ""
    description = ""
    moments: tuple[str, ...] = ()
    scalars: tuple[str, ...] = ()
    before_first_step: str | None = None
    #: Group keys that must all be present / must all be absent, and state keys whose
    #: presence confirms the family (each adds to the score).
    group_keys: frozenset[str] = frozenset()
    absent_keys: frozenset[str] = frozenset()
    state_keys: frozenset[str] = frozenset()
    #: Operator metrics this rule reports beyond the shared ones (name -> description).
    metrics: dict[str, str] = {}
    #: Why no linearized operator exists for this family (recognised but refused: the
    #: optimizer-only metrics still come; with a Hessian source it is an input error).
    refusal: str | None = None
    #: Said when a state without per-parameter tensors is analysed (before_first_step None).
    without_state = ("the optimizer state holds no per-parameter tensors: the linearized "
                     "operator needs only H, lr and the hyper-parameters, so every "
                     "parameter of the optimizer's groups is analysed")

    def identify(self, groups: Sequence[Mapping], state_keys: frozenset[str]) -> int:
        keys = group_key_set(groups)
        if not self.group_keys or not self.group_keys <= keys or self.absent_keys & keys:
            return 0
        return len(self.group_keys) + 2 * len(self.state_keys & state_keys)

    def kind(self, groups: Sequence[Mapping]) -> str:
        return self.name

    def hyper(self, group: Mapping) -> dict[str, Any]:
        return {"lr": float(group["lr"]), "weight_decay": float(group.get("weight_decay", 0.0)),
                "maximize": bool(group.get("maximize", False))}

    def shape_ok(self, key: str, value: tuple[int, ...], param: tuple[int, ...]) -> bool:
        return tuple(value) == tuple(param)

    def infer_shape(self, moments: Mapping[str, np.ndarray]) -> tuple[int, ...] | None:
        for key in self.moments:
            if key in moments:
                return tuple(moments[key].shape)
        return None

    def preconditioner(self, snapshot: OptimizerSnapshot, p: ParamState,
                       t: int) -> tuple[np.ndarray, float] | None:
        """(P, c): the frozen diagonal preconditioner of parameter ``p`` at step ``t`` and
        the scalar step c on the preconditioned direction (effective step c/P); None for
        a family without one."""
        return None

    def optimizer_only(self, snapshot: OptimizerSnapshot) -> dict[str, Any]:
        return optimizer_only_metrics(self, snapshot)

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        raise NotImplementedError


def completed(rule: Any) -> Any:
    """``rule`` with :class:`Rule`'s defaults for whatever optional part it lacks (a
    third-party rule need only have the four attributes the registry requires)."""
    if isinstance(rule, Rule):
        return rule
    out = type(f"Completed{type(rule).__name__}", (Rule,), {})()
    for attr in dir(rule):
        if not attr.startswith("__"):
            setattr(out, attr, getattr(rule, attr))
    return out


def group_key_set(groups: Sequence[Mapping]) -> set[str]:
    return set().union(*(g.keys() for g in groups)) if groups else set()


def betas(group: Mapping) -> tuple[float, float]:
    b1, b2 = group["betas"]
    return float(b1), float(b2)


# ---------------------------------------------------------------------------------------
# Optimizer-only metrics


def optimizer_only_metrics(rule: Any, snapshot: OptimizerSnapshot) -> dict[str, Any]:
    """Per-tensor moment norms; with a preconditioner, the effective steps c/P and the
    spread sqrt(max P / min P), a bound on κ(V) of the reduced operator (its
    eigenvectors are P^-½Q; docs/operators.md §3)."""
    tensors = []
    pmin, pmax = math.inf, 0.0
    for p in snapshot.params:
        if not p.moments:
            continue
        row: dict[str, Any] = {"name": p.name, "shape": list(p.shape or ()),
                               "group": p.group, "step": p.step}
        for key, value in p.moments.items():
            row[f"{key}_norm"] = float(np.linalg.norm(value))
        pre = rule.preconditioner(snapshot, p, p.step) if p.step else None
        if pre is not None:
            den, c = pre
            eff = c / den
            row.update(effective_step_min=float(eff.min()), effective_step_max=float(eff.max()),
                       effective_step_mean=float(eff.mean()))
            pmin, pmax = min(pmin, float(den.min())), max(pmax, float(den.max()))
        elif rule.before_first_step is None:
            row["effective_step"] = rule.hyper(snapshot.groups[p.group])["lr"]
        tensors.append(row)
    out: dict[str, Any] = {"optimizer": snapshot.kind, "step": snapshot.step, "tensors": tensors,
                           "groups": [rule.hyper(g) for g in snapshot.groups]}
    if pmax > 0:
        out["preconditioner_spread"] = math.sqrt(pmax / pmin)
    return out


# ---------------------------------------------------------------------------------------
# Shared pieces of the operator analysis


def uniform(rule: Any, snapshot: OptimizerSnapshot, params: list[ParamState],
            keys: tuple[str, ...]) -> dict[str, Any]:
    """Hyper-parameters shared by every selected parameter's group (else an error)."""
    hypers = [rule.hyper(snapshot.groups[p.group]) for p in params]
    first = hypers[0]
    for key in keys:
        values = {h[key] for h in hypers}
        if len(values) > 1:
            raise UsageError(f"the selected parameters' groups differ in {key} "
                             f"({sorted(values, key=repr)}): one linear operator needs one "
                             "value; restrict the analysis with --params")
    if any(h.get("maximize") for h in hypers):
        raise UsageError("maximize=True optimizers are not supported")
    return first


def per_coordinate(rule: Any, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                   key: str) -> np.ndarray:
    """Hyper-parameter ``key`` of each selected coordinate (its group's value)."""
    return np.concatenate([np.full(math.prod(p.shape), rule.hyper(
        snapshot.groups[p.group])[key]) for p in chosen])


def step_used(chosen: list[ParamState], options: Any, family: str,
              what: str = "the bias correction") -> int:
    """The one t the operator uses: the snapshot's step, +1 with --step-convention next."""
    steps = {p.step for p in chosen}
    if len(steps) != 1 or None in steps:
        raise InputError(f"the selected parameters have different or missing steps "
                         f"({sorted(s for s in steps if s is not None)}): {what} needs "
                         f"one t ({family})")
    return steps.pop() + (1 if options.step_convention == "next" else 0)


def entry(analysis: Any, extra_metrics: dict[str, Any], accuracy: dict,
          hessian: dict[str, Any]) -> dict[str, Any]:
    """One report entry from a :class:`spectrum_cli.core.update_blocks.OperatorAnalysis`."""
    f = analysis.form
    metrics = dict(analysis.metrics)
    metrics.update(extra_metrics)
    return {"name": f"optimizer:{f.form}", "optimizer": f.optimizer, "form": f.form,
            "coordinates": f.coordinates, "n_params": analysis.n_params, "step": f.step,
            "settings": dict(f.settings), "metrics": metrics, "accuracy": accuracy,
            "unavailable": {}, "hessian": hessian, "details": analysis.details}


def hessian_spectrum(ctx: OperatorContext, shift: np.ndarray | None,
                     weight: np.ndarray | None = None) -> tuple[np.ndarray | None, dict]:
    """Eigenvalues of S = W (H + diag(shift)) W (W = diag(weight), e.g. P^-½): dense when
    n <= dense_max, else the two ends by matrix-free Lanczos (returned as None, with the
    info dict: values and their error bounds)."""
    problem, options = ctx.problem, ctx.options
    n = problem.n
    w = np.ones(n) if weight is None else weight
    s = np.zeros(n) if shift is None else shift
    if n <= options.dense_max:
        h = problem.dense()
        mat = (w[:, None] * (h + np.diag(s))) * w[None, :]
        # BLAS threads only where the size gains from them (core/measure.py's rule for
        # the Gram product; n < 512 gets one): eigvalsh of 385x385 took 9.2 ms with two
        # OpenBLAS threads against 9.4 ms with one, at twice the CPU, and the second
        # thread then spins beside torch: `spectrum batch sample_checkpoints/sgd-momentum
        # --jobs 1` used 43 s of CPU for 25 s wall, 29 s for 22 s on one thread.
        one = blas_threads_for((n, n), matrix_threads()) == 1
        with single_threaded() if one else contextlib.nullcontext():
            lam = np.linalg.eigvalsh((mat + mat.T) / 2)
        return lam, {"method": "dense (double backward, eigh)", "kind": "exact",
                     "n_params": n, "hvps": problem.n_hvp, "dense_H": h}
    import scipy.sparse.linalg as spla

    hop = problem.operator()

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.ravel(x)
        return w * hop.matvec(w * x) + s * w * w * x

    op = spla.LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)
    lanczos = (ctx.backends or _registry)("lanczos")
    top = lanczos.eigenvalues_symmetric(op, k=1, which="largest", tol=1e-8,
                                        seed=options.seed)
    bottom = lanczos.eigenvalues_symmetric(op, k=1, which="smallest", tol=1e-8,
                                           seed=options.seed + 1)
    return None, {"method": "lanczos (matrix-free, both ends)", "kind": "bound",
                  "n_params": n, "hvps": problem.n_hvp,
                  "lambda_max": float(top.values[0]), "lambda_max_bound": float(
                      top.error_bounds[0]), "lambda_min": float(bottom.values[-1]),
                  "lambda_min_bound": float(bottom.error_bounds[-1]),
                  "converged": bool(top.converged and bottom.converged)}


def _registry(name: str) -> Any:
    return get_backend(name)


def ends(lam: np.ndarray | None, info: dict) -> tuple[float, float]:
    """(largest, smallest) eigenvalue: from the dense spectrum or the Lanczos ends."""
    if lam is not None:
        return float(lam[-1]), float(lam[0])
    return info["lambda_max"], info["lambda_min"]


def public(info: dict) -> dict:
    """The Hessian info dict without the dense matrix."""
    return {k: v for k, v in info.items() if k != "dense_H"}


def extremes_entry(form: Any, hmin: float, hmax: float, extra: dict, info: dict,
                   options: Any) -> dict[str, Any]:
    """Matrix-free: only the two ends of H's (or K's) spectrum are known. A block's
    determinant is affine in h, so the complex band's |λ| = sqrt(det) peaks at an end,
    and outside the band ρ(J_i) is monotone in h (docs/operators.md §6): ρ(J) is the
    larger of the two end blocks' (bounded by the Lanczos bounds on the ends). Transient
    growth and ρ_ε of the end blocks are lower bounds; κ(V) needs interior eigenvalues
    near the exceptional points and is unavailable at scale."""
    analysis = analyze_blocks(form, np.array([hmin, hmax]), options.eps, options.power_max)
    metrics = {"spectral_radius": analysis.metrics["spectral_radius"], **extra,
               "max_power_norm": analysis.metrics["max_power_norm"],
               "argmax_power": analysis.metrics["argmax_power"]}
    metrics.setdefault("hessian_lambda_max", hmax)
    metrics.setdefault("hessian_lambda_min", hmin)
    accuracy = {"spectral_radius": {"accuracy": "bound",
                                    "method": "end blocks of the lanczos extremes"},
                "max_power_norm": {"accuracy": "lower_bound",
                                   "method": "the two end blocks only"},
                "argmax_power": {"accuracy": "lower_bound",
                                 "method": "the two end blocks only"},
                "hessian_lambda_max": {"accuracy": "bound",
                                       "error_bar": info["lambda_max_bound"]},
                "hessian_lambda_min": {"accuracy": "bound",
                                       "error_bar": info["lambda_min_bound"]}}
    why = "needs the whole spectrum of H (matrix-free run: only its two ends were computed)"
    return {"name": f"optimizer:{form.form}", "optimizer": form.optimizer, "form": form.form,
            "coordinates": form.coordinates, "n_params": info["n_params"], "step": form.step,
            "settings": dict(form.settings), "metrics": metrics, "accuracy": accuracy,
            "unavailable": {k: why for k in ("kappa_V", "transient_window",
                                             "kreiss_lower_bound", "commutator_norm_relative",
                                             "power_above_one_until")},
            "hessian": info, "details": {"pseudospectral_radius": [
                dict(p, kind="lower_bound") for p in
                analysis.details["pseudospectral_radius"]]}}


def eos_ratio(form: Any, top: float) -> float:
    """The edge-of-stability ratio of a block family at its largest eigenvalue ``top``:
    top / k_edge, where k_edge is the k at which the block [[w - αk, -β], [γk, μ]] gets
    the eigenvalue -1 (1 + tr + det = 0): k_edge = (1 + w)(1 + μ) / (α(1 + μ) - βγ).
    1 is the threshold; inf when no positive curvature can reach it."""
    slope = form.alpha * (1 + form.mu) - form.beta * form.gamma
    if slope <= 0:
        return 0.0 if top <= 0 else math.inf
    return top * slope / ((1 + form.w) * (1 + form.mu))
