"""Optimizer state from a checkpoint: find it, identify the optimizer, name its entries.

A PyTorch optimizer ``state_dict()`` is ``{"state": {index: {...}}, "param_groups":
[{"params": [index, ...], "lr", ...}]}``; indices run through the groups in order
(docs/ecosystem.md). Names come from ``param_groups[i]["param_names"]`` when the
optimizer was built from ``named_parameters()`` (recent torch), else from the model's
``named_parameters()`` order (needs ``--model``), else stay ``state[i]``. Every moment's
shape is checked against its parameter; a mismatch is an error, never a guess.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spectrum_cli.core.errors import InputError

#: Keys under which training checkpoints keep the optimizer, in order of preference.
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_state", "optim", "opt")
MOMENTS = {"sgd": ("momentum_buffer",),
           "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}


@dataclass
class ParamState:
    index: int
    group: int
    name: str
    shape: tuple[int, ...] | None
    moments: dict[str, np.ndarray] = field(default_factory=dict)
    step: int | None = None


@dataclass
class OptimizerSnapshot:
    kind: str  # "sgd", "adam", "adamw"
    groups: list[dict[str, Any]]
    params: list[ParamState]
    named_by: str  # "param_names", "model", "index"
    notes: list[str] = field(default_factory=list)

    @property
    def step(self) -> int | None:
        steps = {p.step for p in self.params if p.step is not None}
        return max(steps) if steps else None


def is_optimizer_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def find_optimizer_state(obj: Any) -> tuple[Mapping | None, str]:
    """The optimizer state_dict inside a loaded checkpoint, and where it was found."""
    if is_optimizer_state(obj):
        return obj, "(top level)"
    if not isinstance(obj, Mapping):
        return None, ""
    for key in OPTIMIZER_KEYS:
        if is_optimizer_state(obj.get(key)):
            return obj[key], key
    states = obj.get("optimizer_states")  # Lightning
    if isinstance(states, (list, tuple)) and states and is_optimizer_state(states[0]):
        note = "optimizer_states[0]" + (f" (of {len(states)})" if len(states) > 1 else "")
        return states[0], note
    for key, value in obj.items():  # any other nesting, first found
        if is_optimizer_state(value):
            return value, str(key)
    return None, ""


def hf_optimizer_file(checkpoint_path: str) -> str | None:
    """``optimizer.pt`` beside HF Trainer weights (``checkpoint-<step>/``), when there is
    an entry by that name (whatever its kind: :func:`load_sibling` refuses non-files)
    that is not the checkpoint itself."""
    folder = checkpoint_path if os.path.isdir(checkpoint_path) else os.path.dirname(
        checkpoint_path)
    candidate = os.path.join(folder, "optimizer.pt")
    if not os.path.lexists(candidate):
        return None
    if os.path.realpath(candidate) == os.path.realpath(checkpoint_path):
        return None
    return candidate


def load_sibling(path: str) -> Any:
    """Load an ``optimizer.pt`` found beside the weights with the safe default policy.

    ``--trust-checkpoint`` and ``--allow-global`` cover only the file named on the
    command line, so the sibling is always loaded weights-only with no extra globals; a
    refusal is an :class:`InputError` that names it and says how to analyse it."""
    from spectrum_cli.core.errors import UnsafeCheckpointError
    from spectrum_cli.io.base import LoadPolicy, input_errors, open_regular
    from spectrum_cli.io.torch_file import _load

    with input_errors(path):
        with open_regular(path) as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
        try:
            return _load(path, LoadPolicy(), is_zip)
        except UnsafeCheckpointError as exc:
            names = ", ".join(exc.unsafe_globals) or "(unnamed)"
            raise InputError(
                f"{path}: found beside the weights but refused: its pickle needs globals "
                f"outside the weights-only allowlist ({names}); nothing from it was run. "
                "--trust-checkpoint and --allow-global cover only the file named on the "
                "command line: to use this optimizer state, name it "
                f"(spectrum analyze {path} ...), or move it away") from None


def identify(groups: list[Mapping]) -> str:
    """'sgd', 'adam' or 'adamw' from the hyper-parameters each optimizer stores."""
    keys = set().union(*(g.keys() for g in groups)) if groups else set()
    if {"momentum", "dampening", "nesterov"} <= keys:
        return "sgd"
    if {"betas", "eps", "amsgrad"} <= keys:
        decoupled = any(bool(g.get("decoupled_weight_decay")) for g in groups)
        return "adamw" if decoupled else "adam"
    hints = {"alpha": "RMSprop", "lr_decay": "Adagrad", "rho": "Adadelta",
             "momentum_decay": "NAdam", "etas": "Rprop", "lambd": "ASGD"}
    guess = next((name for key, name in hints.items() if key in keys), "an optimizer")
    raise InputError(f"unsupported optimizer: the state looks like {guess} (group keys: "
                     f"{', '.join(sorted(k for k in keys if k != 'params'))}); spectrum "
                     "supports torch.optim.SGD, Adam and AdamW")


def _to_numpy(t: Any) -> np.ndarray:
    import torch

    if isinstance(t, torch.Tensor):
        return t.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def parse(state: Mapping, param_shapes: Mapping[str, tuple[int, ...]] | None = None,
          model_order: list[str] | None = None, where: str = "optimizer state"
          ) -> OptimizerSnapshot:
    """Parse and check an optimizer state_dict.

    ``param_shapes``: name -> shape of the model's parameters (from the checkpoint's
    weights); ``model_order``: the model's ``named_parameters()`` names, for optimizers
    saved without ``param_names``. A state of the wrong structure or with non-numeric
    hyper-parameters is an :class:`InputError` naming ``where`` (its file, say)."""
    from spectrum_cli.core.errors import SpectrumError

    try:
        snapshot = _parse(state, param_shapes, model_order)
        for i in range(len(snapshot.groups)):
            group_hyper(snapshot, i)  # every hyper-parameter is a number, checked now
        return snapshot
    except SpectrumError:
        raise
    except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise InputError(f"{where}: malformed optimizer state ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None


def _parse(state: Mapping, param_shapes: Mapping[str, tuple[int, ...]] | None,
           model_order: list[str] | None) -> OptimizerSnapshot:
    groups = [dict(g) for g in state["param_groups"]]
    kind = identify(groups)
    raw = state["state"]
    indices = [(gi, int(i)) for gi, g in enumerate(groups) for i in g["params"]]
    have_names = all("param_names" in g for g in groups)
    notes: list[str] = []
    if have_names:
        names = [n for g in groups for n in g["param_names"]]
        named_by = "param_names"
    elif model_order is not None:
        if len(model_order) != len(indices):
            raise InputError(
                f"the optimizer holds {len(indices)} parameters but the model has "
                f"{len(model_order)} trainable ones: it was not built from this model's "
                "parameters() in order (frozen parameters left out? several optimizers?); "
                "save the optimizer with param_names or pass the matching model")
        names = list(model_order)
        named_by = "model"
        if len(groups) > 1:
            notes.append(f"{len(groups)} parameter groups: names assume the groups list "
                         "the model's parameters in its order")
    elif param_shapes and _order_matches(param_shapes, raw, indices):
        names = [n for n in param_shapes if not n.endswith(_BUFFER_SUFFIXES)]
        named_by = "state_dict order"
        notes.append("parameter names inferred from the weights' order (every moment's shape "
                     "matches); pass --model or save param_names to be sure")
    else:
        names = [f"state[{i}]" for _, i in indices]
        named_by = "index"
        notes.append("parameters are unnamed (no param_names in the optimizer, no --model)")
    params = []
    for (gi, idx), name in zip(indices, names):
        entry = raw.get(idx, raw.get(str(idx), {}))
        moments = {k: _to_numpy(v) for k, v in entry.items()
                   if k in MOMENTS["sgd" if kind == "sgd" else "adam"] and v is not None}
        step = entry.get("step")
        step = int(float(_to_numpy(step))) if step is not None else None
        shape = None
        if param_shapes is not None and name in param_shapes:
            shape = tuple(param_shapes[name])
        for key, value in moments.items():
            if shape is not None and tuple(value.shape) != shape:
                raise InputError(
                    f"optimizer state {idx} ({name}): {key} has shape {tuple(value.shape)} "
                    f"but the parameter has shape {shape}: the state does not belong to "
                    "these weights (wrong model, reordered or tied parameters?)")
            shape = shape or tuple(value.shape)
        params.append(ParamState(idx, gi, name, shape, moments, step))
    missing = [p.name for p in params if not p.moments]
    if missing:
        notes.append(f"{len(missing)} parameter(s) without optimizer state (never updated,"
                     f" or frozen but passed in): {', '.join(missing[:4])}"
                     + (" …" if len(missing) > 4 else ""))
    return OptimizerSnapshot(kind, groups, params, named_by, notes)


_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _order_matches(param_shapes: Mapping[str, tuple[int, ...]], raw: Mapping,
                   indices: list[tuple[int, int]]) -> bool:
    """True when the weights (buffers left out) and the optimizer's entries correspond
    one to one, in order, with equal shapes for every stored moment."""
    shapes = [s for n, s in param_shapes.items() if not n.endswith(_BUFFER_SUFFIXES)]
    if len(shapes) != len(indices):
        return False
    for shape, (_, idx) in zip(shapes, indices):
        entry = raw.get(idx, raw.get(str(idx), {}))
        for key, value in entry.items():
            if key != "step" and hasattr(value, "shape") and tuple(value.shape) != tuple(shape):
                return False
    return True


def group_hyper(snapshot: OptimizerSnapshot, group: int) -> dict[str, Any]:
    """The hyper-parameters of one group, normalized (floats; betas split)."""
    g = snapshot.groups[group]
    out = {"lr": float(g["lr"]), "weight_decay": float(g.get("weight_decay", 0.0)),
           "maximize": bool(g.get("maximize", False))}
    if snapshot.kind == "sgd":
        out.update(momentum=float(g.get("momentum", 0.0)),
                   dampening=float(g.get("dampening", 0.0)),
                   nesterov=bool(g.get("nesterov", False)))
    else:
        b1, b2 = g["betas"]
        out.update(beta1=float(b1), beta2=float(b2), eps=float(g["eps"]),
                   amsgrad=bool(g.get("amsgrad", False)))
    return out


def adam_denominator(p: ParamState, hyper: dict[str, Any], step: int) -> np.ndarray:
    """P = sqrt(v / (1 - β2^t)) + eps (with ``max_exp_avg_sq`` under amsgrad)."""
    key = "max_exp_avg_sq" if hyper["amsgrad"] and "max_exp_avg_sq" in p.moments \
        else "exp_avg_sq"
    v = p.moments[key]
    return np.sqrt(v / (1 - hyper["beta2"] ** step)) + hyper["eps"]


def optimizer_only_metrics(snapshot: OptimizerSnapshot) -> dict[str, Any]:
    """What the state alone says: per-tensor moment norms and Adam's effective steps,
    and the preconditioner spread sqrt(max P / min P), a bound on κ(V) of Adam's
    reduced operator (its eigenvectors are P^{-1/2}Q; operators.md §2)."""
    step = snapshot.step
    tensors = []
    pmin, pmax = math.inf, 0.0
    for p in snapshot.params:
        if not p.moments:
            continue
        hyper = group_hyper(snapshot, p.group)
        row: dict[str, Any] = {"name": p.name, "shape": list(p.shape or ()),
                               "group": p.group, "step": p.step}
        for key, value in p.moments.items():
            row[f"{key}_norm"] = float(np.linalg.norm(value))
        if snapshot.kind != "sgd" and p.step:
            den = adam_denominator(p, hyper, p.step)
            eff = hyper["lr"] / (1 - hyper["beta1"] ** p.step) / den
            row.update(effective_step_min=float(eff.min()), effective_step_max=float(eff.max()),
                       effective_step_mean=float(eff.mean()))
            pmin, pmax = min(pmin, float(den.min())), max(pmax, float(den.max()))
        elif snapshot.kind == "sgd":
            row["effective_step"] = hyper["lr"]
        tensors.append(row)
    out: dict[str, Any] = {"optimizer": snapshot.kind, "step": step, "tensors": tensors,
                           "groups": [group_hyper(snapshot, i)
                                      for i in range(len(snapshot.groups))]}
    if snapshot.kind != "sgd" and pmax > 0:
        out["preconditioner_spread"] = math.sqrt(pmax / pmin)
    return out


def locate(source: Any, policy: Any) -> tuple[Mapping | None, str, dict[str, Any]]:
    """The optimizer state that goes with ``source`` (inside a training checkpoint, or an
    HF ``optimizer.pt`` beside the weights), where it was found, and the weights.

    ``policy`` (the command line's) applied to ``source`` only: a sibling file is loaded
    with the default, weights-only policy (:func:`load_sibling`)."""
    del policy  # kept in the signature: callers pass it, and must not rely on it here
    raw = getattr(source, "raw", None)
    state, where = find_optimizer_state(raw) if raw is not None else (None, "")
    if state is None:
        path = hf_optimizer_file(source.path)
        if path is not None:  # never covered by the command line's --trust-checkpoint
            state, where = find_optimizer_state(load_sibling(path))
            where = f"{path}" + (f" [{where}]" if where and where != "(top level)" else "")
    if state is None:
        return None, "", {}
    return state, where, weights_of(source)


def weights_of(source: Any) -> dict[str, Any]:
    """The checkpoint's weights (name -> tensor or array), for loading into a model."""
    if hasattr(source, "weights"):
        return source.weights()
    return {i.name: source.read(i.name) for i in source.entries() if i.skip is None}
