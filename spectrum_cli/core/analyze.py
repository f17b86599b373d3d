"""The per-tensor pipeline: plan which tensors are matrices, read each once, measure it.

Input is any object with the reader protocol of :mod:`spectrum_cli.io.base` (``entries``
and ``read``); output is an :class:`~spectrum_cli.core.results.AnalysisResult`. One tensor
is in memory at a time (its float64 copy), so peak memory tracks the largest tensor.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from spectrum_cli.core import metrics as M
from spectrum_cli.core.backend import SVD_ROUTES, auto_takes_gram
from spectrum_cli.core.errors import SpectrumError, UsageError
from spectrum_cli.core.measure import (
    AUTO_DENSE_MAX_DIM,
    AUTO_DENSE_MAX_ENTRIES,
    analyze_matrix,
)
from spectrum_cli.core.results import (
    AnalysisResult,
    SkippedTensor,
    SourceInfo,
    TensorError,
    TensorResult,
)
from spectrum_cli.core.selection import Selector

CONV_MODES = ("reshape", "skip")
SQUARE_MODES = ("auto", "all", "recurrent", "none")
#: PyTorch recurrent weights: ``weight_hh_l{k}`` of ``nn.RNN``/``LSTM``/``GRU``
#: (``_reverse`` for bidirectional) and ``weight_hh`` of ``nn.RNNCell``/``LSTMCell``/
#: ``GRUCell``: the hidden-to-hidden maps, which act on their own output.
RECURRENT = re.compile(r"(^|\.)weight_hh(_l\d+(_reverse)?)?$")
#: Gate order of PyTorch's stacked hidden-hidden weights, by number of gates.
GATES = {4: ("i", "f", "g", "o"), 3: ("r", "z", "n")}
#: ``--square auto`` eigen-analyses the recurrent hidden-to-hidden weights (whole and
#: per gate), and other square matrices only up to this side (0: none). The eigenvalues,
#: κ(V), ‖A^k‖ and the Kreiss constant of a map describe the iteration x <- Ax, which a
#: recurrent weight performs on its own output every time step; a feed-forward square
#: layer (an attention projection, a residual MLP's square matrix) is applied once per
#: forward pass, and its powers mean nothing. The eigen-analysis also costs several
#: SVDs of the same matrix (the Schur form alone ~10n³ flops against ~4n³ for the
#: singular values, Golub & Van Loan §7.5.6 and §8.6.3).
DEFAULT_SQUARE_MAX_DIM = 0
#: A square matrix given alone is eigen-analysed under ``--square auto`` up to this side
#: (the Schur form, the power walk and the Kreiss search of a 1024x1024 matrix take seconds; a
#: stranger's file holding one huge matrix must not start hours of work by default:
#: ``--square all`` asks for it).
ALONE_MAX_DIM = 1024


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
    eps: tuple[float, ...] = ()
    eps_relative: bool = False
    power_max: int = 200
    randomize: bool = False
    farms: bool = False  # alpha_farms (core/esd_estimators.py): costly, when asked

    def __post_init__(self) -> None:
        if self.conv not in CONV_MODES:
            raise UsageError(f"conv: expected one of {CONV_MODES}, got {self.conv!r}")
        if self.square not in SQUARE_MODES:
            raise UsageError(f"square: expected one of {SQUARE_MODES}, got {self.square!r}")
        if not (isinstance(self.square_max_dim, int) and self.square_max_dim >= 0):
            raise UsageError(f"square_max_dim: expected an integer >= 0, "
                             f"got {self.square_max_dim!r}")
        if not 0.0 < self.effective_rank_tau < 1.0:
            raise UsageError(f"effective_rank_tau: expected a number in (0, 1), "
                             f"got {self.effective_rank_tau!r}")
        if self.svd_route not in SVD_ROUTES:
            raise UsageError(f"svd_route: expected one of {SVD_ROUTES}, got "
                             f"{self.svd_route!r}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("float64", "float32"):
            raise UsageError(f"dtype: expected 'float64' or 'float32', got {self.dtype!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise UsageError(f"top_k: expected a positive integer, got {self.top_k!r}")
        if not all(isinstance(e, (int, float)) and e > 0 for e in self.eps):
            raise UsageError(f"eps: expected positive numbers, got {list(self.eps)!r}")
        if not (isinstance(self.power_max, int) and self.power_max >= 1):
            raise UsageError(f"power_max: expected a positive integer, got {self.power_max!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["eps"] = list(self.eps)
        return d


@dataclass(frozen=True)
class _Planned:
    name: str
    shape: tuple[int, ...]
    dtype: str
    matrix_shape: tuple[int, int]
    kind: str
    source: str = ""  # the tensor to read (gate blocks share their parent's)
    rows: tuple[int, int] | None = None  # row block of the parent (gate blocks)
    alone: bool = False  # the only tensor of its checkpoint (a matrix given on its own)

    def wants_eigen(self, options: AnalyzeOptions) -> bool:
        """Whether ``--square`` asks for the eigen/non-normal analysis of this matrix:
        ``all``; ``recurrent``: the recurrent weights and their gate blocks; ``auto``:
        those, a square matrix up to ALONE_MAX_DIM given on its own (a file holding one
        matrix: the operator the user asks about) and other squares up to
        ``square_max_dim``."""
        m, n = self.matrix_shape
        if m != n or options.square == "none":
            return False
        recurrent = self.kind == "recurrent_gate" or bool(RECURRENT.search(self.name))
        if options.square == "all" or recurrent:
            return True
        return options.square == "auto" and (
            (self.alone and m <= ALONE_MAX_DIM) or m <= options.square_max_dim)


#: A planned matrix (picklable: tasks of worker processes name them).
Planned = _Planned

def _plan(info, selector: Selector, options: AnalyzeOptions) -> list[_Planned] | str:
    """The matrices to analyse in one tensor, or the reason to skip it. A recurrent
    ``weight_hh`` of an LSTM (4h x h) or GRU (3h x h) gives the whole matrix plus one
    square block per gate, named ``<tensor>[gate]``."""
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
    if nd > 2:
        if options.conv == "skip":
            return f"{nd}-D (--conv skip)"
        shape = (info.shape[0], math.prod(info.shape[1:]))
        return [_Planned(info.name, info.shape, info.dtype, shape, "conv_reshaped", info.name)]
    m, n = info.shape
    whole = _Planned(info.name, info.shape, info.dtype, (m, n), "matrix", info.name)
    gates = GATES.get(m // n) if m % n == 0 else None
    if not RECURRENT.search(info.name) or gates is None or options.square == "none":
        return [whole]
    return [whole] + [_Planned(f"{info.name}[{g}]", info.shape, info.dtype, (n, n),
                               "recurrent_gate", info.name, (i * n, (i + 1) * n))
                      for i, g in enumerate(gates)]


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


#: Memory of one tensor's measurement, for planning parallel runs: the tensor as stored,
#: its float64 copy (8·m·n bytes) and the backend's workspace, WORKSPACE[kind] times the
#: copy: a dense SVD holds LAPACK's copy of the matrix (numpy's gesdd works on one; the
#: Gram route's LU or QR factor is one too, and it falls back to gesdd for an
#: ill-conditioned matrix) plus the k×k Gram product and eigvalsh's copy of it
#: (2·k²/(m·n) of the copy, k = min(m, n), for the matrices that ``--svd-route auto``
#: sends that way: aspect ratio >= 2 or k >= 512, see ``auto_takes_gram``),
#: the eigen/non-normal analysis of a square matrix adds the Schur form, its eigenvectors and
#: the matrix powers (the power curve also keeps A^(2^i), i < log2(power_max), for sides
#: up to 1024: at most 8 MiB each); iterative backends hold a few vectors. Measured on TinyLlama's
#: 32000x2048 embedding (bench/bench_llm.py): 738 MiB peak RSS of a worker, torch
#: included, where this rule says 1.25 GB (the fallback's peak).
WORKSPACE = {"dense": 1.0, "eigen": 3.0, "iterative": 0.5}
MEMORY_RULE = ("per tensor: its stored bytes + 8·m·n·(1 + W) bytes, W = 1 for a dense "
               "SVD (+ 2·k²/(m·n), k = min(m, n), at aspect ratio >= 2 or k >= 512: the Gram "
               "route; "
               "+3 with the eigen analysis of a square "
               "matrix), 0.5 for iterative backends; the peak sums the workers' largest "
               "tensors")


def expected_bytes(group: Sequence[_Planned], options: AnalyzeOptions) -> int:
    """The expected peak memory of measuring one stored tensor (and its gate blocks): see
    :data:`MEMORY_RULE`."""
    first = group[0]
    stored = math.prod(first.shape) * itemsize(first.dtype)
    peak = 0.0
    for p in group:
        m, n = p.matrix_shape
        dense = choose_backend(p.matrix_shape, options) in ("dense", "auto")
        k = min(m, n)
        gram = 2.0 * k * k / (m * n) if auto_takes_gram(m, n) else 0.0
        w = WORKSPACE["dense"] + gram if dense else WORKSPACE["iterative"]
        if p.wants_eigen(options):
            w += WORKSPACE["eigen"]
        peak = max(peak, 8.0 * m * n * (1.0 + w))
    whole = 8.0 * math.prod(first.shape) if first.rows is None else 0.0
    return int(stored + max(peak, whole))


def itemsize(dtype: str) -> int:
    """Bytes per element of a stored dtype name (8 when unknown)."""
    digits = "".join(c for c in str(dtype) if c.isdigit())
    return max(1, int(digits) // 8) if digits else 8


def plan_source(source: Any, options: AnalyzeOptions
                ) -> tuple[list[_Planned], list[SkippedTensor]]:
    """The matrices of ``source`` to analyse, in the order of its entries, and the
    tensors skipped with the reason."""
    selector = Selector(options.include, options.exclude)
    planned: list[_Planned] = []
    skipped: list[SkippedTensor] = []
    entries = 0
    for info in source.entries():
        entries += 1
        p = _plan(info, selector, options)
        if isinstance(p, str):
            skipped.append(SkippedTensor(info.name, tuple(info.shape), info.dtype, p))
        else:
            planned.extend(p)
    if entries == 1 and len(planned) == 1 and planned[0].kind == "matrix":
        planned[0] = replace(planned[0], alone=True)
    return planned, skipped


def groups(planned: Sequence[_Planned]) -> list[tuple[_Planned, ...]]:
    """The planned matrices grouped by the stored tensor they are read from (a recurrent
    weight and its gate blocks are one read), in plan order."""
    out: list[list[_Planned]] = []
    for p in planned:
        if out and out[-1][0].source == p.source:
            out[-1].append(p)
        else:
            out.append([p])
    return [tuple(g) for g in out]


def measure_group(source: Any, group: Sequence[_Planned], options: AnalyzeOptions,
                  backends: Callable[[str], Any], metrics: Any = None
                  ) -> list[TensorResult | TensorError]:
    """Read one stored tensor of ``source`` once and measure each planned matrix of it;
    a failure is a :class:`TensorError` of that matrix (the others go on)."""
    out: list[TensorResult | TensorError] = []
    full: np.ndarray | None = None
    for p in group:
        try:
            backend = backends(choose_backend(p.matrix_shape, options))
            if full is None:
                full = np.asarray(source.read(p.source), dtype=np.float64)
            a = (full.reshape(-1, full.shape[-1])[p.rows[0]:p.rows[1]] if p.rows
                 else full.reshape(p.matrix_shape))
            out.append(analyze_matrix(p, np.ascontiguousarray(a), options, backend,
                                      metrics))
        except (SpectrumError, np.linalg.LinAlgError, MemoryError, NotImplementedError) as exc:
            out.append(TensorError(p.name, str(exc) or type(exc).__name__))
        finally:
            a = None
    return out


def analyze_source(
    source: Any,
    source_info: SourceInfo,
    options: AnalyzeOptions,
    backends: Callable[[str], Any],
    on_progress: Callable[[int, int, str], None] | None = None,
    metrics: Any = None,
    measure: Callable[[list[_Planned]], list[TensorResult | TensorError]] | None = None,
) -> AnalysisResult:
    """Analyse every selected matrix of ``source``; per-tensor failures are recorded.

    ``backends`` maps a backend name to a backend object (the caller's registry:
    :func:`spectrum_cli.plugins.get_backend`); :func:`choose_backend` picks the name per
    tensor. ``metrics`` are the registered metrics (the built-in ones by default).
    ``measure``, when given, measures the planned matrices instead of this process's
    loop (the caller's executors, cache and progress) and returns one outcome per
    planned matrix, in plan order; ``on_progress`` is then the caller's business.
    """
    t0 = time.perf_counter()
    if options.backend != "auto":
        backends(options.backend)  # an unknown or unavailable backend fails here, once
    planned, skipped = plan_source(source, options)
    if measure is None:
        outcomes = _measure_here(source, planned, options, backends, metrics, on_progress)
    else:
        outcomes = measure(planned)
    tensors = [o for o in outcomes if isinstance(o, TensorResult)]
    errors = [o for o in outcomes if isinstance(o, TensorError)]
    settings = options.as_dict()
    if options.backend == "auto":
        settings["auto_rule"] = AUTO_RULE
    return AnalysisResult(source=source_info, settings=settings, tensors=tensors,
                          skipped=skipped, errors=errors, time_s=time.perf_counter() - t0)


def _measure_here(source: Any, planned: list[_Planned], options: AnalyzeOptions,
                  backends: Callable[[str], Any], metrics: Any,
                  on_progress: Callable[[int, int, str], None] | None
                  ) -> list[TensorResult | TensorError]:
    """Every planned matrix in this process, one stored tensor in memory at a time."""
    out: list[TensorResult | TensorError] = []
    for group in groups(planned):
        if on_progress:
            on_progress(len(out), len(planned), group[0].name)
        out.extend(measure_group(source, group, options, backends, metrics))
    if on_progress:
        on_progress(len(planned), len(planned), "")
    return out
