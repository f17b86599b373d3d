"""What the framework callbacks share: when to measure, the logged names, the stop rule.

Each callback owns a :class:`Schedule`: measure every ``every_n_steps`` optimizer steps
(in memory, no checkpoint needed) and/or whenever the framework saves a checkpoint
(``on_save``), at most once per step. A measurement's indicators are logged as
``<prefix><indicator>`` (``spectrum/tensors.max_kappa``), plus
``<prefix>fail_on_violations`` (their count) when ``fail_on`` conditions are set; a
violation stops the training (each framework's own flag) and is logged as a warning on
the ``spectrum_cli.integrations`` logger.

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
from typing import Any

from spectrum_cli.core.errors import UsageError
from spectrum_cli.integrations.monitor import NothingMatchedError, SpectrumMonitor

log = logging.getLogger("spectrum_cli.integrations")


def missing_extra(package: str, extra: str) -> ImportError:
    """The ImportError raised when a framework integration's package is not installed."""
    return ImportError(f"this integration needs {package}: "
                       f"pip install 'spectrum-cli[{extra}]'")


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
    ``stopped``: the measurement that stopped the training (None while none did)."""

    def __init__(self, monitor: Any, settings: dict[str, Any], every_n_steps: int | None,
                 on_save: bool, prefix: str) -> None:
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
        self.monitor = monitor if monitor is not None else SpectrumMonitor(**settings)
        self.every_n_steps, self.on_save, self.prefix = every_n_steps, on_save, prefix
        self.last: Any = None
        self.stopped: Any = None
        self.tried: int | None = None  # the step of the latest measurement, failed or not
        self.checked = False

    def check(self, model: Any) -> None:
        """Before the training: the selection must name some matrix of ``model`` (else a
        :class:`~spectrum_cli.integrations.monitor.NothingMatchedError`). Once."""
        if not self.checked and model is not None:
            self.monitor.check(model)
            self.checked = True

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
                batch: Any = None) -> tuple[Any, dict[str, float]]:
        """Measure; returns the measurement and the values to log under the prefix, or
        (None, {}) when the measurement failed (logged; the training goes on)."""
        self.tried = step
        try:
            m = self.monitor.measure(model, step,
                                     optimizer=optimizer if self.wants_operators else None,
                                     batch=batch)
        except NothingMatchedError:
            raise  # the user's selection: raised by check() already, before the training
        except Exception as exc:  # noqa: BLE001 - never into the training loop
            log.warning("spectrum: step %s: not measured (%s: %s); the training goes on",
                        step, type(exc).__name__, exc, exc_info=True)
            return None, {}
        self.last = m
        for warning in m.warnings:  # a matrix that could not be measured, say
            log.warning("spectrum: step %s: %s", step, warning)
        logs = {f"{self.prefix}{k}": float(v) for k, v in m.indicators.items()}
        if self.monitor.fail_on:
            logs[f"{self.prefix}fail_on_violations"] = float(len(m.violations))
        if m.failed and self.stopped is None:
            self.stopped = m
        if m.failed:
            log.warning("%s; stopping the training", m.message())
        return m, logs
