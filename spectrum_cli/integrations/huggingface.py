"""``SpectrumCallback`` for the Hugging Face ``transformers.Trainer``
(``pip install 'spectrum-cli[hf]'``).

>>> trainer = Trainer(model=model, args=args, train_dataset=train)      # doctest: +SKIP
>>> spectrum = SpectrumCallback.attach(trainer, every_n_steps=100,
...                                    fail_on=["kappa>1e4"], include=["*.attn.*"])
>>> trainer.train()

When: at every step on which the trainer is about to save a checkpoint (measured in
``on_step_end``, before the save, so the values are in that checkpoint's
``trainer_state.json``; a save decided later, after an evaluation say, is measured in
``on_save``) and, with ``every_n_steps``, every N optimizer steps without any checkpoint.
What: the indicators of :class:`~spectrum_cli.integrations.monitor.SpectrumMonitor`
(the keyword settings go to it) under ``spectrum/<indicator>``.

Where the values go: through ``Trainer.log``, the trainer's own path for metrics, so
they land in ``state.log_history`` (hence every later ``trainer_state.json``) and reach
every reporting callback (``report_to``: TensorBoard, W&B, MLflow, ...), exactly as the
training loss does. A ``TrainerCallback`` is not handed its trainer, so bind it:
:meth:`SpectrumCallback.attach` (creates, binds, adds) or ``callback.bind(trainer)``
after ``Trainer(callbacks=[callback])``. Unbound, the values still go to
``state.log_history`` (and ``trainer_state.json``) but to no reporting integration, and
the callback warns once. The values are logged as an entry of their own, and the
trainer's own logging is left as it was: its ``loss`` entries are at the same steps with
the same values as without the callback (``Trainer.log`` makes the callback handler clear
``control.should_log``, which the callback puts back, so a ``loss`` due at this step is
still logged).

Before the training (:meth:`SpectrumCallback.attach`, :meth:`bind` and
``on_train_begin``): ``include``/``exclude`` that select no matrix of the model raise
:class:`~spectrum_cli.integrations.monitor.NothingMatchedError` naming the tensors there
are. During it nothing raises into the training loop: a failed measurement is logged and
skipped (:mod:`spectrum_cli.integrations.common`).

``fail_on``: a violation sets ``control.should_training_stop`` (the trainer stops after
this step, saving as it was going to), logs the violations as a warning on the
``spectrum_cli.integrations`` logger and keeps the measurement in ``callback.stopped``.

Data parallelism (``torchrun``/``accelerate launch``: DDP, FSDP): every rank runs the
callback; the measurement is one for the whole group (FSDP2's shards gathered by every
rank, measured on rank 0, :mod:`spectrum_cli.integrations.distributed`), rank 0 alone
logs the values (``trainer_state.json`` is rank 0's too), and every rank sets
``control.should_training_stop`` at the same step (the Trainer does not synchronize it).

Operator indicators: ``loss`` (``"mse"``, ``"cross_entropy"`` or a callable
``(outputs, targets) -> scalar``) and ``batch``, a held-out ``(inputs, targets)`` pair
on which ``model(inputs)`` runs (the trainer does not hand its batches to callbacks);
the optimizer is the trainer's. Their cost is described in
:mod:`spectrum_cli.integrations.operators`.

Live balancing (``balance="tempbalance"`` or a dict of
:class:`~spectrum_cli.integrations.balancing.TempBalance`'s options; off by default):
each measurement sets TempBalance's per-layer learning-rate factors, logged as
``spectrum/lr_factor/<module>``; every optimizer step after it runs each tuned layer at
factor x the scheduler's learning rate. The trainer's default optimizer has one group
for all the weights, so pass one with a group per layer, e.g.
``Trainer(..., optimizers=(torch.optim.AdamW(TempBalance.param_groups(model, 5e-5)),
None))`` (the trainer adds its scheduler); another is refused with a ``ValueError``
when the training begins (:mod:`spectrum_cli.integrations.balancing`).
"""

from __future__ import annotations

from typing import Any

from spectrum_cli.core.errors import UsageError
from spectrum_cli.integrations.common import Schedule, Scheduled, log, missing_extra

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - exercised only without the extra
    raise missing_extra("transformers", "hf") from None

