"""Training-loop integrations: watch a run's weights while it trains.

- :class:`spectrum_cli.integrations.monitor.SpectrumMonitor`: framework-free; measures
  in-memory weights (a module or a state dict) and returns the indicators and the
  ``fail_on`` violations (:class:`~spectrum_cli.integrations.monitor.Measurement`).
- ``spectrum_cli.integrations.huggingface.SpectrumCallback``: a
  ``transformers.TrainerCallback`` (``pip install 'spectrum-cli[hf]'``).
- ``spectrum_cli.integrations.lightning.SpectrumCallback``: a
  ``lightning.pytorch.Callback`` (``pip install 'spectrum-cli[lightning]'``).
- ``spectrum_cli.integrations.loop.SpectrumCallback``: for a hand-written PyTorch loop
  (``callback.after_step(model, step)`` returns whether to stop).

Under ``torch.distributed`` (DDP, FSDP2) the callbacks measure once for the whole group
(:mod:`spectrum_cli.integrations.distributed`): rank 0 measures and logs, every rank
stops at the same step.

Importing this package imports neither torch nor any framework: the monitor's names are
loaded on first use, each framework only by its own module.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Measurement", "SpectrumMonitor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from spectrum_cli.integrations import monitor

        return getattr(monitor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
