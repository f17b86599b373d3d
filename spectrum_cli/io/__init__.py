"""Checkpoint readers. :func:`open_source` picks one by content, not only by extension."""

from spectrum_cli.io.base import LoadPolicy, TensorInfo, TensorSource
from spectrum_cli.io.detect import open_source

__all__ = ["LoadPolicy", "TensorInfo", "TensorSource", "open_source"]
