"""One rank of the two-process runs of ``test_distributed.py`` (gloo, CPU).

``python distributed_worker.py RANK WORLD PORT OUT_DIR``: joins the process group on
127.0.0.1:PORT and runs, one after the other in the same group (one torch import per
process for every check), a hand-written DDP loop, the same loop with a ``fail_on`` that
fires on rank 0 only, a loop whose measurement fails on rank 0, an FSDP2
(``fully_shard``) loop and a Lightning ``strategy="ddp"`` fit. Writes
``OUT_DIR/rank{RANK}.json`` (what each rank saw) and, for the oracles, the weights
measured (rank 0: ``ddp.npz``) and each rank's FSDP2 shards (``fsdp{RANK}.npz``).
"""

from __future__ import annotations

import json
import os
import sys

STEPS, EVERY, POISON_AT, FAIL_AT = 6, 2, 3, 2


def mlp(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4))


def batch(torch, rank, step):
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(16, 6, generator=g), torch.randn(16, 4, generator=g)


def train(torch, model, rank, callback, steps=STEPS, poison=None):
    """The loop a user writes; returns the steps run and the weights at each measured
    step (rank 0's replica or this rank's shards)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = 0
    for step in range(1, steps + 1):
        x, y = batch(torch, rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        run = step
        if poison is not None:
            poison(step)
        if callback.after_step(model, step, optimizer=opt):
            break
    return run


def plain_ddp(torch, rank, out):
    from torch.nn.parallel import DistributedDataParallel

    from spectrum_cli.integrations.loop import SpectrumCallback

    model = DistributedDataParallel(mlp(torch))
    logged, weights = [], {}

    def log(values, step):
        logged.append([step, values])
        for k, v in model.module.state_dict().items():
            weights[f"{step}/{k}"] = v.detach().numpy().copy()

    cb = SpectrumCallback(every_n_steps=EVERY, log=log, fail_on=["kappa>1e6"])
    run = train(torch, model, rank, cb)
    if rank == 0:
        import numpy as np

        np.savez(os.path.join(out, "ddp.npz"), **weights)
    same = [float((p - q).abs().max()) for p, q in
            zip(model.module.parameters(), mlp(torch).parameters())]
    return {"logged": logged, "steps_run": run, "last": cb.last.indicators,
            "last_step": cb.last.step, "stopped": cb.stopped is not None,
            "moved": max(same)}


def fail_on_rank0(torch, rank):
    """NaN put in rank 0's replica alone at POISON_AT: rank 0's measurement alone sees
    it, so rank 1 stops only if rank 0's decision reaches it."""
    from torch.nn.parallel import DistributedDataParallel

    from spectrum_cli.integrations.loop import SpectrumCallback

    model = DistributedDataParallel(mlp(torch))
    logged = []

    def poison(step):
        if rank == 0 and step == POISON_AT:
            with torch.no_grad():
                model.module[0].weight[0, 0] = float("nan")

    cb = SpectrumCallback(every_n_steps=1, log=lambda v, s: logged.append(s),
                          fail_on=["nonfinite_count>0"])
    run = train(torch, model, rank, cb, poison=poison)
    return {"steps_run": run, "logged_steps": logged,
            "stopped_step": cb.stopped.step if cb.stopped is not None else None,
            "violations": len(cb.stopped.violations) if cb.stopped is not None else 0}


def failing_measurement(torch, rank):
    """Rank 0's measurement raises at FAIL_AT: no rank waits, the loop goes on."""
    from torch.nn.parallel import DistributedDataParallel

    from spectrum_cli.integrations.loop import SpectrumCallback

    model = DistributedDataParallel(mlp(torch))
    cb = SpectrumCallback(every_n_steps=1, log=lambda v, s: None)
    real = cb.schedule.monitor.measure

    def measure(weights, step, **kw):
        if step == FAIL_AT:
            raise RuntimeError("a measurement that fails")
        return real(weights, step, **kw)

    cb.schedule.monitor.measure = measure
    measured = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 5):
        x, y = batch(torch, rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        cb.after_step(model, step)
        measured.append(cb.last.step if cb.last is not None else None)
    return {"last_step_after_each": measured}


def fsdp2(torch, rank, out):
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:  # torch without FSDP2
        return {"unsupported": f"{type(exc).__name__}: {exc}"}
    import numpy as np

    from spectrum_cli.integrations.loop import SpectrumCallback

    model = mlp(torch)
    try:
        fully_shard(model[0])
        fully_shard(model[2])
        fully_shard(model)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which skips
        return {"unsupported": f"{type(exc).__name__}: {exc}"}
    logged, shards = [], {}

    def log(values, step):
        logged.append([step, values])

    cb = SpectrumCallback(every_n_steps=EVERY, log=log)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, STEPS + 1):
        x, y = batch(torch, rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        cb.after_step(model, step)
        if step % EVERY == 0:
            for k, v in model.state_dict().items():
                shards[f"{step}/{k}"] = v.to_local().detach().numpy().copy()
    np.savez(os.path.join(out, f"fsdp{rank}.npz"), **shards)
    kinds = sorted({type(v).__name__ for v in model.state_dict().values()})
    return {"logged": logged, "last": cb.last.indicators, "kinds": kinds}


def lightning_ddp(torch, rank, out):
    try:
        import lightning.pytorch as L
    except ImportError as exc:
        return {"unsupported": f"{type(exc).__name__}: {exc}"}
    from lightning.pytorch.loggers import CSVLogger

    from spectrum_cli.integrations.lightning import SpectrumCallback

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp(torch)

        def training_step(self, b, i):
            x, y = b
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Poison(L.Callback):  # rank 0's replica only, after step POISON_AT
        def on_train_batch_end(self, trainer, module, outputs, b, i):
            if trainer.global_step == POISON_AT and trainer.is_global_zero:
                with torch.no_grad():
                    module.net[0].weight[0, 0] = float("nan")

    g = torch.Generator().manual_seed(7)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6, generator=g),
                                          torch.randn(64, 4, generator=g))
    cb = SpectrumCallback(every_n_steps=1, on_save=False, fail_on=["nonfinite_count>0"])
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=STEPS,
                        callbacks=[Poison(), cb], logger=CSVLogger(out, name=f"pl{rank}"),
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        log_every_n_steps=1)
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=4))
    return {"global_step": trainer.global_step,
            "stopped_step": cb.stopped.step if cb.stopped is not None else None,
            "callback_metric": float(trainer.callback_metrics.get(
                "spectrum/tensors.nonfinite_tensors", float("nan"))),
            "log_dir": trainer.logger.log_dir if rank == 0 else None}


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = {"ddp": plain_ddp(torch, rank, out), "fail_on": fail_on_rank0(torch, rank),
              "failing": failing_measurement(torch, rank), "fsdp2": fsdp2(torch, rank, out)}
    if "--lightning" in sys.argv:
        result["lightning"] = lightning_ddp(torch, rank, out)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
