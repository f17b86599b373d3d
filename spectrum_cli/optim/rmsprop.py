"""torch.optim.RMSprop: plain, with momentum, centered (docs/operators.md §4).

Step: v' = α v + (1-α) g², (centered: ḡ' = α ḡ + (1-α) g, P = sqrt(v' - ḡ'²) + eps,
else P = sqrt(v') + eps); without momentum θ' = θ - lr g / P; with momentum μ
buf' = μ buf + g / P, θ' = θ - lr buf'. L2 weight decay enters g, so H -> H + wd I.

Quasi-static: P frozen as the snapshot's statistics give it (the step that produced the
snapshot used exactly these v, ḡ). RMSprop has no bias correction, so the step
convention changes nothing. Without momentum the operator is the reduced
A = I - lr P⁻¹H; with momentum, in (θ, buf), D = diag(P^½, P^½) makes it the heavy-ball
blocks of K = P^-½ H P^-½ (buf accumulates preconditioned gradients). The centered
average ḡ feeds the denominator only at second order at a stationary point, so it is
frozen too (its own dynamics ḡ' = αḡ + (1-α)Hθ do not feed back into (θ, buf)).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.core.update_blocks import BlockForm, sgd_form
from spectrum_cli.optim import preconditioned
from spectrum_cli.optim.base import (
    OperatorContext, OptimizerSnapshot, ParamState, Rule, eos_ratio, per_coordinate,
    uniform,
)


class RMSpropRule(Rule):
    name = "rmsprop"
    description = "torch.optim.RMSprop (plain, momentum, centered; L2 weight decay)"
    moments = ("square_avg", "grad_avg", "momentum_buffer")
    before_first_step = ("RMSprop snapshot saved before its first step has no square_avg, "
                         "so its preconditioner is undefined")
    group_keys = frozenset({"alpha", "centered", "momentum", "eps"})
    absent_keys = frozenset({"lambd"})
    state_keys = frozenset({"square_avg"})
    metrics = {"eos_ratio_preconditioned": "λ_max(K) over the K at which the top block "
               "reaches eigenvalue -1 (1 = the edge of stability)"}

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out = super().hyper(group)
        out.update(alpha=float(group["alpha"]), eps=float(group["eps"]),
                   momentum=float(group.get("momentum", 0.0)),
                   centered=bool(group.get("centered", False)))
        return out

    def denominator(self, p: ParamState, hyper: dict[str, Any]) -> np.ndarray:
        """P = sqrt(v - ḡ²) + eps (centered) or sqrt(v) + eps."""
        v = p.moments["square_avg"]
        if hyper["centered"]:
            if "grad_avg" not in p.moments:
                raise InputError(f"{p.name}: centered RMSprop state without grad_avg")
            v = v - p.moments["grad_avg"] ** 2
            if np.any(v < 0):
                raise InputError(f"{p.name}: centered RMSprop with square_avg < grad_avg², "
                                 "its denominator is not real")
        return np.sqrt(v) + hyper["eps"]

    def preconditioner(self, snapshot: OptimizerSnapshot, p: ParamState,
                       t: int) -> tuple[np.ndarray, float]:
        hyper = self.hyper(snapshot.groups[p.group])
        return self.denominator(p, hyper), hyper["lr"]

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        hyper = uniform(self, snapshot, chosen, ("lr", "alpha", "eps", "momentum", "centered"))
        pvec = np.concatenate([self.denominator(p, hyper).ravel() for p in chosen])
        l2 = per_coordinate(self, snapshot, chosen, "weight_decay")
        lr, mu = hyper["lr"], hyper["momentum"]
        settings = {"lr": lr, "alpha": hyper["alpha"], "centered": hyper["centered"],
                    "momentum": mu}
        step = snapshot.step or 0
        if mu == 0.0:
            form = BlockForm(self.name, "rmsprop", 1.0, lr, 0.0, 0.0, 0.0,
                             "P-weighted (P^½θ)", step, settings)
        else:
            base = sgd_form(lr, mu, 0.0, False, ctx.options.coordinates)
            coords = ("P-weighted (P^½θ, lr·P^½buf)" if ctx.options.coordinates == "scaled"
                      else "P-weighted (P^½θ, P^½buf)")
            form = replace(base, optimizer=self.name, form="rmsprop-momentum",
                           coordinates=coords, step=step, settings=settings)
        scaled = bool(mu) and ctx.options.coordinates == "scaled"
        preconditioned.analyze(ctx, preconditioned.Preconditioned(
            pvec, l2, [form], step,
            lambda kmax: {"eos_ratio_preconditioned": eos_ratio(form, kmax)},
            second=0.5, own="(θ, lr·buf)" if scaled else "(θ, buf)",
            euclidean_reduced=True,
            settings_note={"step_convention": "no bias correction: t does not enter"}))
