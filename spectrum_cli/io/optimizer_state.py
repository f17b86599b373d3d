"""Optimizer state from a checkpoint: find it, identify the optimizer, name its entries.

A PyTorch optimizer ``state_dict()`` is ``{"state": {index: {...}}, "param_groups":
[{"params": [index, ...], "lr", ...}]}``; indices run through the groups in order
(docs/operators.md). Names come from ``param_groups[i]["param_names"]`` when the
optimizer was built from ``named_parameters()`` (recent torch), else from the model's
``named_parameters()`` order (needs ``--model``), else stay ``state[i]``. Every moment's
shape is checked against its parameter; a mismatch is an error, never a guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from spectrum_cli.core.errors import InputError, SpectrumError, UnsafeCheckpointError
from spectrum_cli.io import storage
from spectrum_cli.io.base import LoadPolicy, input_errors, open_regular
from spectrum_cli.io.torch_file import load_torch_file
from spectrum_cli.optim.base import OptimizerSnapshot, ParamState  # noqa: F401 (re-exported)
from spectrum_cli.optim.base import completed
from spectrum_cli.plugins import optimizers

#: Keys under which training checkpoints keep the optimizer, in order of preference.
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_state", "optim", "opt")


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
    folder = checkpoint_path if storage.pisdir(checkpoint_path) else storage.pdirname(
        checkpoint_path)
    candidate = storage.pjoin(folder, "optimizer.pt")
    if not storage.plexists(candidate):
        return None
    if storage.is_url(candidate):
        return None if candidate == checkpoint_path else candidate
    if os.path.realpath(candidate) == os.path.realpath(checkpoint_path):
        return None
    return candidate


def load_sibling(path: str) -> Any:
    """Load an ``optimizer.pt`` found beside the weights with the safe default policy.

    ``--trust-checkpoint`` and ``--allow-global`` cover only the file named on the
    command line, so the sibling is always loaded weights-only with no extra globals; a
    refusal is an :class:`InputError` that names it and says how to analyse it."""
    with input_errors(path):
        with open_regular(path) as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
        try:
            return load_torch_file(path, LoadPolicy(), is_zip)
        except UnsafeCheckpointError as exc:
            names = ", ".join(exc.unsafe_globals) or "(unnamed)"
            raise InputError(
                f"{path}: found beside the weights but refused: its pickle needs globals "
                f"outside the weights-only allowlist ({names}); nothing from it was run. "
                "--trust-checkpoint and --allow-global cover only the file named on the "
                "command line: to use this optimizer state, name it "
                f"(spectrum analyze {path} ...), or move it away") from None


#: Group keys that hint at a family no registered rule recognises (for the message).
HINTS = {"rho": "Adadelta", "alpha": "RMSprop", "lr_decay": "Adagrad",
         "momentum_decay": "NAdam", "etas": "Rprop", "lambd": "ASGD"}


def rules() -> dict[str, Any]:
    """Every registered optimizer rule that loads (entry-point group
    ``spectrum.optimizers``; a broken one warns and is left out), with the defaults of
    :class:`spectrum_cli.optim.base.Rule` filled in."""
    return {name: completed(rule) for name, rule in optimizers.loaded().items()}


def identify(groups: list[Mapping], state_keys: frozenset[str] = frozenset()) -> Any:
    """The rule whose family this state is: the highest :meth:`identify` score among the
    registered rules. None matching, or two rules tied, is an :class:`InputError`."""
    keys = set().union(*(g.keys() for g in groups)) if groups else set()
    scored = []
    for rule in rules().values():
        score = rule.identify(groups, frozenset(state_keys))
        if score:
            scored.append((score, rule))
    if scored:
        best = max(s for s, _ in scored)
        top = [r for s, r in scored if s == best]
        if len({r.name for r in top}) > 1:
            raise InputError("ambiguous optimizer state: the rules "
                             f"{', '.join(sorted(r.name for r in top))} all claim it "
                             f"(group keys: {', '.join(sorted(k for k in keys if k != 'params'))})")
        return top[0]
    guess = next((name for key, name in HINTS.items() if key in keys), "an optimizer")
    known = ", ".join(sorted(rules())) or "none"
    raise InputError(f"unsupported optimizer: the state looks like {guess} (group keys: "
                     f"{', '.join(sorted(k for k in keys if k != 'params'))}); no optimizer "
                     f"rule recognises it (rules installed: {known})")


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
    try:
        snapshot = _parse(state, param_shapes, model_order)
        for i in range(len(snapshot.groups)):
            group_hyper(snapshot, i)  # every hyper-parameter is a number, checked now
        return snapshot
    except InputError as exc:
        if type(exc) is InputError and not str(exc).startswith(where):
            raise InputError(f"{where}: {exc}") from None
        raise
    except SpectrumError:
        raise
    except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise InputError(f"{where}: malformed optimizer state ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None


def _parse(state: Mapping, param_shapes: Mapping[str, tuple[int, ...]] | None,
           model_order: list[str] | None) -> OptimizerSnapshot:
    groups = [dict(g) for g in state["param_groups"]]
    raw = state["state"]
    state_keys = frozenset(str(k) for entry in raw.values() if isinstance(entry, Mapping)
                           for k in entry)
    rule = identify(groups, state_keys)
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
    elif param_shapes and _order_matches(param_shapes, raw, indices, rule):
        names = [n for n in param_shapes if not n.endswith(_BUFFER_SUFFIXES)]
        named_by = "state_dict order"
        notes.append("parameter names inferred from the weights' order (every moment's shape "
                     "matches); pass --model or save param_names to be sure")
    else:
        names = [f"state[{i}]" for _, i in indices]
        named_by = "index"
        notes.append("parameters are unnamed (no param_names in the optimizer, no --model)")
    params = [_param_state(rule, raw, gi, idx, name, param_shapes)
              for (gi, idx), name in zip(indices, names)]
    missing = [p.name for p in params if not p.moments]
    if missing:
        notes.append(f"{len(missing)} parameter(s) without optimizer state (never updated,"
                     f" or frozen but passed in): {', '.join(missing[:4])}"
                     + (" …" if len(missing) > 4 else ""))
    return OptimizerSnapshot(rule.kind(groups), groups, params, named_by, notes, rule)


def _param_state(rule: Any, raw: Mapping, gi: int, idx: int, name: str,
                 param_shapes: Mapping[str, tuple[int, ...]] | None) -> ParamState:
    """One parameter's entry: the rule's tensors (shape-checked) and scalars."""
    entry = raw.get(idx, raw.get(str(idx), {}))
    moments = {k: _to_numpy(v) for k, v in entry.items()
               if k in rule.moments and v is not None}
    dtype = next((str(v.dtype) for k, v in entry.items()
                  if k in rule.moments and v is not None and hasattr(v, "dtype")), None)
    scalars = {k: float(_to_numpy(entry[k])) for k in rule.scalars
               if entry.get(k) is not None}
    step = entry.get("step")
    step = int(float(_to_numpy(step))) if step is not None else None
    shape = None
    if param_shapes is not None and name in param_shapes:
        shape = tuple(param_shapes[name])
    for key, value in moments.items():
        if shape is not None and not rule.shape_ok(key, tuple(value.shape), shape):
            raise InputError(
                f"optimizer state {idx} ({name}): {key} has shape {tuple(value.shape)} "
                f"but the parameter has shape {shape}: the state does not belong to "
                "these weights (wrong model, reordered or tied parameters?)")
    shape = shape or (rule.infer_shape(moments) if moments else None)
    return ParamState(idx, gi, name, shape, moments, step, scalars, dtype)


_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _order_matches(param_shapes: Mapping[str, tuple[int, ...]], raw: Mapping,
                   indices: list[tuple[int, int]], rule: Any) -> bool:
    """True when the weights (buffers left out) and the optimizer's entries correspond
    one to one, in order, with every stored moment fitting its parameter's shape."""
    shapes = [s for n, s in param_shapes.items() if not n.endswith(_BUFFER_SUFFIXES)]
    if len(shapes) != len(indices):
        return False
    for shape, (_, idx) in zip(shapes, indices):
        entry = raw.get(idx, raw.get(str(idx), {}))
        for key, value in entry.items():
            if key in rule.moments and hasattr(value, "shape") and not rule.shape_ok(
                    key, tuple(value.shape), tuple(shape)):
                return False
    return True


def group_hyper(snapshot: OptimizerSnapshot, group: int) -> dict[str, Any]:
    """The hyper-parameters of one group, normalized by the snapshot's rule."""
    return snapshot.rule.hyper(snapshot.groups[group])


def optimizer_only_metrics(snapshot: OptimizerSnapshot) -> dict[str, Any]:
    """What the state alone says (the rule's per-tensor rows, preconditioner spread)."""
    return snapshot.rule.optimizer_only(snapshot)


def locate(source: Any, policy: Any) -> tuple[Mapping | None, str, dict[str, Any]]:
    """The optimizer state that goes with ``source`` (inside a training checkpoint, or an
    HF ``optimizer.pt`` beside the weights), where it was found, and the weights.

    ``policy`` (the command line's) applied to ``source`` only: a sibling file is loaded
    with the default, weights-only policy (:func:`load_sibling`)."""
    del policy  # kept in the signature: callers pass it, and must not rely on it here
    raw = source.training_state()
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
