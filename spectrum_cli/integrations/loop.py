"""``SpectrumCallback`` for a hand-written PyTorch training loop, DDP and FSDP included.

>>> spectrum = SpectrumCallback(every_n_steps=1000, fail_on=["kappa>1e4"],  # doctest: +SKIP
...                             log=lambda values, step: writer.add_scalars("spectrum", values, step))
>>> for step, (x, y) in enumerate(loader, start=1):    # doctest: +SKIP
...     optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
...     if spectrum.after_step(model, step):   # True on every rank at the same step
...         break

When: :meth:`SpectrumCallback.after_step` measures every ``every_n_steps`` steps (step
counts from 1, as optimizer steps do) and returns at once otherwise; measuring is not
logging: what ``log`` receives is what was measured, when it was measured. What: the
indicators of :class:`~spectrum_cli.integrations.monitor.SpectrumMonitor` (the keyword
settings go to it), as ``{"spectrum/<indicator>": value}``; ``callback.last`` is the
latest :class:`~spectrum_cli.integrations.monitor.Measurement`.

Where the values go: to ``log(values, step)`` if given (TensorBoard's
``add_scalars``, ``wandb.log``, a list's ``append``...), else to the
``spectrum_cli.integrations`` logger at INFO level.

Under ``torch.distributed`` (DDP: pass the ``DistributedDataParallel`` model or its
``.module``; FSDP2: the ``fully_shard``-ed model) every rank must call
:meth:`~SpectrumCallback.after_step` with the same steps: the measurement is one for the
group (the shards gathered by every rank, measured on rank 0,
:mod:`spectrum_cli.integrations.distributed`), ``log`` is called on rank 0 only, and
every rank gets the same return value (stop or not) at the same step and the same
``callback.last.indicators``.

``fail_on``: a violation makes :meth:`~SpectrumCallback.after_step` return True (stop
the loop; it is the caller's loop), logs the violations as a warning and keeps the
measurement in ``callback.stopped``. Before the first measurement
``include``/``exclude`` that select no matrix raise
:class:`~spectrum_cli.integrations.monitor.NothingMatchedError`; after that nothing
raises into the loop: a measurement that fails is logged and skipped.

Live balancing (``balance="tempbalance"`` or a dict of
:class:`~spectrum_cli.integrations.balancing.TempBalance`'s options; off by default;
pass ``optimizer=`` to :meth:`~SpectrumCallback.after_step`): each measurement sets
TempBalance's per-layer learning-rate factors, given to ``log`` as
``spectrum/lr_factor/<module>``, and every ``optimizer.step()`` after it runs each
tuned layer at factor x the group's (scheduled) learning rate; the optimizer needs a
group per layer (:meth:`TempBalance.param_groups
<spectrum_cli.integrations.balancing.TempBalance.param_groups>`), else the first
:meth:`~SpectrumCallback.after_step` raises a ``ValueError``.

Cost: each measurement stops the loop for the time of one ``spectrum analyze`` of the
selected matrices (about 1 s for the 40 matrices of a 22.7M-parameter model on one
core); the overhead is that time over ``every_n_steps`` steps' time, so choose
``every_n_steps`` >= 100 x measurement time / step time for at most 1 %
(``bench/bench_callback_overhead.py`` measures both).
"""

from __future__ import annotations

from typing import Any, Callable

from spectrum_cli.core.errors import UsageError
from spectrum_cli.integrations.common import Schedule, Scheduled, log

__all__ = ["SpectrumCallback", "DEFAULT_EVERY_N_STEPS"]

#: The default cadence of :class:`SpectrumCallback` (``every_n_steps``).
DEFAULT_EVERY_N_STEPS = 1000


class SpectrumCallback(Scheduled):
    """Measure a model's weight spectra every N steps of a hand-written loop; see the
    module.

    ``every_n_steps``: measure after every N-th step (default
    :data:`DEFAULT_EVERY_N_STEPS`); ``log``: a callable ``(values, step) -> None`` given
    each measurement's values (rank 0 only), None: the ``spectrum_cli.integrations``
    logger; ``monitor``: a ready
    :class:`~spectrum_cli.integrations.monitor.SpectrumMonitor`, else ``settings`` build
    one (``include``, ``exclude``, ``indicators``, ``fail_on``, ``loss``, ``batch``,
    ...); ``prefix``: of the logged names; ``balance``: apply TempBalance's
    learning-rate factors at each measurement (None: off; see the module)."""

    def __init__(self, *, every_n_steps: int = DEFAULT_EVERY_N_STEPS,
                 log: Callable[[dict[str, float], int], Any] | None = None,
                 monitor: Any = None, prefix: str = "spectrum/", balance: Any = None,
                 **settings: Any) -> None:
        if every_n_steps is None:
            raise UsageError("every_n_steps: expected a positive integer, got None (a "
                             "hand-written loop has no checkpoint saves to measure at)")
        if log is not None and not callable(log):
            raise UsageError(f"log: expected a callable (values, step) -> None or None, "
                             f"got {log!r}")
        self.schedule = Schedule(monitor, settings, every_n_steps, False, prefix, balance)
        self.log = log

    def after_step(self, model: Any, step: int, *, optimizer: Any = None,
                   batch: Any = None) -> bool:
        """Call after each optimizer step ``step`` (1, 2, ...); measures when ``step`` is
        a multiple of ``every_n_steps``. Returns whether a ``fail_on`` violation asks
        to stop (the same on every rank). ``optimizer`` and ``batch`` (else the
        monitor's held-out batch) add the operator indicators when the monitor has a
        ``loss``; with ``balance`` the optimizer is needed at every call."""
        s = self.schedule
        s.check(model)  # once, before the first measurement (every rank)
        if s.balancer is not None:
            if optimizer is None:
                raise UsageError("balance: pass the optimizer, after_step(model, step, "
                                 "optimizer=optimizer)")
            s.attach(model, optimizer)  # once per optimizer (every rank)
        if not s.every(step):
            return False
        held_out = s.monitor.batch
        out = s.measure(model, step, optimizer,
                        held_out if held_out is not None else batch)
        if out.measurement is not None and out.writes:
            if self.log is not None:
                try:
                    self.log(dict(out.logs), step)
                except Exception as exc:  # noqa: BLE001 - rank 0 alone: never raise here
                    log.warning("spectrum: step %s: log(values, step) raised %s: %s; the "
                                "training goes on", step, type(exc).__name__, exc,
                                exc_info=True)
            else:
                log.info("spectrum: step %s: %s", step, ", ".join(
                    f"{k}={v:.6g}" for k, v in out.logs.items()))
        return out.stop
