"""An optimizer-rule plugin for torch.optim.ASGD (which spectrum does not ship): ASGD's
step θ' = (1 - λη)θ - η(g + wd θ) is linear in θ with the stored η (the rate of the next
step); the averaged parameter ``ax`` is never fed back. So the operator is the reduced
form J = (1 - λη)I - η(H + wd I), one 1x1 block per Hessian eigenvalue."""

from dataclasses import replace

from spectrum_cli.core.update_blocks import BlockForm, analyze_blocks
from spectrum_cli.optim.base import (
    Rule, ends, entry, extremes_entry, hessian_spectrum, per_coordinate, public, uniform,
)


class ASGDRule(Rule):
    name = "asgd"
    description = "torch.optim.ASGD, linearized in θ (test plugin)"
    moments = ("ax",)
    scalars = ("eta", "mu")
    group_keys = frozenset({"lambd", "alpha", "t0"})
    state_keys = frozenset({"eta", "ax"})
    metrics = {"eos_ratio_asgd": "η λ_max(H + wd I) / (2 - λη)"}

    def hyper(self, group):
        out = super().hyper(group)
        out.update(lambd=float(group["lambd"]), alpha=float(group["alpha"]),
                   t0=float(group["t0"]))
        return out

    def operators(self, snapshot, chosen, ctx):
        hyper = uniform(self, snapshot, chosen, ("lr", "lambd"))
        etas = {float(p.scalars["eta"]) for p in chosen}
        if len(etas) != 1:
            raise ValueError(f"the selected parameters have different eta: {sorted(etas)}")
        eta = etas.pop()
        wd = per_coordinate(self, snapshot, chosen, "weight_decay")
        lam, info = hessian_spectrum(ctx, wd)
        lmax, lmin = ends(lam, info)
        w = 1.0 - hyper["lambd"] * eta
        form = BlockForm(self.name, "asgd", w, eta, 0.0, 0.0, 0.0, "(θ)", snapshot.step,
                         {"eta": eta, "lambd": hyper["lambd"]})
        extra = {"hessian_lambda_max": lmax, "hessian_lambda_min": lmin,
                 "eos_ratio_asgd": eta * lmax / (1.0 + w)}
        form = replace(form, step=snapshot.step)
        if lam is None:
            ctx.add(extremes_entry(form, lmin, lmax, extra, info, ctx.options))
            return
        analysis = analyze_blocks(form, lam, ctx.options.eps, ctx.options.power_max)
        ctx.add(entry(analysis, extra, {}, public(info)),
                {"power_norms": analysis.power_norms, "eigenvalues": analysis.eigenvalues,
                 "hessian_eigenvalues": lam})
