"""What the framework callbacks share: when to measure, the logged names, the stop rule.

Each callback owns a :class:`Schedule`: measure every ``every_n_steps`` optimizer steps
(in memory, no checkpoint needed) and/or whenever the framework saves a checkpoint
(``on_save``), at most once per step. A measurement's indicators are logged as
``<prefix><indicator>`` (``spectrum/tensors.max_kappa``), plus
``<prefix>fail_on_violations`` (their count) when ``fail_on`` conditions are set; a
violation stops the training (each framework's own flag) and is logged as a warning on
the ``spectrum_cli.integrations`` logger. With ``balance`` (off by default) each
measurement also sets TempBalance's per-layer learning-rate factors
(:mod:`spectrum_cli.integrations.balancing`), logged as ``<prefix>lr_factor/<module>``;
under ``torch.distributed`` rank 0 computes them and broadcasts them with the outcome,
so every rank applies the same.

What the user got wrong raises before the training starts (:meth:`Schedule.check`: a
selection of no matrix is a
:class:`~spectrum_cli.integrations.monitor.NothingMatchedError` naming the tensors that
exist). Nothing else raises into the training loop: a measurement that fails is logged
(with its traceback) and skipped, and the training goes on; what the monitor could not
compute (NaN/Inf matrices, the operator indicators) is logged as a warning and the rest
is logged as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from spectrum_cli.core.errors import UsageError
from spectrum_cli.integrations.balancing import balancer
from spectrum_cli.integrations.distributed import (World, broadcast, full_weights, is_fsdp1,
                                                   is_sharded, unwrap, world)
from spectrum_cli.integrations.monitor import NothingMatchedError, SpectrumMonitor

log = logging.getLogger("spectrum_cli.integrations")


def missing_extra(package: str, extra: str) -> ImportError:
    """The ImportError raised when a framework integration's package is not installed."""
    return ImportError(f"this integration needs {package}: "
                       f"pip install 'spectrum-cli[{extra}]'")


@dataclass(frozen=True)
class Outcome:
    """What one scheduled measurement gave this process.

    ``measurement``: the :class:`~spectrum_cli.integrations.monitor.Measurement`, None
    when it failed (logged); under ``torch.distributed`` every rank gets rank 0's, the
    ``document`` and ``singular_values`` only on rank 0. ``logs``: the values to log
    (the prefixed names). ``writes``: whether this process writes them (rank 0, or not
    distributed): each value is logged once. ``balance``: the learning-rate factors
    applied (:class:`~spectrum_cli.integrations.balancing.Balance`), None without
    ``balance`` or when they could not be computed."""

    measurement: Any
    logs: dict[str, float]
    writes: bool
    balance: Any = None

    @property
    def stop(self) -> bool:
        """Whether a ``fail_on`` violation stops the training (the same on every rank)."""
        return self.measurement is not None and self.measurement.failed


class Scheduled:
    """What both framework callbacks expose of their :class:`Schedule`."""

    schedule: "Schedule"

    @property
    def last(self) -> Any:
        """The latest :class:`~spectrum_cli.integrations.monitor.Measurement`."""
        return self.schedule.last

    @property
    def stopped(self) -> Any:
        """The measurement whose ``fail_on`` violation stopped the training, or None."""
        return self.schedule.stopped


