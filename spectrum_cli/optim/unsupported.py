"""Optimizer families recognised and refused: their update is not a differentiable
preconditioned step, so no linearized operator exists (docs/operators.md §5).

Each is identified from the keys its library stores, so the message says *why* instead
of guessing; without ``--model/--data`` the checkpoint's weights and the optimizer's
moment norms are still reported (with the reason as a note).
"""

from __future__ import annotations

from typing import Any, Mapping

from spectrum_cli.core.errors import InputError
from spectrum_cli.optim.base import OperatorContext, OptimizerSnapshot, ParamState, Rule

_STILL = "; the weights are still analysed without --model/--data"


class Refused(Rule):
    """A family with no linearized operator: ``operators`` raises with ``refusal``."""

    def hyper(self, group: Mapping) -> dict[str, Any]:
        out: dict[str, Any] = {"lr": float(group.get("lr", 0.0)),
                               "weight_decay": float(group.get("weight_decay", 0.0) or 0.0),
                               "maximize": bool(group.get("maximize", False))}
        return out

    def shape_ok(self, key: str, value: tuple[int, ...], param: tuple[int, ...]) -> bool:
        return True  # norms only: no operator is built from these tensors

    def operators(self, snapshot: OptimizerSnapshot, chosen: list[ParamState],
                  ctx: OperatorContext) -> None:
        raise InputError(self.refusal or f"{self.name}: no linearized operator")


class LionRule(Refused):
    name = "lion"
    description = "Lion (lion-pytorch and others): sign update, refused"
    moments = ("exp_avg",)
    group_keys = frozenset({"betas", "lr", "weight_decay"})
    absent_keys = frozenset({"eps", "amsgrad", "momentum_decay"})
    state_keys = frozenset({"exp_avg"})
    refusal = ("Lion's update is sign(·): not differentiable, so no linearized operator "
               "exists" + _STILL)

    def identify(self, groups, state_keys) -> int:
        if "exp_avg_sq" in state_keys or "exp_inf" in state_keys:
            return 0
        return super().identify(groups, state_keys)


class MuonRule(Refused):
    name = "muon"
    description = "Muon (torch.optim.Muon, Keller Jordan's): orthogonalized update, refused"
    moments = ("momentum_buffer",)
    group_keys = frozenset({"momentum", "ns_steps"})
    state_keys = frozenset({"momentum_buffer"})
    refusal = ("Muon's update orthogonalizes the momentum matrix (Newton-Schulz iterations "
               "towards U Vᵀ of its SVD): a polar-type map, not a preconditioned linear "
               "step, and not differentiable where singular values meet or vanish, so no "
               "linearized operator exists" + _STILL)


class LBFGSRule(Refused):
    name = "lbfgs"
    description = "torch.optim.LBFGS: line search and curvature history, refused"
    group_keys = frozenset({"history_size", "max_iter"})
    refusal = ("L-BFGS's step() runs up to max_iter inner iterations, each rebuilding its "
               "curvature history (old_dirs, old_stps) from the differences it takes, with "
               "an optional line search: the history is not a frozen preconditioner, so no "
               "quasi-static linearized operator exists" + _STILL)


class RpropRule(Refused):
    name = "rprop"
    description = "torch.optim.Rprop: sign-based steps, refused"
    moments = ("prev", "step_size")
    group_keys = frozenset({"etas", "step_sizes"})
    state_keys = frozenset({"prev", "step_size"})
    refusal = ("Rprop's update is sign(g)·step_size with step sizes adapted by sign "
               "agreement: sign(·) is not differentiable, so no linearized operator "
               "exists" + _STILL)


class SparseAdamRule(Refused):
    name = "sparse-adam"
    description = "torch.optim.SparseAdam: lazy updates of a sparse gradient's rows, refused"
    moments = ("exp_avg", "exp_avg_sq")
    group_keys = frozenset({"betas", "eps"})
    absent_keys = frozenset({"weight_decay", "amsgrad", "momentum_decay",
                             "decoupled_weight_decay"})
    refusal = ("SparseAdam updates only the rows a sparse gradient touches (lazy moments): "
               "which coordinates move depends on each batch's support, not smoothly on "
               "θ, so no linearized operator exists" + _STILL)
