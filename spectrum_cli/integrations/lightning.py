"""``SpectrumCallback`` for Lightning's ``Trainer.fit``
(``pip install 'spectrum-cli[lightning]'``).

>>> trainer = L.Trainer(max_steps=1000, callbacks=[                    # doctest: +SKIP
...     SpectrumCallback(every_n_steps=100, fail_on=["kappa>1e4"], include=["*.attn.*"])])
>>> trainer.fit(module, train_loader)

When: with ``every_n_steps``, every N optimizer steps in ``on_train_batch_end`` (in
memory, no checkpoint needed), and, with ``on_save`` (default), whenever a checkpoint is
saved (``on_save_checkpoint``), at most once per step. What: the indicators of
:class:`~spectrum_cli.integrations.monitor.SpectrumMonitor` (the keyword settings go to
it) under ``spectrum/<indicator>``.

Where the values go: to every logger of the trainer (``logger.log_metrics``:
TensorBoard, CSV, W&B, ...) directly, so they are written whatever ``log_every_n_steps``
is; in ``on_train_batch_end`` also to ``pl_module.log_dict(..., logger=False)``, so that
``trainer.callback_metrics`` holds them
(``EarlyStopping(monitor="spectrum/tensors.max_kappa")`` works) without a second copy
in the loggers.

At which step: Lightning's own, the one ``self.log`` values of the same hook are written
at (its count of batches that stepped, before this batch's is added: ``global_step - 1``
in a training batch's hooks, so the measurement after the 5th optimizer step shares the
logged step 4 with the ``train_loss`` of that 5th batch; ``global_step`` at an epoch's
end). ``Measurement.step`` (``callback.last.step``) is ``trainer.global_step``, the
optimizer steps the measured weights have had, as in the checkpoint's name
(``step=5.ckpt``).

Before the training (``on_fit_start``/``on_train_start``): ``include``/``exclude`` that
select no matrix of the module raise
:class:`~spectrum_cli.integrations.monitor.NothingMatchedError` naming the tensors there
are; operator indicators with other than one optimizer are a ``UsageError``. During it
nothing raises into the training loop: a failed measurement is logged and skipped
(:mod:`spectrum_cli.integrations.common`).

``fail_on``: a violation sets ``trainer.should_stop`` (Lightning ends the fit after this
batch), logs the violations as a warning on the ``spectrum_cli.integrations`` logger and
keeps the measurement in ``callback.stopped``.

Data parallelism (``strategy="ddp"``; FSDP2's ``fully_shard`` under
``ModelParallelStrategy``): every
rank runs the callback; the measurement is one for the whole group (shards gathered by
every rank, measured on rank 0, :mod:`spectrum_cli.integrations.distributed`), rank 0
alone writes to the loggers, every rank gets the same values in
``trainer.callback_metrics`` (so a monitor of ``EarlyStopping`` exists on each) and sets
``trainer.should_stop`` at the same step.

Operator indicators: ``loss`` (``"mse"``, ``"cross_entropy"`` or a callable
``(outputs, targets) -> scalar`` of ``pl_module(inputs)``); the batch is the one the
trainer just trained on (an ``(inputs, targets)`` pair) unless a held-out ``batch`` is
given, and the optimizer the trainer's only one. Their cost is described in
:mod:`spectrum_cli.integrations.operators`.

Live balancing (``balance="tempbalance"`` or a dict of
:class:`~spectrum_cli.integrations.balancing.TempBalance`'s options; off by default):
each measurement sets TempBalance's per-layer learning-rate factors, logged as
``spectrum/lr_factor/<module>``; every optimizer step after it runs each tuned layer at
factor x the learning rate its scheduler (if any) set. ``configure_optimizers`` must
return one optimizer with a group per layer,
``torch.optim.SGD(TempBalance.param_groups(self, lr=0.1), momentum=0.9)``; another is
refused with a ``ValueError`` in ``on_train_start``
(:mod:`spectrum_cli.integrations.balancing`).
"""

from __future__ import annotations

from typing import Any

from spectrum_cli.core.errors import UsageError
from spectrum_cli.integrations.common import Schedule, Scheduled, missing_extra

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - exercised only without the extra
    raise missing_extra("lightning", "lightning") from None

__all__ = ["SpectrumCallback"]


class SpectrumCallback(Scheduled, Callback):
    """Measure the module's weight spectra during ``Trainer.fit``; see the module.

    ``every_n_steps``: measure every N optimizer steps (None: only at saves);
    ``on_save``: measure when a checkpoint is saved; ``monitor``: a ready
    :class:`~spectrum_cli.integrations.monitor.SpectrumMonitor`, else ``settings`` build
    one (``include``, ``exclude``, ``indicators``, ``fail_on``, ``loss``, ``batch``, ...);
    ``prefix``: of the logged names; ``balance``: apply TempBalance's learning-rate
    factors at each measurement (None: off; see the module)."""

    def __init__(self, *, every_n_steps: int | None = None, on_save: bool = True,
                 monitor: Any = None, prefix: str = "spectrum/", balance: Any = None,
                 **settings: Any) -> None:
        self.schedule = Schedule(monitor, settings, every_n_steps, on_save, prefix,
                                 balance)
        self._batch: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.schedule.check(pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.schedule.wants_operators and len(trainer.optimizers) != 1:
            raise UsageError(f"operator indicators need exactly one optimizer; the "
                             f"trainer has {len(trainer.optimizers)}")
        if self.schedule.balancer is not None:
            if len(trainer.optimizers) != 1:
                raise UsageError(f"balance: needs exactly one optimizer; the trainer has "
                                 f"{len(trainer.optimizers)}")
            self.schedule.attach(pl_module, trainer.optimizers[0])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        s = self.schedule
        if s.wants_operators and s.monitor.batch is None:
            self._batch = batch  # the batch just trained on, for a save-time measurement
        if not s.every(trainer.global_step):
            return
        logs = self._measure(trainer, pl_module, batch)
        if logs:
            pl_module.log_dict(logs, logger=False, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any,
                           checkpoint: dict[str, Any]) -> None:
        s = self.schedule
        if s.on_save and not s.measured(trainer.global_step):
            self._measure(trainer, pl_module, self._batch)

    def _measure(self, trainer: Any, pl_module: Any, batch: Any) -> dict[str, float]:
        optimizer = None
        if self.schedule.wants_operators and len(trainer.optimizers) == 1:
            optimizer = trainer.optimizers[0]  # else refused in on_train_start
        held_out = self.schedule.monitor.batch
        out = self.schedule.measure(pl_module, trainer.global_step, optimizer,
                                    held_out if held_out is not None else batch)
        if out.measurement is None:
            return {}  # failed and logged; the training goes on
        if out.writes:  # rank 0 alone under torch.distributed
            step = logged_step(trainer)
            for logger in trainer.loggers:
                logger.log_metrics(out.logs, step=step)
        if out.stop:
            # Every rank: the outcome is rank 0's, broadcast (Lightning's loops do not
            # reduce should_stop across ranks; EarlyStopping reduces its own decision).
            trainer.should_stop = True
        return out.logs


def logged_step(trainer: Any) -> int:
    """The step Lightning writes the metrics of the current hook at (what
    ``self.log``'s values get: ``fit_loop.epoch_loop._batches_that_stepped``, which a
    training batch adds its own step to after its hooks); ``trainer.global_step`` where
    a Lightning has no such counter."""
    count = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None),
                    "_batches_that_stepped", None)
    return count if isinstance(count, int) and not isinstance(count, bool) \
        else int(trainer.global_step)
