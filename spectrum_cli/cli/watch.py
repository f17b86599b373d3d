"""``spectrum watch``: follow a training run's checkpoint folder (being written)."""

from __future__ import annotations

import typer


def watch() -> None:
    """Follow a run's checkpoints as they appear (not available yet)."""
    raise typer.Exit(2)
