"""torch.optim.RAdam, rectified or not at the snapshot's step (docs/operators.md §4).

Step t: m' = β1 m + (1-β1) g, ρ_∞ = 2/(1-β2) - 1, ρ_t = ρ_∞ - 2 t β2^t/(1-β2^t). When
ρ_t > 5 the step is rectified and adaptive:
θ' = w θ - (lr r_t/(1-β1^t)) m'/P with P = (sqrt(v) + eps)/sqrt(1-β2^t) and
r_t = sqrt((ρ_t-4)(ρ_t-2)ρ_∞ / ((ρ_∞-4)(ρ_∞-2)ρ_t)); otherwise it is un-preconditioned
momentum θ' = w θ - (lr/(1-β1^t)) m' (P = I). w = 1 - lr·wd under
``decoupled_weight_decay`` (else L2: H -> H + wd I). Either way the form is Adam's
augmented block form with c = lr r_t/(1-β1^t) (r_t = 1 unrectified), in
K = P^-½ H P^-½ (K = H when unrectified); the report says which branch t falls in.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from spectrum_cli.core.update_blocks import BlockForm
from spectrum_cli.optim import preconditioned
from spectrum_cli.optim.base import (
    OperatorContext, OptimizerSnapshot, ParamState, Rule, betas, eos_ratio, per_coordinate,
    step_used, uniform,
)


def rectification(beta2: float, t: int) -> tuple[float, float | None]:
    """(ρ_t, r_t); r_t is None when ρ_t <= 5 (the un-rectified branch)."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    if rho_t <= 5.0:
        return rho_t, None
    return rho_t, math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                            / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


class RAdamRule(Rule):
    name = "radam"
    description = "torch.optim.RAdam (rectified or not at the step; L2 or decoupled decay)"
    moments = ("exp_avg", "exp_avg_sq")
    before_first_step = ("RAdam snapshot saved before its first step has no moments, so "
                         "its operator is undefined")
    group_keys = frozenset({"betas", "eps", "decoupled_weight_decay"})
    absent_keys = frozenset({"amsgrad", "momentum_decay"})
    state_keys = frozenset({"exp_avg", "exp_avg_sq"})
    metrics = {"eos_ratio_preconditioned": "c(1-β1)λ_max(K)/(2(1+β1)), c = lr r_t/(1-β1^t)"}

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out = super().hyper(group)
        b1, b2 = betas(group)
        out.update(beta1=b1, beta2=b2, eps=float(group["eps"]),
                   decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)))
        return out

    def _pc(self, p: ParamState, hyper: dict[str, Any], t: int) -> tuple[np.ndarray, float]:
        _, r = rectification(hyper["beta2"], t)
        c = hyper["lr"] / (1 - hyper["beta1"] ** t)
        if r is None:
            return np.ones(p.moments["exp_avg_sq"].shape), c
        den = (np.sqrt(p.moments["exp_avg_sq"]) + hyper["eps"]) / math.sqrt(
            1 - hyper["beta2"] ** t)
        return den, c * r

    def preconditioner(self, snapshot: OptimizerSnapshot, p: ParamState,
                       t: int) -> tuple[np.ndarray, float]:
        return self._pc(p, self.hyper(snapshot.groups[p.group]), t)

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        decoupled = any(self.hyper(snapshot.groups[p.group])["decoupled_weight_decay"]
                        for p in chosen)
        hyper = uniform(self, snapshot, chosen, ("lr", "beta1", "beta2", "eps",
                                                 "decoupled_weight_decay")
                        + (("weight_decay",) if decoupled else ()))
        t = step_used(chosen, ctx.options, "RAdam")
        rho_t, r = rectification(hyper["beta2"], t)
        parts = [self._pc(p, hyper, t) for p in chosen]
        pvec = np.concatenate([den.ravel() for den, _ in parts])
        c = parts[0][1]
        l2 = None if decoupled else per_coordinate(self, snapshot, chosen, "weight_decay")
        w = 1.0 - hyper["lr"] * hyper["weight_decay"] if decoupled else 1.0
        b1 = hyper["beta1"]
        rectified = r is not None
        form = BlockForm(self.name, "radam" if rectified else "radam-unrectified", w,
                         c * (1 - b1), c * b1, 1 - b1, b1,
                         "P-weighted (P^½θ, P^-½m)" if rectified else "(θ, m)", t,
                         {"lr": hyper["lr"], "beta1": b1, "c": c, "rho_t": rho_t,
                          "rectified": rectified, "r_t": r,
                          "decoupled_weight_decay": decoupled})
        ctx.notes.append(f"RAdam at t = {t}: ρ_t = {rho_t:.6g} "
                         + ("> 5, rectified adaptive step" if rectified else
                            "<= 5, un-rectified momentum step without preconditioner"))
        preconditioned.analyze(ctx, preconditioned.Preconditioned(
            pvec, l2, [form], t,
            lambda kmax: {"eos_ratio_preconditioned": eos_ratio(form, kmax)},
            weighted=rectified))
