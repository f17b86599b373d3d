"""torch.optim.Adafactor (docs/operators.md §4).

Step t: 1 - β2_t = t^beta2_decay; matrices keep factored row/column means of g²
(R' = β2_t R + (1-β2_t) rowmean(g²), C' likewise) and V = R C / max(mean(R), eps1);
vectors keep V' = β2_t V + (1-β2_t) g². P = sqrt(max(V, eps1²)), the relative step
ρ_t = min(lr, 1/sqrt(t)), α_i = max(eps2, RMS(θ_i))·ρ_t per tensor, the update
u = g/P is clipped by d: u / max(1, RMS(u)/d), and θ' = (1 - lr·wd) θ - α_i u/clip_i.

Frozen quasi-statically, and said in the report's notes: the factored V as stored (the
step that produced the snapshot used it), RMS(θ_i) at the snapshot's weights (it
multiplies an update that vanishes at a stationary point, so its own derivative drops
out there), and the clip factor: from the gradient of the Hessian source's loss at the
snapshot's weights (1 when clipping is inactive there; when active it is frozen, its
derivative not linearized). The reduced operator is w I - ρ_t P_eff⁻¹ H with
P_eff = P·clip_i / max(eps2, RMS(θ_i)).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from spectrum_cli.core.update_blocks import BlockForm
from spectrum_cli.optim import preconditioned
from spectrum_cli.optim.base import (
    OperatorContext, OptimizerSnapshot, ParamState, Rule, eos_ratio, step_used, uniform,
)


def _eps1(hyper: dict[str, Any], p: ParamState) -> float:
    if hyper["eps1"] is not None:
        return hyper["eps1"]
    name = (p.dtype or "torch.float32").replace("torch.", "")
    return float(np.finfo(getattr(np, name, np.float32)).eps)


def variance_estimate(p: ParamState, hyper: dict[str, Any]) -> np.ndarray:
    """V as torch's step builds it from the stored (factored) statistics, clamped at eps1²."""
    eps1 = _eps1(hyper, p)
    if "variance" in p.moments:
        v = p.moments["variance"]
    else:
        row, col = p.moments["row_var"], p.moments["col_var"]
        v = (row @ col) / np.maximum(row.mean(axis=-2, keepdims=True), eps1)
    return np.maximum(v, eps1 * eps1)


class AdafactorRule(Rule):
    name = "adafactor"
    description = "torch.optim.Adafactor (factored second moment, relative step, clipping)"
    moments = ("row_var", "col_var", "variance")
    before_first_step = ("Adafactor snapshot saved before its first step has no variance "
                         "estimate, so its preconditioner is undefined")
    group_keys = frozenset({"beta2_decay", "d"})
    state_keys = frozenset({"row_var", "col_var", "variance"})
    metrics = {"eos_ratio_preconditioned": "ρ_t λ_max(K)/(1 + w), K with P_eff"}

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out = super().hyper(group)
        eps = group.get("eps", (None, 1e-3))
        eps1, eps2 = (eps if isinstance(eps, (tuple, list)) else (None, eps))
        out.update(beta2_decay=float(group["beta2_decay"]), d=float(group["d"]),
                   eps1=None if eps1 is None else float(eps1), eps2=float(eps2))
        return out

    def shape_ok(self, key: str, value: tuple[int, ...], param: tuple[int, ...]) -> bool:
        if key == "row_var":
            return len(param) > 1 and value == param[:-1] + (1,)
        if key == "col_var":
            return len(param) > 1 and value == param[:-2] + (1, param[-1])
        return value == param

    def infer_shape(self, moments: Mapping[str, np.ndarray]) -> tuple[int, ...] | None:
        if "variance" in moments:
            return tuple(moments["variance"].shape)
        if "row_var" in moments and "col_var" in moments:
            return tuple(moments["row_var"].shape[:-1]) + (moments["col_var"].shape[-1],)
        return None

    def preconditioner(self, snapshot: OptimizerSnapshot, p: ParamState,
                       t: int) -> tuple[np.ndarray, float]:
        hyper = self.hyper(snapshot.groups[p.group])
        return np.sqrt(variance_estimate(p, hyper)), min(hyper["lr"], 1 / math.sqrt(t))

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        hyper = uniform(self, snapshot, chosen, ("lr", "weight_decay", "beta2_decay", "d"))
        t = step_used(chosen, ctx.options, "Adafactor", "the relative step")
        rho_t = min(hyper["lr"], 1 / math.sqrt(t))
        theta = _split(ctx.problem.theta.detach().cpu().numpy(), chosen)
        grads, how = _gradient(ctx, chosen)
        parts, clips, rms_theta = [], [], []
        for p, th, g in zip(chosen, theta, grads):
            h = self.hyper(snapshot.groups[p.group])
            pre = np.sqrt(variance_estimate(p, h))
            clip = 1.0 if g is None else max(1.0, float(
                np.sqrt(np.mean((g / pre) ** 2))) / h["d"])
            scale = max(h["eps2"], float(np.sqrt(np.mean(th**2))))
            parts.append((pre * clip / scale).ravel())
            clips.append(clip)
            rms_theta.append(scale)
        pvec = np.concatenate(parts)
        w = 1.0 - hyper["lr"] * hyper["weight_decay"]
        form = BlockForm(self.name, "adafactor", w, rho_t, 0.0, 0.0, 0.0,
                         "P-weighted (P_eff^½θ)", t,
                         {"lr": hyper["lr"], "rho_t": rho_t, "beta2_decay":
                          hyper["beta2_decay"], "d": hyper["d"],
                          "weight_decay": hyper["weight_decay"],
                          "clip_factors": {p.name: c for p, c in zip(chosen, clips)},
                          "rms_theta": {p.name: r for p, r in zip(chosen, rms_theta)}})
        active = [p.name for p, c in zip(chosen, clips) if c > 1.0]
        ctx.notes.append(
            f"Adafactor at t = {t}: frozen quasi-statically: the factored second moment as "
            f"stored, the relative step ρ_t = min(lr, 1/sqrt(t)) = {rho_t:.6g} times "
            "max(eps2, RMS(θ)) at the snapshot's weights, and the update clipping by d: "
            + (f"clip factors {how}; clipping is active (frozen, not linearized) for "
               f"{', '.join(active[:4])}" if active else f"clip factors {how}; clipping "
               "is inactive (factor 1) for every selected tensor"))
        preconditioned.analyze(ctx, preconditioned.Preconditioned(
            pvec, None, [form], t,
            lambda kmax: {"eos_ratio_preconditioned": eos_ratio(form, kmax)},
            own="θ", euclidean_reduced=True))


def _split(flat: np.ndarray, chosen: list[ParamState]) -> list[np.ndarray]:
    out, at = [], 0
    for p in chosen:
        size = math.prod(p.shape)
        out.append(flat[at:at + size].reshape(p.shape))
        at += size
    return out


def _gradient(ctx: OperatorContext, chosen: list[ParamState]
              ) -> tuple[list[np.ndarray | None], str]:
    """The loss gradient at the snapshot's weights, per tensor, from the Hessian source."""
    try:
        g = ctx.problem.gradient().cpu().numpy()
    except Exception as exc:  # a Hessian source without a usable gradient
        return [None] * len(chosen), (f"not computable ({type(exc).__name__}): clipping is "
                                      "taken as inactive")
    return _split(g, chosen), "from the gradient of the Hessian source's loss"
