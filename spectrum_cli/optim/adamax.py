"""torch.optim.Adamax (docs/operators.md §4).

Step t: m' = β1 m + (1-β1) g, u' = max(β2 u, |g| + eps), θ' = θ - c m'/u' with
c = lr / (1 - β1^t); L2 weight decay enters g (H -> H + wd I).

Quasi-static: P = u frozen as stored (the step that produced the snapshot used it; at a
stationary point β2·u > |g| + eps keeps the max on its smooth side wherever u > eps/β2).
The form is Adam's augmented one with P = u: blocks of K = P^-½ H P^-½ after
D = diag(P^½, P^-½).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from spectrum_cli.core.update_blocks import BlockForm
from spectrum_cli.optim import preconditioned
from spectrum_cli.optim.base import (
    OperatorContext, OptimizerSnapshot, ParamState, Rule, betas, eos_ratio, per_coordinate,
    step_used, uniform,
)


class AdamaxRule(Rule):
    name = "adamax"
    description = "torch.optim.Adamax (infinity-norm second moment; L2 weight decay)"
    moments = ("exp_avg", "exp_inf")
    before_first_step = ("Adamax snapshot saved before its first step has no exp_inf, so "
                         "its preconditioner is undefined")
    group_keys = frozenset({"betas", "eps"})
    absent_keys = frozenset({"amsgrad", "momentum_decay", "decoupled_weight_decay"})
    state_keys = frozenset({"exp_inf"})
    metrics = {"eos_ratio_preconditioned": "c(1-β1)λ_max(K)/(2(1+β1)), c = lr/(1-β1^t)"}

    def identify(self, groups, state_keys) -> int:
        if "exp_inf" in state_keys:  # Adamax's own state: decisive
            return 20
        if "exp_avg_sq" in state_keys or "weight_decay" not in {k for g in groups for k in g}:
            return 0
        return super().identify(groups, state_keys)

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out = super().hyper(group)
        b1, b2 = betas(group)
        out.update(beta1=b1, beta2=b2, eps=float(group["eps"]))
        return out

    def preconditioner(self, snapshot: OptimizerSnapshot, p: ParamState,
                       t: int) -> tuple[np.ndarray, float]:
        hyper = self.hyper(snapshot.groups[p.group])
        return p.moments["exp_inf"], hyper["lr"] / (1 - hyper["beta1"] ** t)

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        hyper = uniform(self, snapshot, chosen, ("lr", "beta1", "beta2", "eps"))
        t = step_used(chosen, ctx.options, "Adamax")
        pvec = np.concatenate([p.moments["exp_inf"].ravel() for p in chosen])
        if np.any(pvec * hyper["beta2"] <= hyper["eps"]):
            ctx.notes.append("Adamax: some exp_inf entries sit at the eps floor, where "
                             "max(β2·u, |g| + eps) is at its kink; P = u is used there")
        if np.any(pvec <= 0):
            raise ValueError("Adamax exp_inf has non-positive entries")
        l2 = per_coordinate(self, snapshot, chosen, "weight_decay")
        lr, b1 = hyper["lr"], hyper["beta1"]
        c = lr / (1 - b1**t)
        form = BlockForm(self.name, "adamax", 1.0, c * (1 - b1), c * b1, 1 - b1, b1,
                         "P-weighted (P^½θ, P^-½m)", t, {"lr": lr, "beta1": b1, "c": c})
        preconditioned.analyze(ctx, preconditioned.Preconditioned(
            pvec, l2, [form], t,
            lambda kmax: {"eos_ratio_preconditioned": eos_ratio(form, kmax)}))
