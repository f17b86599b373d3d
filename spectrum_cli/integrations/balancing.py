"""Live TempBalance: per-layer learning-rate factors applied while the model trains.

Zhou et al., "Temperature balancing, layer-wise weight analysis, and neural network
training", NeurIPS 2023; github YefanZhou/TempBalance, ``tempbalance.py``, class
``Tempbalance`` (commit 9f0d9c7e). At each measurement the layers' ``alpha_hill``
(:mod:`spectrum_cli.core.esd_estimators`, the reference's ``pl_fitting='median'``) are
mapped to factors f_i in [lr_min_ratio, lr_max_ratio]
(:func:`spectrum_cli.core.allocation.tempbalance_factors`, ``tb_linear_map``), and
every optimizer step after it runs layer i with the learning rate f_i · lr, lr being
the group's scheduled (untuned) learning rate, as ``Tempbalance.step(optimizer,
untuned_lr)`` sets ``param_group['lr']``. Off unless asked for (``balance=`` of the
callbacks).

**Layers.** As the reference: the ``nn.Linear`` and ``nn.Conv2d`` modules of the model,
in ``named_modules()`` order (a ``DistributedDataParallel`` wrapper unwrapped). The
first and the last of them, and those with fewer than ``eigs_thresh`` (50) eigenvalues,
min(m, n) of the weight as analysed, keep factor 1; the others are tuned. A layer
whose weight the measurement has no finite ``alpha_hill`` for (left out by
``include``/``exclude``, a tied weight measured under another name, NaN entries) keeps
factor 1 too, and is left out of the min/max (quirk 7 of
:mod:`spectrum_cli.core.allocation`).

**Parameter groups.** A factor applies to a whole parameter group, so each tuned layer
must have a group of its own holding exactly its parameters (weight and bias, as the
reference's ``build_optimizer_param_group`` groups ``module.parameters()``).
:meth:`TempBalance.param_groups` builds such groups: one per ``Linear``/``Conv2d`` module
plus one for every other parameter (normalization layers, embeddings), which keeps the
global learning rate, as in the reference (``batchnorm=False``, ``layernorm=False``).
An optimizer whose groups do not fit (the usual single group) is refused when the
callback attaches, before the first step, with a ``ValueError`` naming the layers.

**The base learning rate.** The factors are applied for the duration of each
``optimizer.step()``: a step pre-hook multiplies the group's ``lr`` by its factor and a
post-hook puts the scheduled value back. So the base is whatever the group holds when
the step begins: the value of any LR scheduler (the Hugging Face Trainer's
``LambdaLR``, which rewrites ``lr`` from ``initial_lr`` at every step; Lightning's
``lr_scheduler_configs``; a recursive ``StepLR``), which never sees a factor and so
never compounds one; between steps, and in a saved optimizer state, the groups hold the
untuned values. :meth:`TempBalance.lrs` gives the learning rate each group steps with.

**Differences from the reference.** The reference computes factors from the initial
weights before the first step; here the factors are 1 until the first measurement.
``Conv2d`` kernels are measured as out x (in·k·k) matrices (the reference pools the
k·k slices scaled by √0.5), so their α and eigenvalue counts are not the reference's;
on ``nn.Linear`` the learning rates equal the reference's to rounding
(``tests/integrations/test_balancing.py`` runs its ``Tempbalance`` class).
``BatchNorm2d``/``LayerNorm`` parameters are not tuned along with their layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from spectrum_cli.core import allocation as A
from spectrum_cli.core.errors import UsageError
from spectrum_cli.integrations.distributed import unwrap

__all__ = ["TempBalance", "Balance", "balancer"]

#: The metric the factors come from (TempBalance's default, ``pl_fitting='median'``).
METRIC = A.TEMPBALANCE_METRIC


@dataclass(frozen=True)
class Balance:
    """The factors of one measurement (computed on rank 0, the same on every rank).

    ``layers``: the ``Linear``/``Conv2d`` modules in module order; ``alphas``: their
    ``alpha_hill`` (None: not measured or undefined); ``factors``, ``tuned``,
    ``reasons``: :class:`~spectrum_cli.core.allocation.LearningRateAllocation`'s."""

    step: int
    layers: tuple[str, ...]
    alphas: tuple[float | None, ...]
    factors: tuple[float, ...]
    tuned: tuple[bool, ...]
    reasons: tuple[str | None, ...]
    notes: tuple[str, ...] = ()

    def logs(self, prefix: str) -> dict[str, float]:
        """``<prefix>lr_factor/<module>`` of each tuned layer."""
        return {f"{prefix}lr_factor/{name}": f
                for name, f, t in zip(self.layers, self.factors, self.tuned) if t}


def _kinds() -> tuple[type, ...]:
    import torch

    return (torch.nn.Linear, torch.nn.Conv2d)


