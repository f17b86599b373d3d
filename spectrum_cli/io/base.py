"""The reader protocol: list tensors cheaply, then read them one at a time.

A :class:`TensorSource` never holds more than the tensor being read: ``entries()`` comes
from headers (safetensors, npy) or from a memory-mapped ``torch.load``; ``read()`` returns
one float64 copy. That keeps peak memory near one tensor, whatever the checkpoint's size.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

FLOAT_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}
)


@dataclass(frozen=True)
class TensorInfo:
    """Name (dotted path), shape and stored dtype of one tensor; ``skip`` says why not
    to analyse it even if it is a floating matrix (optimizer state, say)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    skip: str | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class LoadPolicy:
    """How far a pickle-based checkpoint is trusted. Set only from the command line:
    configuration files and environment variables cannot widen it."""

    allow_globals: tuple[str, ...] = ()
    trust_checkpoint: bool = False
    weights_key: str | None = None


class TensorSource(Protocol):
    path: str
    format: str
    files: tuple[str, ...]
    notes: list[str]

    def entries(self) -> Iterator[TensorInfo]: ...

    def read(self, name: str) -> np.ndarray:
        """The tensor's values as a new float64 numpy array (exact upcast)."""
        ...

    def close(self) -> None: ...


@dataclass
class SourceBase:
    """Shared bookkeeping for readers."""

    path: str
    format: str
    files: tuple[str, ...]
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:  # pragma: no cover - trivial default
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sha256_files(paths: tuple[str, ...]) -> str:
    """One SHA-256 over the files' bytes, in the given order (1 MiB reads)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def total_size(paths: tuple[str, ...]) -> int:
    return sum(os.path.getsize(p) for p in paths)
