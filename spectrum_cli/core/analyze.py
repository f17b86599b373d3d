"""The per-tensor pipeline: plan which tensors are matrices, read each once, measure it.

Input is any object with the reader protocol of :mod:`spectrum_cli.io.base` (``entries``
and ``read``); output is an :class:`~spectrum_cli.core.results.AnalysisResult`. One tensor
is in memory at a time (its float64 copy), so peak memory tracks the largest tensor.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import numpy as np

from spectrum_cli.core import metrics as M
from spectrum_cli.core.errors import SpectrumError, UsageError
from spectrum_cli.core.results import (
    AnalysisResult, SkippedTensor, SourceInfo, TensorError, TensorResult,
)
from spectrum_cli.core.selection import Selector

CONV_MODES = ("reshape", "skip")
SQUARE_MODES = ("auto", "all", "none")
#: ``--square auto`` computes eigenvalues of square matrices up to this size: LAPACK
#: ``geev`` costs about 4x an SVD of the same matrix (25n³ vs ~6n³ flops, Golub & Van
#: Loan §7.5.6), and a layer's eigenvalues mean something only when its output space
#: is its input space.
DEFAULT_SQUARE_MAX_DIM = 256


@dataclass(frozen=True)
class AnalyzeOptions:
    """Settings of one analysis; recorded verbatim in every report."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    conv: str = "reshape"
    square: str = "auto"
    square_max_dim: int = DEFAULT_SQUARE_MAX_DIM
    effective_rank_tau: float = M.DEFAULT_EFFECTIVE_RANK_TAU
    svd_route: str = "auto"

    def __post_init__(self) -> None:
        if self.conv not in CONV_MODES:
            raise UsageError(f"conv: expected one of {CONV_MODES}, got {self.conv!r}")
        if self.square not in SQUARE_MODES:
            raise UsageError(f"square: expected one of {SQUARE_MODES}, got {self.square!r}")
        if not (isinstance(self.square_max_dim, int) and self.square_max_dim >= 1):
            raise UsageError(f"square_max_dim: expected a positive integer, "
                             f"got {self.square_max_dim!r}")
        if not 0.0 < self.effective_rank_tau < 1.0:
            raise UsageError(f"effective_rank_tau: expected a number in (0, 1), "
                             f"got {self.effective_rank_tau!r}")
        from spectrum_backends.dense import ROUTES

        if self.svd_route not in ROUTES:
            raise UsageError(f"svd_route: expected one of {ROUTES}, got {self.svd_route!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d


@dataclass(frozen=True)
class _Planned:
    name: str
    shape: tuple[int, ...]
    dtype: str
    matrix_shape: tuple[int, int]
    kind: str


def _plan(info, selector: Selector, conv: str) -> _Planned | str:
    """The matrix to analyse, or the reason to skip the tensor."""
    if info.skip:
        return info.skip
    if not selector(info.name):
        return "not selected (--include/--exclude)"
    if not info.is_float:
        return f"{info.dtype} (not floating point)"
    nd = len(info.shape)
    if nd < 2:
        return f"{nd}-D"
    if 0 in info.shape:
        return "empty"
    if nd == 2:
        return _Planned(info.name, info.shape, info.dtype, info.shape, "matrix")
    if conv == "skip":
        return f"{nd}-D (--conv skip)"
    rows = info.shape[0]
    return _Planned(info.name, info.shape, info.dtype, (rows, math.prod(info.shape[1:])),
                    "conv_reshaped")


def analyze_matrix(planned: _Planned, a: np.ndarray, options: AnalyzeOptions,
                   backend: Any) -> TensorResult:
    """All metrics of one float64 matrix ``a`` (already reshaped)."""
    t0 = time.perf_counter()
    base = dict(name=planned.name, shape=tuple(planned.shape),
                matrix_shape=tuple(planned.matrix_shape), dtype=planned.dtype,
                kind=planned.kind)
    # Any NaN/Inf makes the sum non-finite; only then count (a finite sum that
    # overflowed is caught by the count being zero).
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(a.sum())
    if not math.isfinite(total) and not np.isfinite(a).all():
        n_nan = int(np.count_nonzero(np.isnan(a)))
        n_inf = int(np.count_nonzero(np.isinf(a)))
        return TensorResult(**base, status="nonfinite",
                            metrics={"nonfinite_count": n_nan + n_inf},
                            notes=(f"{n_nan} NaN and {n_inf} Inf entries: spectra not computed",),
                            time_s=time.perf_counter() - t0)
    sv = backend.singular_values(a, route=options.svd_route)
    metrics = M.singular_value_metrics(sv.values, a.shape, options.effective_rank_tau)
    metrics.update(M.entry_metrics(a))
    eig = None
    notes = list(sv.notes)
    m, n = a.shape
    if m == n and (options.square == "all" or
                             (options.square == "auto" and m <= options.square_max_dim)):
        eig = backend.eigenvalues(a)
        metrics.update(M.eigenvalue_metrics(eig.values))
    metrics["nonfinite_count"] = 0
    return TensorResult(**base, status="ok", metrics=metrics, singular_values=sv,
                        eigenvalues=eig, notes=tuple(notes), time_s=time.perf_counter() - t0)


def analyze_source(
    source: Any,
    source_info: SourceInfo,
    options: AnalyzeOptions,
    backend: Any = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> AnalysisResult:
    """Analyse every selected matrix of ``source``; per-tensor failures are recorded."""
    if backend is None:
        from spectrum_backends.dense import DenseBackend

        backend = DenseBackend()
    t0 = time.perf_counter()
    selector = Selector(options.include, options.exclude)
    planned: list[_Planned] = []
    skipped: list[SkippedTensor] = []
    for info in source.entries():
        p = _plan(info, selector, options.conv)
        if isinstance(p, str):
            skipped.append(SkippedTensor(info.name, tuple(info.shape), info.dtype, p))
        else:
            planned.append(p)
    tensors: list[TensorResult] = []
    errors: list[TensorError] = []
    for i, p in enumerate(planned):
        if on_progress:
            on_progress(i, len(planned), p.name)
        try:
            a = np.asarray(source.read(p.name), dtype=np.float64).reshape(p.matrix_shape)
            tensors.append(analyze_matrix(p, a, options, backend))
        except (SpectrumError, np.linalg.LinAlgError, MemoryError) as exc:
            errors.append(TensorError(p.name, str(exc) or type(exc).__name__))
        finally:
            a = None
    if on_progress:
        on_progress(len(planned), len(planned), "")
    return AnalysisResult(source=source_info, settings=options.as_dict(), tensors=tensors,
                          skipped=skipped, errors=errors, time_s=time.perf_counter() - t0)


def count_by_reason(skipped: Iterable[SkippedTensor]) -> dict[str, int]:
    """How many tensors were skipped for each reason (for summaries)."""
    out: dict[str, int] = {}
    for s in skipped:
        out[s.reason] = out.get(s.reason, 0) + 1
    return out