class Schedule:
    """The monitor of one callback, when it measures, and what came of it.

    ``monitor``: a :class:`~spectrum_cli.integrations.monitor.SpectrumMonitor`, or None
    to build one from ``settings`` (not both). ``last``: the latest measurement;
    ``stopped``: the measurement that stopped the training (None while none did).
    ``balance``: the callbacks' option (:func:`~spectrum_cli.integrations.balancing.
    balancer`); ``balancer``: what it gave (None: off)."""

    def __init__(self, monitor: Any, settings: dict[str, Any], every_n_steps: int | None,
                 on_save: bool, prefix: str, balance: Any = None) -> None:
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(
                every_n_steps, int) or every_n_steps < 1):
            raise UsageError(f"every_n_steps: expected a positive integer or None, got "
                             f"{every_n_steps!r}")
        if not isinstance(on_save, bool):
            raise UsageError(f"on_save: expected True or False, got {on_save!r}")
        if every_n_steps is None and not on_save:
            raise UsageError("every_n_steps=None and on_save=False: the callback would "
                             "never measure")
        if not isinstance(prefix, str):
            raise UsageError(f"prefix: expected a string, got {prefix!r}")
        if monitor is not None and settings:
            raise UsageError(f"pass either a monitor or its settings, not both (got "
                             f"{', '.join(sorted(settings))} besides the monitor)")
        self.balancer = balancer(balance)
        self.monitor = monitor if monitor is not None else SpectrumMonitor(**settings)
        self.every_n_steps, self.on_save, self.prefix = every_n_steps, on_save, prefix
        self.last: Any = None
        self.stopped: Any = None
        self.tried: int | None = None  # the step of the latest measurement, failed or not
        self.checked = False
        self._warned_sharded = False

    def check(self, model: Any) -> None:
        """Before the training: the selection must name some matrix of ``model`` (else a
        :class:`~spectrum_cli.integrations.monitor.NothingMatchedError`). Once."""
        if not self.checked and model is not None:
            self.monitor.check(model)
            self.checked = True

    def attach(self, model: Any, optimizer: Any) -> None:
        """Before the training, with ``balance``: balance ``optimizer``'s groups (a
        ``ValueError`` when they are not one per layer). Nothing without ``balance``."""
        if self.balancer is None:
            return
        if optimizer is None or model is None:
            raise UsageError("balance: the learning-rate factors need the model and its "
                             "optimizer, and the callback got none")
        self.balancer.attach(model, optimizer)

    def every(self, step: int) -> bool:
        """Whether ``step`` is one of the every-N steps and not measured yet."""
        return (self.every_n_steps is not None and step > 0
                and step % self.every_n_steps == 0 and not self.measured(step))

    def measured(self, step: int) -> bool:
        return self.tried == step

    @property
    def wants_operators(self) -> bool:
        return self.monitor.loss is not None

    def measure(self, model: Any, step: int, optimizer: Any = None,
                batch: Any = None) -> Outcome:
        """Measure ``model`` at ``step``: here, or under ``torch.distributed`` once for
        the whole group (every rank must call this at the same steps; see
        :mod:`~spectrum_cli.integrations.distributed`). A measurement that failed is
        logged and its outcome has no measurement; the training goes on."""
        self.tried = step
        group = world()
        if group is None:
            m = self._measure_here(model, step, optimizer, batch)
            balance = self._plan(m)
        else:
            m, balance = self._measure_group(group, model, step, optimizer, batch)
        if m is None:
            return Outcome(None, {}, group is None or group.writes)
        self.last = m
        logs = {f"{self.prefix}{k}": float(v) for k, v in m.indicators.items()}
        if self.monitor.fail_on:
            logs[f"{self.prefix}fail_on_violations"] = float(len(m.violations))
        if balance is not None:
            self.balancer.apply(balance)  # every rank, the same factors
            logs.update(balance.logs(self.prefix))
        if m.failed and self.stopped is None:
            self.stopped = m
        return Outcome(m, logs, group is None or group.writes, balance)

    def _plan(self, m: Any) -> Any:
        """The learning-rate factors of the measurement ``m`` (with its document), or
        None (no ``balance``, no measurement, or failed: logged; the factors in use
        stay)."""
        if self.balancer is None or m is None:
            return None
        try:
            balance = self.balancer.plan(m)
        except Exception as exc:  # noqa: BLE001 - never into the training loop
            log.warning("spectrum: step %s: learning-rate factors not computed (%s: %s); "
                        "the previous ones stay", m.step, type(exc).__name__, exc,
                        exc_info=True)
            return None
        for note in balance.notes:
            log.warning("spectrum: step %s: balance: %s", m.step, note)
        return balance

    def _measure_here(self, model: Any, step: int, optimizer: Any, batch: Any) -> Any:
        """The measurement of this process's weights, or None (failed, logged)."""
        try:
            m = self.monitor.measure(model, step,
                                     optimizer=optimizer if self.wants_operators else None,
                                     batch=batch)
        except NothingMatchedError:
            raise  # the user's selection: raised by check() already, before the training
        except Exception as exc:  # noqa: BLE001 - never into the training loop
            log.warning("spectrum: step %s: not measured (%s: %s); the training goes on",
                        step, type(exc).__name__, exc, exc_info=True)
            return None
        self._said(m)
        return m

    def _said(self, m: Any) -> None:
        for warning in m.warnings:  # a matrix that could not be measured, say
            log.warning("spectrum: step %s: %s", m.step, warning)
        if m.failed:
            log.warning("%s; stopping the training", m.message())

    def _measure_group(self, group: World, model: Any, step: int, optimizer: Any,
                       batch: Any) -> tuple[Any, Any]:
        """One measurement for the process group: the weights gathered by every rank,
        measured on rank 0, its outcome (with the learning-rate factors, which need the
        document) broadcast to every rank (in ``finally``: no rank is left waiting when
        rank 0's measurement fails). (None, None): failed (logged on rank 0)."""
        payload: Any = ("failed", None, None)
        local = None
        try:
            local = self._measure_rank(group, model, step, optimizer, batch)
            if local is not None:
                payload = ("measured", replace(local, document={}, singular_values={}),
                           self._plan(local))
        except NothingMatchedError as exc:
            payload = ("refused", str(exc), None)
            raise
        except Exception as exc:  # noqa: BLE001 - never into the training loop
            log.warning("spectrum: step %s: not measured on rank %s (%s: %s); the "
                        "training goes on", step, group.rank, type(exc).__name__, exc,
                        exc_info=True)
        finally:
            # Every rank arrives here once per measurement, rank 0 with its outcome.
            kind, value, balance = broadcast(payload, group.rank)
        if kind == "refused":
            raise NothingMatchedError(value)
        if kind != "measured":
            return None, None
        return (local if group.writes else value), balance

    def _measure_rank(self, group: World, model: Any, step: int, optimizer: Any,
                      batch: Any) -> Any:
        """This rank's part: every rank gathers the sharded weights, rank 0 measures
        (returns the measurement; the others None)."""
        module = unwrap(model)
        weights = module.state_dict() if hasattr(module, "state_dict") else module
        sharded = is_sharded(weights) or is_fsdp1(module)
        if sharded:
            weights = full_weights(weights, self.monitor.sources(weights), group.rank)
        if not group.writes:
            return None
        operators = self.wants_operators and optimizer is not None
        if operators and sharded:
            operators = False
            if not self._warned_sharded:
                self._warned_sharded = True
                log.warning("spectrum: operator indicators are not computed for sharded "
                            "(FSDP) parameters")
        m = self.monitor.measure(weights if sharded else module, step,
                                 optimizer=optimizer if operators else None, batch=batch)
        self._said(m)
        return m
