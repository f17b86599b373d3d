"""torch.optim.NAdam (docs/operators.md §4).

Step t (ψ = momentum_decay): μ_t = β1 (1 - ½·0.96^(tψ)), Π_t = Π_{t-1} μ_t (the stored
``mu_product``), m' = β1 m + (1-β1) g, P = sqrt(v/(1-β2^t)) + eps and

    θ' = w θ - a g/P - b m'/P,  a = lr (1-μ_t)/(1-Π_t),  b = lr μ_{t+1}/(1-Π_t μ_{t+1}),

with w = 1 - lr·wd under ``decoupled_weight_decay`` (else L2: H -> H + wd I).
Linearized in (θ, m): J = [[w - (a + b(1-β1)) P⁻¹H, -b β1 P⁻¹], [(1-β1) H, β1]], the
block form α = a + b(1-β1), β = b β1, γ = 1-β1, μ = β1 in K = P^-½ H P^-½ after
D = diag(P^½, P^-½). The snapshot convention uses t and the stored Π_t; ``next`` uses
t + 1 and Π_{t+1} = Π_t μ_{t+1}.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.core.update_blocks import BlockForm
from spectrum_cli.optim import preconditioned
from spectrum_cli.optim.base import (
    OperatorContext, OptimizerSnapshot, ParamState, Rule, betas, eos_ratio, per_coordinate,
    step_used, uniform,
)


def mu(beta1: float, psi: float, t: int) -> float:
    """NAdam's momentum schedule μ_t = β1 (1 - ½·0.96^(tψ))."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * psi))


def coefficients(hyper: dict[str, Any], t: int, product: float) -> dict[str, float]:
    """a, b of step t given Π_t (``product``), with μ_t, μ_{t+1} and Π_{t+1}."""
    b1, psi, lr = hyper["beta1"], hyper["momentum_decay"], hyper["lr"]
    mu_t, mu_next = mu(b1, psi, t), mu(b1, psi, t + 1)
    a = lr * (1 - mu_t) / (1 - product)
    b = lr * mu_next / (1 - product * mu_next)
    return {"mu_t": mu_t, "mu_next": mu_next, "mu_product": product,
            "mu_product_next": product * mu_next, "a": a, "b": b}


class NAdamRule(Rule):
    name = "nadam"
    description = "torch.optim.NAdam (momentum_decay schedule; L2 or decoupled weight decay)"
    moments = ("exp_avg", "exp_avg_sq")
    scalars = ("mu_product",)
    before_first_step = ("NAdam snapshot saved before its first step has no second-moment "
                         "estimate, so its preconditioner is undefined")
    group_keys = frozenset({"betas", "eps", "momentum_decay"})
    state_keys = frozenset({"mu_product"})
    metrics = {"eos_ratio_preconditioned": "λ_max(K) over the K at which the top block "
               "reaches eigenvalue -1 (1 = the edge of stability)"}

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out = super().hyper(group)
        b1, b2 = betas(group)
        out.update(beta1=b1, beta2=b2, eps=float(group["eps"]),
                   momentum_decay=float(group["momentum_decay"]),
                   decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)))
        return out

    def _denominator(self, p: ParamState, hyper: dict[str, Any], t: int) -> np.ndarray:
        return np.sqrt(p.moments["exp_avg_sq"] / (1 - hyper["beta2"] ** t)) + hyper["eps"]

    def preconditioner(self, snapshot: OptimizerSnapshot, p: ParamState,
                       t: int) -> tuple[np.ndarray, float]:
        hyper = self.hyper(snapshot.groups[p.group])
        product = p.scalars.get("mu_product")
        if product is None:
            return self._denominator(p, hyper, t), hyper["lr"]
        co = coefficients(hyper, t, product)
        # Steady-gradient gain per unit of (1-β1)-weighted first moment, as Adam's c.
        return self._denominator(p, hyper, t), co["a"] / (1 - hyper["beta1"]) + co["b"]

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        decoupled = any(self.hyper(snapshot.groups[p.group])["decoupled_weight_decay"]
                        for p in chosen)
        hyper = uniform(self, snapshot, chosen, ("lr", "beta1", "beta2", "eps",
                                                 "momentum_decay", "decoupled_weight_decay")
                        + (("weight_decay",) if decoupled else ()))
        t = step_used(chosen, ctx.options, "NAdam")
        products = {p.scalars.get("mu_product") for p in chosen}
        if len(products) != 1 or None in products:
            raise InputError("NAdam: the selected parameters have different or missing "
                             "mu_product: the momentum schedule needs one value")
        product = products.pop()
        if ctx.options.step_convention == "next":  # Π_{t+1} = Π_t μ_{t+1}
            product *= mu(hyper["beta1"], hyper["momentum_decay"], t)
        co = coefficients(hyper, t, product)
        pvec = np.concatenate([self._denominator(p, hyper, t).ravel() for p in chosen])
        l2 = None if decoupled else per_coordinate(self, snapshot, chosen, "weight_decay")
        w = 1.0 - hyper["lr"] * hyper["weight_decay"] if decoupled else 1.0
        b1 = hyper["beta1"]
        alpha = co["a"] + co["b"] * (1 - b1)
        form = BlockForm(self.name, "nadam", w, alpha, co["b"] * b1, 1 - b1, b1,
                         "P-weighted (P^½θ, P^-½m)", t,
                         {"lr": hyper["lr"], "beta1": b1, "momentum_decay":
                          hyper["momentum_decay"], "decoupled_weight_decay": decoupled,
                          "weight_decay": hyper["weight_decay"] if decoupled else 0.0, **co})
        preconditioned.analyze(ctx, preconditioned.Preconditioned(
            pvec, l2, [form], t,
            lambda kmax: {"eos_ratio_preconditioned": eos_ratio(form, kmax)}))
