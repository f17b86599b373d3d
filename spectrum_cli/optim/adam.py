"""torch.optim.Adam and AdamW, quasi-static (docs/operators.md §1-3).

Step t: m' = β1 m + (1-β1) g, θ' = w θ - c m' / P with c = lr / (1 - β1^t),
P = sqrt(v / (1 - β2^t)) + eps (``max_exp_avg_sq`` under amsgrad) frozen, w = 1 - lr·wd
for AdamW's decoupled decay (Adam's L2 decay shifts H instead). Two forms: the
augmented (θ, m) operator and the reduced A = w I - c P⁻¹H (no first moment).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from spectrum_cli.core.update_blocks import adam_form
from spectrum_cli.optim import preconditioned
from spectrum_cli.optim.base import (
    OperatorContext, OptimizerSnapshot, ParamState, Rule, betas, per_coordinate, step_used,
    uniform,
)

BEFORE_FIRST_STEP = ("Adam snapshot saved before its first step has no second-moment "
                     "estimate, so its preconditioner is undefined")


def adam_denominator(p: ParamState, hyper: dict[str, Any], step: int) -> np.ndarray:
    """P = sqrt(v / (1 - β2^t)) + eps (with ``max_exp_avg_sq`` under amsgrad)."""
    key = "max_exp_avg_sq" if hyper["amsgrad"] and "max_exp_avg_sq" in p.moments \
        else "exp_avg_sq"
    v = p.moments[key]
    return np.sqrt(v / (1 - hyper["beta2"] ** step)) + hyper["eps"]


class AdamRule(Rule):
    name = "adam"
    description = "torch.optim.Adam and AdamW (amsgrad; L2 or decoupled weight decay)"
    moments = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    before_first_step = BEFORE_FIRST_STEP
    group_keys = frozenset({"betas", "eps", "amsgrad"})
    state_keys = frozenset({"exp_avg", "exp_avg_sq"})
    metrics = {"eos_ratio_adam": "c(1-β1)λ_max(K)/(2(1+β1)), c = lr/(1-β1^t)",
               "kappa_V_euclidean": "κ(V) of J in the optimizer's own (θ, m) coordinates"}

    def kind(self, groups: Sequence[Mapping]) -> str:
        decoupled = any(bool(g.get("decoupled_weight_decay")) for g in groups)
        return "adamw" if decoupled else "adam"

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out = super().hyper(group)
        b1, b2 = betas(group)
        out.update(beta1=b1, beta2=b2, eps=float(group["eps"]),
                   amsgrad=bool(group.get("amsgrad", False)))
        return out

    def preconditioner(self, snapshot: OptimizerSnapshot, p: ParamState,
                       t: int) -> tuple[np.ndarray, float]:
        hyper = self.hyper(snapshot.groups[p.group])
        return adam_denominator(p, hyper, t), hyper["lr"] / (1 - hyper["beta1"] ** t)

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        decoupled = snapshot.kind == "adamw"
        hyper = uniform(self, snapshot, chosen, ("lr", "beta1", "beta2", "eps", "amsgrad")
                        + (("weight_decay",) if decoupled else ()))
        t = step_used(chosen, ctx.options, "Adam")
        pvec = np.concatenate([adam_denominator(p, hyper, t).ravel() for p in chosen])
        l2 = None if decoupled else per_coordinate(self, snapshot, chosen, "weight_decay")
        wd = hyper["weight_decay"] if decoupled else 0.0
        lr, b1 = hyper["lr"], hyper["beta1"]
        c = lr / (1 - b1**t)
        forms = [adam_form(lr, b1, t, wd, reduced, snapshot.kind) for reduced in (False, True)]
        preconditioned.analyze(ctx, preconditioned.Preconditioned(
            pvec, l2, forms, t,
            lambda kmax: {"eos_ratio_adam": c * (1 - b1) * kmax / (2 * (1 + b1))}))
