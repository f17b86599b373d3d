"""Measuring under ``torch.distributed``: one measurement per step for the whole group.

Under data parallelism (DDP, FSDP, a hand-written loop over ``torch.distributed``) every
process runs the callback at the same steps. Measuring on each of them would cost every
rank the measurement and log each value once per rank; under FSDP each rank holds only a
shard of every parameter. So, when a process group of more than one process is
initialized, a measurement is a collective of the whole group, in three parts:

1. *Weights* (every rank). A ``DistributedDataParallel`` wrapper is unwrapped
   (``.module``: the replica every rank holds, under the single-process names). Each
   rank calls ``state_dict()`` (a collective for FSDP1's full state dict). Parameters
   that are ``DTensor`` (FSDP2's ``fully_shard``, tensor parallelism) are gathered with
   ``full_tensor()`` by every rank, one tensor at a time, in the state dict's order
   (the same on every rank): only the tensors the monitor's ``include``/``exclude``
   select, which is decided from names and global shapes alone. Rank 0 keeps a CPU copy
   of each; the others drop theirs at once.
2. *Measurement* (rank 0 only): the single-process measurement of those weights, with
   the monitor's settings, so the values equal a one-process measurement of the same
   weights.
3. *Outcome* (every rank, in a ``finally``, so a failed measurement leaves no rank
   waiting): rank 0 broadcasts the indicators, the ``fail_on`` violations and the
   warnings (not the document or the singular values, which stay on rank 0). Every
   rank thus takes the same stop decision at the same step, and every rank's
   ``callback.last.indicators`` holds the same values; only rank 0 writes them to the
   loggers.

Without an initialized process group (or with one process) nothing here runs and a
measurement is the single-process one. ``torch.distributed`` is imported only when
torch already is (no process group can exist otherwise).

Memory: rank 0 holds one CPU copy of the selected matrices (in their own dtype) while it
measures; ``include``/``exclude`` bound it. What is not gathered: DeepSpeed ZeRO-3's
partitioned parameters (not DTensors; each rank's partition is measured as it is, and
an empty partition is skipped as empty). Operator indicators (``loss=...``) are computed
on rank 0 from its DDP replica and optimizer; with sharded (DTensor) parameters they are
not computed (a warning says so), the optimizer state being sharded too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["World", "world", "unwrap", "is_sharded", "full_weights", "broadcast"]


@dataclass(frozen=True)
class World:
    """This process's place in an initialized process group of ``size`` > 1."""

    rank: int
    size: int

    @property
    def writes(self) -> bool:
        """Whether this process writes the values (rank 0)."""
        return self.rank == 0


def world() -> World | None:
    """The process group this process is part of, or None when there is none (torch not
    imported, ``torch.distributed`` unavailable or not initialized, or one process)."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    return World(dist.get_rank(), size) if size > 1 else None


def unwrap(model: Any) -> Any:
    """The module a ``DistributedDataParallel`` (or ``DataParallel``) wraps, else
    ``model`` itself."""
    parallel = sys.modules.get("torch.nn.parallel")
    if parallel is None:
        return model
    wrappers = (parallel.DistributedDataParallel, parallel.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def is_dtensor(value: Any) -> bool:
    """Whether ``value`` is a ``torch.distributed.tensor.DTensor`` (a sharded tensor)."""
    return type(value).__name__ == "DTensor" and hasattr(value, "full_tensor")


def is_sharded(weights: Mapping[str, Any]) -> bool:
    """Whether some entry of ``weights`` is a DTensor."""
    return any(is_dtensor(v) for v in weights.values())


def is_fsdp1(model: Any) -> bool:
    """Whether ``model`` is or holds FSDP1's ``FullyShardedDataParallel`` wrapper (its
    ``state_dict()`` is then a collective of every rank)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    cls = getattr(fsdp, "FullyShardedDataParallel", None) if fsdp is not None else None
    if cls is None or not hasattr(model, "modules"):
        return False
    return any(isinstance(m, cls) for m in model.modules())


def described(weights: Mapping[str, Any]) -> dict[str, Any]:
    """``weights`` with each DTensor replaced by an empty ``meta`` tensor of its global
    shape and dtype: enough to plan a selection (names, shapes, dtypes), no data."""
    if not is_sharded(weights):
        return dict(weights)
    import torch

    return {k: torch.empty(tuple(v.shape), dtype=v.dtype, device="meta") if is_dtensor(v)
            else v for k, v in weights.items()}


def full_weights(weights: Mapping[str, Any], selected: set[str], rank: int
                 ) -> dict[str, Any] | None:
    """Gather the selected DTensors of ``weights`` (a collective: every rank calls it
    with the same ``weights`` names and ``selected``). Rank 0 gets the state dict with
    each selected DTensor replaced by a full CPU copy (one copy per DTensor object: tied
    weights stay tied) and the others by ``meta`` stand-ins; other ranks get None."""
    out: dict[str, Any] | None = {} if rank == 0 else None
    stand_in = described(weights)
    gathered: dict[int, Any] = {}
    for name, value in weights.items():  # the same order on every rank
        if is_dtensor(value) and name in selected:
            key = id(value)
            if key not in gathered:
                full = value.full_tensor()  # all-gather: every rank takes part
                gathered[key] = full.detach().cpu() if rank == 0 else None
                del full
            value = gathered[key]
        elif is_dtensor(value):
            value = stand_in[name]
        if out is not None:
            out[name] = value
    return out


def broadcast(payload: Any, rank: int) -> Any:
    """Rank 0's ``payload`` (any picklable object) on every rank (a collective)."""
    import torch.distributed as dist

    box = [payload if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