__all__ = ["SpectrumCallback"]


class SpectrumCallback(Scheduled, TrainerCallback):
    """Measure the model's weight spectra during ``Trainer.train()``; see the module.

    ``trainer``: the trainer to log through (or :meth:`bind` it later);
    ``every_n_steps``: also measure every N optimizer steps (None: only at saves);
    ``on_save``: measure at the trainer's checkpoint saves; ``monitor``: a ready
    :class:`~spectrum_cli.integrations.monitor.SpectrumMonitor`, else ``settings`` build
    one (``include``, ``exclude``, ``indicators``, ``fail_on``, ``loss``, ``batch``, ...);
    ``prefix``: of the logged names; ``balance``: apply TempBalance's learning-rate
    factors at each measurement (None: off; see the module)."""

    def __init__(self, trainer: Any = None, *, every_n_steps: int | None = None,
                 on_save: bool = True, monitor: Any = None, prefix: str = "spectrum/",
                 balance: Any = None, **settings: Any) -> None:
        self.schedule = Schedule(monitor, settings, every_n_steps, on_save, prefix,
                                 balance)
        if self.schedule.wants_operators and self.schedule.monitor.batch is None:
            raise UsageError("operator indicators (loss=...) need a held-out batch=(inputs, "
                             "targets): the Trainer does not hand its batches to callbacks")
        self.trainer = None
        self._warned_unbound = False
        if trainer is not None:
            self.bind(trainer)

    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> "SpectrumCallback":
        """A callback bound to ``trainer`` and added to its callbacks."""
        callback = cls(trainer, **kwargs)
        trainer.add_callback(callback)
        return callback

    def bind(self, trainer: Any) -> "SpectrumCallback":
        """Log through ``trainer`` (its ``log``: history and reporting callbacks). Checks
        that the selection names some matrix of ``trainer.model``."""
        self.schedule.check(getattr(trainer, "model", None))
        self.trainer = trainer
        return self

    # -- the trainer's events ----------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.schedule.check(kwargs.get("model"))
        self.schedule.attach(kwargs.get("model"), kwargs.get("optimizer"))
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        step = state.global_step
        s = self.schedule
        if s.every(step) or (s.on_save and control.should_save and not s.measured(step)):
            self._measure(state, control, kwargs)
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # save_strategy="epoch" decides here, after on_step_end and before the save.
        s = self.schedule
        if s.on_save and control.should_save and not s.measured(state.global_step):
            self._measure(state, control, kwargs)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # A save decided after an evaluation (save_strategy="best") or a final save:
        # measured now, so the values reach the log (and the next trainer_state.json).
        s = self.schedule
        if s.on_save and not s.measured(state.global_step):
            self._measure(state, control, kwargs)
        return control

    def _measure(self, state: Any, control: Any, kwargs: dict[str, Any]) -> None:
        model = kwargs.get("model")
        if model is None:
            log.warning("spectrum: the trainer passed no model to the callback; "
                        "nothing measured at step %s", state.global_step)
            return
        out = self.schedule.measure(model, state.global_step, kwargs.get("optimizer"))
        if out.measurement is None:
            return  # failed and logged; the training goes on
        if out.stop:
            control.should_training_stop = True  # on every rank: the outcome is rank 0's
        if not out.writes:
            return  # under torch.distributed rank 0 alone logs the values
        logs = out.logs
        if self.trainer is not None:
            # Trainer.log ends in the handler's on_log, which clears control.should_log:
            # put it back, or the loss the trainer logs after on_step_end (same step)
            # would be lost.
            should_log = control.should_log
            self.trainer.log(dict(logs))
            control.should_log = should_log
            self.trainer.control.should_log = should_log
        else:
            if not self._warned_unbound:
                log.warning("spectrum: SpectrumCallback is not bound to its Trainer "
                            "(SpectrumCallback.attach(trainer) or callback.bind(trainer)):"
                            " the values go to state.log_history only, not to the "
                            "reporting integrations (TensorBoard, W&B)")
                self._warned_unbound = True
            state.log_history.append({**logs, "step": state.global_step})
