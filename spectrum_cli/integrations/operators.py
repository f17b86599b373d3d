"""The update operators of a live training step: the model, optimizer and batch in memory.

The same analysis as ``spectrum analyze CKPT --model M --data D --loss L``
(:func:`spectrum_cli.runs.optimizer.analyze_optimizer`), with the objects the training
loop already holds instead of names to import: the optimizer's ``state_dict()`` parsed by
the registered rule that recognises it, the parameters named from the live model (by
object identity, so groups in any order are named right), the loss Hessian of a float64
CPU copy of the model on the given batch (:func:`spectrum_cli.core.hessian.build_problem`,
checked once against double backward), and the rule's operator forms
(docs/operators.md). The training model is never touched: the Hessian is taken on a
``copy.deepcopy`` (``build_problem`` casts its model to float64 and puts it in eval mode).

Cost: one copy of the model in float64 on the CPU, plus, for n selected parameters
(``params`` globs; all the optimizer tracks by default), a dense Hessian (about n
Hessian-vector products and n² float64 numbers) up to ``dense_max`` (2000), else
matrix-free Lanczos at both ends of the spectrum. Pick ``params`` to keep n small.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.io import optimizer_state as opt_io
from spectrum_cli.runs.optimizer import (
    OperatorOptions,
    OptimizerReport,
    before_first_step,
    operators_on,
)

WHERE = "the live optimizer"


def named_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every group's ``param_names`` taken from ``model``
    (matched by identity: the optimizer holds the model's own parameter objects). A
    parameter that is not the model's is a :class:`UsageError`."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    state = optimizer.state_dict()
    groups = []
    for live, saved in zip(optimizer.param_groups, state["param_groups"]):
        unknown = sum(1 for p in live["params"] if id(p) not in names)
        if unknown:
            raise UsageError(f"{WHERE} holds {unknown} parameter(s) that are not the "
                             "model's: pass the optimizer built from this model")
        groups.append(dict(saved, param_names=[names[id(p)] for p in live["params"]]))
    return {"state": state["state"], "param_groups": groups}


def _to_cpu(x: Any) -> Any:
    """Tensors of a batch (nested in tuples, lists, dicts) on the CPU, detached."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu")
    if isinstance(x, (tuple, list)):
        return type(x)(_to_cpu(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    return x


def cpu_copy(model: Any) -> Any:
    """A deep copy of ``model`` whose parameters and buffers are CPU copies (made one
    tensor at a time: no second copy on the accelerator). Tied parameters stay tied.
    A module that cannot be copied is a :class:`UsageError` saying why."""
    import torch

    memo: dict[int, Any] = {}
    for p in model.parameters(recurse=True):
        memo.setdefault(id(p), torch.nn.Parameter(p.detach().to("cpu", copy=True),
                                                  requires_grad=p.requires_grad))
    for b in model.buffers(recurse=True):
        memo.setdefault(id(b), b.detach().to("cpu", copy=True))
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # the user's module holds something that cannot be copied
        raise UsageError(f"operator indicators work on a copy of the model, and "
                         f"copy.deepcopy failed ({type(exc).__name__}: {exc})") from None


def live_operators(model: Any, optimizer: Any, batch: Any,
                   loss: str | Callable[[Any, Any], Any], options: OperatorOptions,
                   backends: Callable[[str], Any] | None = None) -> OptimizerReport:
    """Optimizer-only metrics and the update operators of ``optimizer`` on ``model`` at
    its current weights, with the Hessian of ``loss(model(inputs), targets)`` on
    ``batch``: an ``(inputs, targets)`` pair or a list of such pairs (the loss is their
    mean), as ``--data`` returns. ``loss`` is ``"mse"``, ``"cross_entropy"`` or a
    callable ``(outputs, targets) -> scalar`` (mean reduction)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"operator indicators need the torch.nn.Module, got "
                         f"{type(model).__name__}")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    snapshot = opt_io.parse(named_state(model, optimizer), shapes, None, WHERE)
    rule = snapshot.rule
    report = OptimizerReport(rule.optimizer_only(snapshot), notes=list(snapshot.notes))
    report.optimizer["named_by"] = "model (live)"
    if rule.refusal:
        raise InputError(f"{WHERE}: {rule.refusal}")
    before_first = before_first_step(snapshot)
    if before_first and rule.before_first_step:
        raise InputError(f"{WHERE}: {rule.before_first_step}; measure after at least "
                         "one optimizer step")
    return operators_on(snapshot, report, before_first, options, backends,
                        lambda names: (cpu_copy(model), _to_cpu(batch), loss, names),
                        "params")
