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
    backend: str = "auto"
    device: str = "cpu"
    dtype: str = "float64"
    top_k: int = 2
    seed: int = 0

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
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("float64", "float32"):
            raise UsageError(f"dtype: expected 'float64' or 'float32', got {self.dtype!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise UsageError(f"top_k: expected a positive integer, got {self.top_k!r}")

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


#: ``--backend auto``: dense (exact, every metric) while the matrix has at most this
#: many entries (512 MiB in float64) and its smaller side at most AUTO_DENSE_MAX_DIM;
#: beyond, lanczos (bounds for σ_max and σ_min, an SLQ estimate of the entropy), or on
#: a GPU randomized-svd (lanczos runs on the CPU only).
AUTO_DENSE_MAX_ENTRIES = 2**26
AUTO_DENSE_MAX_DIM = 8192
AUTO_RULE = (f"dense if m*n <= {AUTO_DENSE_MAX_ENTRIES} and min(m, n) <= {AUTO_DENSE_MAX_DIM},"
             " else lanczos (randomized-svd on --device cuda)")


def choose_backend(shape: tuple[int, int], options: AnalyzeOptions) -> str:
    """The backend ``options.backend`` names, or the :data:`AUTO_RULE` choice."""
    if options.backend != "auto":
        return options.backend
    m, n = shape
    if m * n <= AUTO_DENSE_MAX_ENTRIES and min(m, n) <= AUTO_DENSE_MAX_DIM:
        return "dense"
    return "randomized-svd" if options.device == "cuda" else "lanczos"


def _default_backends(name: str) -> Any:
    from spectrum_cli.plugins import get_backend

    return get_backend(name)


def analyze_source(
    source: Any,
    source_info: SourceInfo,
    options: AnalyzeOptions,
    backends: Callable[[str], Any] = _default_backends,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> AnalysisResult:
    """Analyse every selected matrix of ``source``; per-tensor failures are recorded.

    ``backends`` maps a backend name to a backend object (the entry-point registry by
    default); :func:`choose_backend` picks the name per tensor.
    """
    from spectrum_cli.core.measure import analyze_matrix

    t0 = time.perf_counter()
    if options.backend != "auto":
        backends(options.backend)  # an unknown or unavailable backend fails here, once
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
            backend = backends(choose_backend(p.matrix_shape, options))
            a = np.asarray(source.read(p.name), dtype=np.float64).reshape(p.matrix_shape)
            tensors.append(analyze_matrix(p, a, options, backend))
        except (SpectrumError, np.linalg.LinAlgError, MemoryError, NotImplementedError) as exc:
            errors.append(TensorError(p.name, str(exc) or type(exc).__name__))
        finally:
            a = None
    if on_progress:
        on_progress(len(planned), len(planned), "")
    settings = options.as_dict()
    if options.backend == "auto":
        settings["auto_rule"] = AUTO_RULE
    return AnalysisResult(source=source_info, settings=settings, tensors=tensors,
                          skipped=skipped, errors=errors, time_s=time.perf_counter() - t0)


def count_by_reason(skipped: Iterable[SkippedTensor]) -> dict[str, int]:
    """How many tensors were skipped for each reason (for summaries)."""
    out: dict[str, int] = {}
    for s in skipped:
        out[s.reason] = out.get(s.reason, 0) + 1
    return out
