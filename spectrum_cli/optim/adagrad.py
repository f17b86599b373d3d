"""torch.optim.Adagrad with lr_decay (docs/operators.md §4).

Step t: s' = s + g², P = sqrt(s') + eps, θ' = θ - lr_t g / P with the decayed rate
lr_t = lr / (1 + (t - 1)·lr_decay); L2 weight decay enters g (H -> H + wd I).

Quasi-static: P frozen at the stored sum (at a stationary point s' = s + O(g²): the
next step's P is the stored one exactly to first order). The snapshot convention uses
lr_t of the snapshot's step t (the step that produced it), ``next`` that of t + 1. No
momentum: the reduced operator A = I - lr_t P⁻¹H, i.e. 1 - lr_t k per eigenvalue k of
K = P^-½ H P^-½.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from spectrum_cli.core.update_blocks import BlockForm
from spectrum_cli.optim import preconditioned
from spectrum_cli.optim.base import (
    OperatorContext, OptimizerSnapshot, ParamState, Rule, eos_ratio, per_coordinate,
    step_used, uniform,
)


def effective_lr(hyper: dict[str, Any], t: int) -> float:
    """lr / (1 + (t - 1) lr_decay), Adagrad's rate at step t."""
    return hyper["lr"] / (1 + (t - 1) * hyper["lr_decay"])


class AdagradRule(Rule):
    name = "adagrad"
    description = "torch.optim.Adagrad (lr_decay, initial_accumulator_value, L2 weight decay)"
    moments = ("sum",)
    before_first_step = ("Adagrad snapshot has no accumulated squared gradients (sum), so "
                         "its preconditioner is undefined")
    group_keys = frozenset({"lr_decay", "initial_accumulator_value"})
    state_keys = frozenset({"sum"})
    metrics = {"eos_ratio_preconditioned": "lr_t λ_max(K)/2 (1 = the edge of stability)"}

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out = super().hyper(group)
        out.update(lr_decay=float(group["lr_decay"]), eps=float(group["eps"]),
                   initial_accumulator_value=float(group.get("initial_accumulator_value",
                                                             0.0)))
        return out

    def preconditioner(self, snapshot: OptimizerSnapshot, p: ParamState,
                       t: int) -> tuple[np.ndarray, float]:
        hyper = self.hyper(snapshot.groups[p.group])
        return np.sqrt(p.moments["sum"]) + hyper["eps"], effective_lr(hyper, max(t, 1))

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        hyper = uniform(self, snapshot, chosen, ("lr", "lr_decay", "eps"))
        t = step_used(chosen, ctx.options, "Adagrad", "the decayed learning rate")
        if t < 1:  # saved before the first step (torch creates the state at construction)
            ctx.notes.append("Adagrad state saved before its first step: the operator is "
                             "that of step 1 (lr_t = lr), with P from "
                             "initial_accumulator_value")
            t = 1
        pvec = np.concatenate([(np.sqrt(p.moments["sum"]) + hyper["eps"]).ravel()
                               for p in chosen])
        l2 = per_coordinate(self, snapshot, chosen, "weight_decay")
        clr = effective_lr(hyper, t)
        form = BlockForm(self.name, "adagrad", 1.0, clr, 0.0, 0.0, 0.0, "P-weighted (P^½θ)",
                         t, {"lr": hyper["lr"], "lr_decay": hyper["lr_decay"], "lr_t": clr})
        preconditioned.analyze(ctx, preconditioned.Preconditioned(
            pvec, l2, [form], t,
            lambda kmax: {"eos_ratio_preconditioned": eos_ratio(form, kmax)},
            own="θ", euclidean_reduced=True))
