"""``spectrum esd``: the empirical spectral density of one tensor (being written)."""

from __future__ import annotations

import typer


def esd() -> None:
    """The ESD of one tensor with its power-law fit (not available yet)."""
    raise typer.Exit(2)
