"""torch.optim.SGD: heavy ball, dampening, Nesterov, L2 weight decay (docs/operators.md §1).

No preconditioner: the operator needs only H, lr and the hyper-parameters, so a snapshot
saved before the first step (no momentum buffers yet) is analysed like any other. The
blocks are J_i = [[1 - α h_i, -β], [γ h_i, μ]] in the coordinates (θ, buf), or
(θ, lr·buf) with ``--coordinates scaled``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from spectrum_cli.core.update_blocks import analyze_blocks, sgd_form
from spectrum_cli.optim.base import (
    OperatorContext, OptimizerSnapshot, ParamState, Rule, ends, entry, extremes_entry,
    hessian_spectrum, per_coordinate, public, uniform,
)


class SGDRule(Rule):
    name = "sgd"
    description = "torch.optim.SGD (momentum, dampening, Nesterov, L2 weight decay)"
    moments = ("momentum_buffer",)
    group_keys = frozenset({"momentum", "dampening", "nesterov"})
    state_keys = frozenset({"momentum_buffer"})
    without_state = ("the SGD state holds no momentum buffers (saved before its first step, "
                     "or momentum = 0): the linearized operator needs only H, lr and the "
                     "hyper-parameters, so every parameter of the optimizer's groups is "
                     "analysed")
    metrics = {"eos_ratio_gd": "lr·λ_max/2", "eos_ratio_momentum":
               "lr(1-d)λ_max/(2(1+μ)); Nesterov: lr λ_max (1+2μ)/(2(1+μ))"}

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out = super().hyper(group)
        out.update(momentum=float(group.get("momentum", 0.0)),
                   dampening=float(group.get("dampening", 0.0)),
                   nesterov=bool(group.get("nesterov", False)))
        return out

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        options = ctx.options
        hyper = uniform(self, snapshot, chosen, ("lr", "momentum", "dampening", "nesterov"))
        wd = per_coordinate(self, snapshot, chosen, "weight_decay")
        lam, info = hessian_spectrum(ctx, wd)
        lmax, lmin = ends(lam, info)
        lr, mu, d = hyper["lr"], hyper["momentum"], hyper["dampening"]
        form = sgd_form(lr, mu, d, hyper["nesterov"], options.coordinates)
        if hyper["nesterov"]:
            eos_m = lr * lmax * (1 + 2 * mu) / (2 * (1 + mu))
        else:
            eos_m = lr * (1 - d) * lmax / (2 * (1 + mu))
        extra = {"hessian_lambda_max": lmax, "hessian_lambda_min": lmin,
                 "eos_ratio_gd": lr * lmax / 2, "eos_ratio_momentum": eos_m}
        form = replace(form, step=snapshot.step)
        if lam is None:
            ctx.add(extremes_entry(form, lmin, lmax, extra, info, options))
            return
        analysis = analyze_blocks(form, lam, options.eps, options.power_max)
        ctx.add(entry(analysis, extra, {}, public(info)),
                {"power_norms": analysis.power_norms, "eigenvalues": analysis.eigenvalues,
                 "hessian_eigenvalues": lam})
