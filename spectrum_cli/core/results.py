"""Typed, immutable results. The JSON document and the HDF5 report serialize these.

Every number says how it was obtained: ``accuracy`` is ``"exact"`` (a dense
factorization, correct to rounding, with ``error_estimate`` its absolute error scale),
``"bound"`` or ``"estimate"`` (later backends), and ``route`` names the algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np



@dataclass(frozen=True)
class SingularValues:
    """Singular values in descending order, and how they were computed.

    ``which`` is ``"all"`` (the full spectrum), ``"largest"`` or ``"smallest"`` (the k
    extreme values, still in descending order). ``error_estimate`` is an absolute error
    scale for every value (for LAPACK ``gesdd``: ``max(m, n) * eps * sigma_max``; for the
    Gram route the first-order perturbation bound of Demmel, *Applied Numerical Linear
    Algebra* (1997), Thm 5.5, carried through the square root at the smallest value).
    ``error_bounds``, when given, bound each value's error individually (Lanczos and
    randomized residual bounds). ``n_matvec`` counts products with the matrix or its
    transpose (None for dense factorizations).
    """

    values: np.ndarray
    backend: str
    route: str
    accuracy: str
    error_estimate: float
    time_s: float
    notes: tuple[str, ...] = ()
    which: str = "all"
    converged: bool = True
    n_matvec: int | None = None
    error_bounds: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Eigenvalues:
    """Eigenvalues, sorted by decreasing modulus (``which="all"``) or the k extreme
    ones (``"largest"``/``"smallest"``, by algebraic value for symmetric operators)."""

    values: np.ndarray
    backend: str
    route: str
    accuracy: str
    time_s: float
    which: str = "all"
    converged: bool = True
    n_matvec: int | None = None
    error_bounds: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate: ``value`` ± ``error_bar`` (half-width of a ``confidence``
    interval), e.g. a trace function by stochastic Lanczos quadrature."""

    value: float
    error_bar: float
    confidence: float
    method: str
    backend: str
    time_s: float
    n_matvec: int
    converged: bool = True
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorResult:
    """The analysis of one matrix (a 2-D tensor, or a reshaped k-D kernel).

    ``status`` is ``"ok"`` or ``"nonfinite"`` (NaN/Inf entries: the spectra are not
    computed and ``metrics`` holds only the counts). ``metrics`` maps the contract names
    of :data:`spectrum_cli.core.metrics.METRICS` to numbers; ``None`` means undefined for
    this matrix (the spectral entropy of a zero matrix, say), ``inf`` means infinite.
    """

    name: str
    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    dtype: str
    kind: str
    status: str
    metrics: dict[str, Any]
    singular_values: SingularValues | None = None
    eigenvalues: Eigenvalues | None = None
    notes: tuple[str, ...] = ()
    time_s: float = 0.0
    #: metric -> {"accuracy": "estimate"|"bound", "error_bar": ..., "method": ...} for
    #: every metric that is not exact to rounding.
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: metric -> why the backend that ran could not compute it.
    unavailable: dict[str, str] = field(default_factory=dict)
    #: True when an iterative method stopped before meeting its tolerance.
    converged: bool = True
    #: The smallest singular values, when a backend of extremes computed them separately.
    smallest: SingularValues | None = None
    #: The non-normal analysis of a square matrix (spectrum_cli.core.nonnormal.NonNormal).
    nonnormal: Any = None


@dataclass(frozen=True)
class SkippedTensor:
    """A tensor that was not analysed, and why (1-D, integer, excluded, ...)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    reason: str


@dataclass(frozen=True)
class TensorError:
    """A tensor that could not be read or analysed; the run went on without it."""

    name: str
    message: str


@dataclass(frozen=True)
class SourceInfo:
    """What was read: path, detected format, size and content hash of every file."""

    path: str
    format: str
    files: tuple[str, ...]
    size_bytes: int
    sha256: str | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnalysisResult:
    """Everything one ``analyze`` run produced."""

    source: SourceInfo
    settings: dict[str, Any]
    tensors: list[TensorResult] = field(default_factory=list)
    skipped: list[SkippedTensor] = field(default_factory=list)
    errors: list[TensorError] = field(default_factory=list)
    time_s: float = 0.0