def _eigen_count(weight: Any) -> int:
    """min(m, n) of the weight as analysed (a kernel as out x in·k·k)."""
    shape = tuple(weight.shape)
    return min(shape[0], math.prod(shape[1:])) if len(shape) >= 2 else 0


def _torch_optimizer(optimizer: Any) -> Any:
    """The ``torch.optim.Optimizer`` inside a wrapper (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``)."""
    import torch

    seen = 0
    while seen < 8:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer",
                                                                 None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer, seen = inner, seen + 1
    return optimizer


class TempBalance:
    """TempBalance's per-layer learning rates, applied live; see the module.

    ``lr_min_ratio``, ``lr_max_ratio``: the band of factors (the reference's defaults,
    0.5 and 1.5); ``eigs_thresh``: layers with fewer eigenvalues are not tuned (50);
    ``remove_first``, ``remove_last``: leave the first / last layer untuned (True, as
    ``remove_first_layer``/``remove_last_layer``). ``last``: the latest
    :class:`Balance` applied."""

    def __init__(self, *, lr_min_ratio: float = A.LR_MIN_RATIO,
                 lr_max_ratio: float = A.LR_MAX_RATIO, eigs_thresh: int = A.EIGS_THRESH,
                 remove_first: bool = True, remove_last: bool = True) -> None:
        for name, v in (("remove_first", remove_first), ("remove_last", remove_last)):
            if not isinstance(v, bool):
                raise UsageError(f"{name}: expected True or False, got {v!r}")
        try:  # the ranges, checked once by the function that uses them
            A.tempbalance_factors([1.0], [0], lr_min_ratio=lr_min_ratio,
                                  lr_max_ratio=lr_max_ratio, eigs_thresh=eigs_thresh)
        except ValueError as exc:
            raise UsageError(f"TempBalance: {exc}") from None
        self.options = dict(lr_min_ratio=lr_min_ratio, lr_max_ratio=lr_max_ratio,
                            eigs_thresh=eigs_thresh, remove_first=remove_first,
                            remove_last=remove_last)
        self.optimizer: Any = None
        self.last: Balance | None = None
        self._layers: list[tuple[str, int]] = []   # (module name, eigenvalue count)
        self._group_of: dict[str, int] = {}        # tunable module -> its group
        self._factor: dict[int, float] = {}        # group -> factor now applied
        self._untuned: dict[int, Any] = {}         # group -> lr during a step
        self._handles: list[Any] = []

    def __repr__(self) -> str:
        return "TempBalance(" + ", ".join(f"{k}={v!r}" for k, v in self.options.items()) + ")"

    # -- the layers and their groups ---------------------------------------------------

    @staticmethod
    def layers(model: Any) -> list[tuple[str, Any]]:
        """(name, module) of the model's ``Linear`` and ``Conv2d`` modules, in module
        order (the reference's ``named_modules()`` loop)."""
        kinds = _kinds()
        return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, kinds)]

    @classmethod
    def param_groups(cls, model: Any, lr: float, **options: Any) -> list[dict[str, Any]]:
        """Parameter groups for ``torch.optim.X(groups)``: one per ``Linear``/``Conv2d``
        module (its parameters, weight and bias) in module order, then one of the other
        parameters (if any), as the reference's ``build_optimizer_param_group`` (every
        group at ``lr``: the factors start at 1). ``options`` (``weight_decay=...``) go
        to every group. Only parameters that require a gradient are grouped.

        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> [len(g["params"]) for g in TempBalance.param_groups(net, 0.1)]
        [2, 2]
        """
        if not (isinstance(lr, (int, float)) and lr >= 0):
            raise UsageError(f"lr: expected a non-negative number, got {lr!r}")
        groups, seen = [], set()
        for _, module in cls.layers(model):
            params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr": lr, **options})
        rest = [p for p in unwrap(model).parameters() if p.requires_grad and id(p) not in seen]
        if rest:
            groups.append({"params": rest, "lr": lr, **options})
        return groups

    def _tunable(self, i: int, count: int, n: int) -> bool:
        o = self.options
        return not ((o["remove_first"] and i == 0) or (o["remove_last"] and i == n - 1)
                    or count < o["eigs_thresh"])

    def attach(self, model: Any, optimizer: Any) -> "TempBalance":
        """Balance ``optimizer``'s groups for ``model`` from now on (factors 1 until
        :meth:`apply`). Each layer that can be tuned (not first or last, enough
        eigenvalues) and is trained by the optimizer needs a group holding exactly its
        parameters, else a ``ValueError`` (a :class:`UsageError`) names the layers.
        Again with the same optimizer: nothing happens."""
        optimizer = _torch_optimizer(optimizer)
        if optimizer is self.optimizer:
            return self
        if not hasattr(optimizer, "register_step_pre_hook"):
            raise UsageError(f"balance: expected a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__} (it has no step hooks)")
        found = self.layers(model)
        layers = [(n, _eigen_count(m.weight)) for n, m in found]
        group_of_param = {id(p): i for i, g in enumerate(optimizer.param_groups)
                          for p in g["params"]}
        group_of, bad = {}, []
        for i, ((name, count), (_, module)) in enumerate(zip(layers, found)):
            if id(module.weight) not in group_of_param or not self._tunable(
                    i, count, len(layers)):
                continue  # frozen, or never tuned: its group keeps the global lr
            g = group_of_param[id(module.weight)]
            mine = {id(p) for p in module.parameters()}
            held = {id(p) for p in optimizer.param_groups[g]["params"]}
            if held != mine:
                bad.append(f"{name} (group {g} holds {len(held)} parameter(s), "
                           f"{len(held - mine)} of other modules)")
            group_of[name] = g
        if bad:
            raise UsageError(
                f"balance: TempBalance sets one learning rate per layer, so each tuned "
                f"layer needs a parameter group of its own holding exactly its weight and "
                f"bias; the optimizer has {len(optimizer.param_groups)} group(s) and "
                f"{len(bad)} layer(s) share theirs: {'; '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}. Build the optimizer with "
                f"TempBalance.param_groups(model, lr), e.g. "
                f"torch.optim.SGD(TempBalance.param_groups(model, lr=0.1), momentum=0.9)")
        self.detach()
        self.optimizer, self._layers, self._group_of = optimizer, layers, group_of
        self._handles = [optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step)]
        return self

    def detach(self) -> None:
        """Stop balancing: remove the hooks (the groups keep their scheduled lr)."""
        for h in self._handles:
            h.remove()
        self._handles, self.optimizer, self._factor, self._untuned = [], None, {}, {}

    # -- factors ---------------------------------------------------------------------

    def plan(self, measurement: Any) -> Balance:
        """The factors from a measurement's per-tensor ``alpha_hill`` (its
        ``document``: on rank 0 under ``torch.distributed``)."""
        if self.optimizer is None:
            raise UsageError("balance: attach(model, optimizer) first")
        alphas = _alphas(measurement.document, [n for n, _ in self._layers])
        r = A.tempbalance_factors(alphas, [c for _, c in self._layers], **self.options)
        return Balance(int(measurement.step), tuple(n for n, _ in self._layers),
                       tuple(alphas), r.factors, r.tuned, r.reasons, r.notes)

    def apply(self, balance: Balance) -> None:
        """Use ``balance``'s factors from the next optimizer step on."""
        if tuple(n for n, _ in self._layers) != balance.layers:
            raise UsageError("balance: the factors are of other layers than this model's")
        self._factor = {self._group_of[n]: f for n, f in zip(balance.layers,
                                                              balance.factors)
                        if n in self._group_of and f != 1.0}
        self.last = balance

    def lrs(self) -> list[float]:
        """The learning rate each group of the optimizer steps with now (its scheduled
        ``lr`` times its factor)."""
        if self.optimizer is None:
            return []
        groups = self.optimizer.param_groups
        if self._untuned:  # inside a step: the factors are in place
            return [g["lr"] for g in groups]
        return [self._factor.get(i, 1.0) * g["lr"] for i, g in enumerate(groups)]

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        groups = optimizer.param_groups
        self._untuned = {i: groups[i]["lr"] for i in self._factor}
        for i, f in self._factor.items():
            groups[i]["lr"] = f * groups[i]["lr"]

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        for i, lr in self._untuned.items():
            optimizer.param_groups[i]["lr"] = lr
        self._untuned = {}


def _alphas(document: Mapping[str, Any], layers: list[str]) -> list[float | None]:
    """Each layer's ``alpha_hill`` from an analysis document (None: not there)."""
    by_name = {}
    for t in document.get("tensors", ()):
        v = t.get("metrics", {}).get(METRIC)
        if t.get("status") == "ok" and isinstance(v, (int, float)) and math.isfinite(v):
            by_name[t["name"]] = float(v)
    return [by_name.get(f"{name}.weight") for name in layers]


def balancer(balance: Any) -> TempBalance | None:
    """The callbacks' ``balance`` option: None or False (off, the default),
    ``"tempbalance"`` (the reference's defaults), a dict of :class:`TempBalance`'s
    options or a :class:`TempBalance`."""
    if balance is None or balance is False:
        return None
    if isinstance(balance, TempBalance):
        return balance
    if balance == "tempbalance":
        return TempBalance()
    if isinstance(balance, Mapping):
        try:
            return TempBalance(**balance)
        except TypeError as exc:
            raise UsageError(f"balance: {exc}") from None
    raise UsageError(f"balance: expected None, 'tempbalance', a dict of TempBalance's "
                     f"options (lr_min_ratio, lr_max_ratio, eigs_thresh, remove_first, "
                     f"remove_last) or a TempBalance, got {balance!r}")
