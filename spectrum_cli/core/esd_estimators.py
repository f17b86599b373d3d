"""Heavy-tail estimators of the ESD used by LLM pruning and fine-tuning, as metrics.

WeightWatcher's ``alpha`` (:mod:`spectrum_cli.core.esd`) chooses xmin by minimal KS
distance over every eigenvalue. The groups that now use heavy-tailed spectra most do not
use it alone; this module reproduces their estimators, to 1e-10 of their own code run in
float64 (``tests/core/data/esd_estimators_reference.json`` records the run):

``alpha_hill``
    TempBalance (Zhou et al., "Temperature balancing, layer-wise weight analysis, and
    neural network training", NeurIPS 2023) and Model Balancing (Liu et al., EMNLP
    2024): ``PL_Alpha_Hill``, the Hill estimator with xmin at the median eigenvalue,
    TempBalance's default ``pl_fitting='median'`` (github YefanZhou/TempBalance,
    ``tempbalance.py``, ``Tempbalance.net_esd_estimator``, commit 9f0d9c7e). With the
    eigenvalues ascending, x_0 <= ... <= x_{N-1}: i = int(N / 2) (``xmin_pos = 2``:
    the upper median for even N), n = N - i and

        α = 1 + n / Σ_{j>=i} ln(x_j / x_i).

``alpha_peak``
    AlphaPruning (Lu et al., "AlphaPruning: using heavy-tailed self regularization
    theory for improved layer-wise pruning of large language models", NeurIPS 2024;
    github haiquanlu/AlphaPruning, ``lib/esd_utils.py``, ``net_esd_estimator(...,
    fix_fingers='xmin_peak')``, commit 5f0e9845): the log10 of the eigenvalues is
    binned in 100 bins between its extremes (``torch.histc``); the left edge of the
    fullest bin (the first among equal counts) gives xmin2 = 10^edge; every eigenvalue
    x_i (but the largest) in the window [xmin_min, 1.5·xmin2] is a candidate xmin with
    α_i = 1 + n_i/S_i as above and, when α_i > 1, the KS distance

        D_i = max_{j>=i} |1 - (x_j/x_i)^(1-α_i) - (j - i)/n_i|

    (the one-sided empirical CDF, as WeightWatcher's); the estimate is α at the first
    minimal D (candidates outside the window, or with α <= 1, have D = 1).

``alpha_farms``
    FARMS (Hu, Goel, Killiakov & Yang, "Eigenspectrum analysis of neural networks
    without aspect ratio bias", ICML 2025, arXiv 2506.06280; github HUST-AI-HYZ/FARMS,
    ``LLM_Pruning/lib/esd_utils_farms.py`` ``net_esd_estimator_farms`` and
    ``LLM_Pruning/lib/sampling.py`` ``fixed_sampling``, commit 8e07c3fb): the ESDs of
    fixed-aspect-ratio submatrices are pooled (their eigenvalues concatenated) before
    ``alpha_peak``'s fit, which removes the bias of the matrix's own aspect ratio.
    Defaults of its pruning code (``LLM_Pruning/main.py``: ``num_row_samples=100``,
    ``Q_ratio=2.0``, ``sampling_ops_per_dim=10``; ``use_sliding_window=True``, without
    which it is no FARMS, and ``fix_fingers='xmin_peak'``, as ``lib/prune.py`` calls
    it): r = min(100, m, n) rows by c = int(2r) columns, at up to 10 row offsets times
    10 column offsets min(k·step, m - r) and min(k·step, n - c), steps
    max(1, (m - r) // 9) and max(1, (n - c) // 9), each submatrix's σ² pooled; fewer than 5
    pooled eigenvalues (``eigs_num_thresh``) and the layer is skipped (null here). It
    needs the matrix and about 100 SVDs of r x 2r submatrices (about 9 times the SVD of a
    384 x 384 matrix), so it is computed when asked (``opt_in="farms"``).

All three take the ESD as λ = σ(W)² of the weight as stored (not divided by N, unlike
WeightWatcher's normalized ESD), keep every eigenvalue (``filter_zeros=False``: the
1e-5 threshold of ``alpha`` is not applied) and work in float64 (the reference code
computes in float32 on the GPU; ``alpha_farms`` on the matrix as stored, rows first).

Quirks of the reference code, reproduced by default (the corrected variants are the
``*_corrected`` metrics):

1. **The window's lower bound is on the wrong scale** (``alpha_peak``, ``alpha_farms``):
   ``xmin_min = torch.log10(0.95 * xmin2)`` is compared with the linear eigenvalues.
   The bound is then almost always below λ_min (for xmin2 < 1 it is negative), so the
   window starts at the smallest eigenvalue; for large eigenvalues (xmin2 = 100: bound
   1.98) it cuts elsewhere than intended. ``alpha_peak_corrected`` /
   ``alpha_farms_corrected`` use 0.95·xmin2.
2. **A column slice that wraps** (``alpha_farms``): when n < c = int(2r) (a matrix with
   fewer than 2·min(100, m) columns, e.g. 300 x 120), the column offset
   ``min(j*step, n - c)`` is negative and Python's slice ``W[:, n-c : n]`` wraps: it
   takes the last c - n columns, an r x (c - n) submatrix (for n = 120: 80 of the 120
   columns, aspect ratio 1.25 instead of 2). ``alpha_farms_corrected`` keeps the aspect
   ratio instead: r = int(n / 2) rows by int(2r) <= n columns.
3. **The placeholder when nothing qualifies** (``alpha_peak``, ``alpha_farms``): when
   no candidate in the window has α > 1, every D is its initial 1 and the reference
   returns ``alphas[0]`` (0.0, its initial value, unless x_0 was a candidate). spectrum
   reports null with the reason instead, as it does for WeightWatcher's α = -1.
4. **Histogram and linspace as torch computes them**: ``torch.histc`` puts x in bin
   ``int((x - lo) * 100 / (hi - lo))`` (the last bin closed) and, when all values are
   equal, widens the range by ±1; the bin edges are ``torch.linspace(lo, hi, 101)``
   (from both ends) of the unwidened range. Both are reproduced.
5. **Zero eigenvalues** are kept (``filter_zeros=False``): ln 0 = -inf makes α NaN
   when the median eigenvalue is 0 (``alpha_hill``), and the histogram's range infinite
   (``torch.histc`` raises) for ``alpha_peak``; spectrum reports null with the reason.
6. **A tail of equal eigenvalues** (S = 0) gives α = 1 + n/0 = inf in the reference:
   ``alpha_hill`` of a matrix with 2 singular values (i = 1, a one-eigenvalue tail;
   MiniLM's 2 x 384 ``token_type_embeddings``) is inf there, null here.

Numerics: S_i is summed as Σ (ln x_j - ln x_i) (non-negative terms, no cancellation)
instead of the reference's Σ ln x_j - n ln x_i, and D_i as
max |1 - exp((1-α)(ln x_j - ln x_i)) - (j-i)/n| in row blocks of at most 2^20 entries;
candidates within 1e-9 of the minimal D are recomputed with the reference's own
expression (power of the ratio), so that near-ties resolve as it resolves them. On
MiniLM-L6 and the synthetic matrices of the tests the three estimators agree with the
reference run in float64 to 2e-14 (α) and 1e-14 (D).

Cost on the eigenvalues spectrum already has: ``alpha_hill`` O(N); ``alpha_peak`` a
histogram, the window's S_i (O(N) each) and their KS distances by ``alpha``'s branch
and bound (:func:`spectrum_cli.core.esd.ks_distances`: exact near the minimum, bounded
elsewhere). ``alpha_farms`` on MiniLM-L6's 39 matrices: 16 s, 51 s with the full scan.

Convolutions: the reference code pools the σ² of the k·k kernel slices scaled by
√0.5 (``conv_norm``); spectrum gives these metrics the matrix it analyses (a kernel
reshaped to out x in·k·k), so on 4-D kernels the values are not the reference's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from spectrum_cli.core import esd

#: TempBalance's ``xmin_pos``: xmin is the eigenvalue at index int(N / xmin_pos).
XMIN_POS = 2
#: AlphaPruning's ``bins`` for the histogram of log10 λ.
BINS = 100
#: The window around the peak: [log10(0.95·xmin2) (quirk) or 0.95·xmin2, 1.5·xmin2].
WINDOW_LOW, WINDOW_HIGH = 0.95, 1.5
#: FARMS's defaults (``LLM_Pruning/main.py``) and its ``eigs_num_thresh``.
FARMS_ROWS, FARMS_Q, FARMS_OPS, FARMS_MIN_EIGS = 100, 2.0, 10, 5
#: Candidates within this distance of the minimal D are rechecked exactly.
TIE_TOLERANCE = 1e-9
#: KS row blocks hold at most this many entries.
BLOCK_ENTRIES = 1 << 20


@dataclass(frozen=True)
class TailFit:
    """One estimator's fit: ``alpha`` (None when undefined, ``reason`` says why), the
    chosen ``xmin``, its KS distance ``ks_distance``, the tail size ``n`` and, for the
    peak estimators, ``peak`` (xmin2) and the ``window`` of candidate indices [lo, hi)
    into the ascending eigenvalues; ``n_evals`` eigenvalues were fitted."""

    alpha: float | None
    xmin: float | None = None
    ks_distance: float | None = None
    n: int | None = None
    peak: float | None = None
    window: tuple[int, int] | None = None
    n_evals: int = 0
    reason: str | None = None


def _ks_reference(x: np.ndarray, i: int, alpha: float) -> float:
    """D_i by the reference's own expression (power of the ratio)."""
    n = float(x.size - i)
    with np.errstate(all="ignore"):
        return float(np.max(np.abs(1 - (x[i:] / x[i]) ** (-alpha + 1) - np.arange(n) / n)))


def _checked(evals: np.ndarray, too_few: str) -> tuple[np.ndarray, TailFit | None]:
    """The ascending float64 eigenvalues, and the fit that says why there is none (not
    finite or negative: :func:`spectrum_cli.core.esd.check_evals`; fewer than two:
    ``too_few``), or None when a fit can be tried."""
    x, bad = esd.check_evals(evals)
    N = int(x.size)
    if bad:
        return x, TailFit(None, n_evals=N, reason=bad)
    if N < 2:
        return x, TailFit(None, n_evals=N, reason=f"{N} eigenvalue(s): {too_few}")
    return x, None


# ---- Hill, xmin at the median (TempBalance) ----------------------------------------

def fit_hill_median(evals: np.ndarray, xmin_pos: int = XMIN_POS) -> TailFit:
    """TempBalance's ``pl_fitting='median'`` fit of the eigenvalues ``evals`` (any
    order; every one kept, zeros included). See the module docstring."""
    x, refused = _checked(evals, "no tail to fit")
    if refused is not None:
        return refused
    N = int(x.size)
    i = int(N / xmin_pos)
    n = N - i
    xmin = float(x[i])
    if xmin <= 0.0:
        return TailFit(None, n_evals=N, reason="the median eigenvalue is 0: ln 0 makes "
                       "the reference's alpha NaN")
    logx = np.log(x[i:])
    S = float(np.sum(logx - logx[0]))
    if not S > 0.0:
        return TailFit(None, xmin=xmin, n=n, n_evals=N,
                       reason="the eigenvalues from the median up are all equal: alpha "
                              "is infinite")
    alpha = 1.0 + n / S
    return TailFit(alpha, xmin, _ks_reference(x, i, alpha), n, n_evals=N)


# ---- xmin in the histogram's peak (AlphaPruning, FARMS) -----------------------------

def _torch_linspace(lo: float, hi: float, steps: int) -> np.ndarray:
    """``torch.linspace``'s values: from the start below the halfway index, from the
    end above it."""
    step = (hi - lo) / (steps - 1)
    k = np.arange(steps, dtype=np.float64)
    half = steps // 2
    return np.where(np.arange(steps) < half, lo + step * k, hi - step * (steps - k - 1))


def _peak(x: np.ndarray, bins: int) -> float:
    """xmin2 = 10^(left edge of the fullest bin of log10 x), as the reference bins it."""
    h = np.log10(x)
    lo, hi = float(h.min()), float(h.max())
    left, right = (lo - 1.0, hi + 1.0) if lo == hi else (lo, hi)  # torch.histc widens
    pos = ((h - left) * bins / (right - left)).astype(np.int64)
    pos[pos == bins] = bins - 1  # the last bin includes its right edge
    counts = np.bincount(pos, minlength=bins)
    ih = int(np.argmax(counts))  # the first fullest bin
    return float(10.0 ** _torch_linspace(lo, hi, bins + 1)[ih])


def _scan_rows(x: np.ndarray, logx: np.ndarray, rows: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(α_i, D_i) for the candidate indices ``rows`` (ascending): S_i is the sum of the
    non-negative ln x_j - ln x_i (no cancellation), in row blocks; D_i as in the module
    docstring, exact wherever it can be the minimum or tie with it (elsewhere a lower
    bound that rules it out: :func:`spectrum_cli.core.esd.ks_distances`), 1 where α_i is
    not finite (those are handled by the caller)."""
    N = x.size
    alphas = np.empty(rows.size)
    start = 0
    while start < rows.size:
        i0 = int(rows[start])
        stop = min(rows.size, start + max(1, BLOCK_ENTRIES // (N - i0)))
        r = rows[start:stop]
        dev = logx[None, i0:] - logx[r, None]           # ln(x_j / x_i)
        dev[np.arange(i0, N)[None, :] < r[:, None]] = 0.0  # j < i: not in the tail
        with np.errstate(divide="ignore"):
            alphas[start:stop] = 1.0 + (N - r).astype(np.float64) / dev.sum(axis=1)
        start = stop
    full = np.full(N - 1, math.nan)  # α by candidate index, as ks_distances reads it
    full[rows] = alphas
    D = np.ones(N - 1)
    esd.ks_distances(logx, full, np.isfinite(full), D)
    return alphas, D[rows]


def fit_peak(evals: np.ndarray, *, bins: int = BINS, corrected: bool = False) -> TailFit:
    """AlphaPruning's ``fix_fingers='xmin_peak'`` fit of the eigenvalues ``evals`` (any
    order; every one kept). ``corrected``: the window's lower bound is 0.95·xmin2, not
    log10(0.95·xmin2) (quirk 1 of the module docstring)."""
    x, refused = _checked(evals, "no candidate xmin")
    if refused is not None:
        return refused
    N = int(x.size)
    if x[0] <= 0.0:
        return TailFit(None, n_evals=N, reason="a zero eigenvalue: log10 0 makes the "
                       "reference's histogram range infinite (torch.histc raises)")
    with np.errstate(over="ignore"):
        peak = _peak(x, bins)
    low = WINDOW_LOW * peak if corrected else math.log10(WINDOW_LOW * peak)
    high = WINDOW_HIGH * peak
    cand = x[:-1]
    lo = int(np.searchsorted(cand, low, side="left"))    # first x_i >= low
    hi = int(np.searchsorted(cand, high, side="right"))  # first x_i > high: break
    hi = max(hi, lo)
    logx = np.log(x)
    alphas = np.zeros(N - 1)  # the reference's initial values (quirk 3)
    D = np.ones(N - 1)
    if hi > lo:
        idx = np.arange(lo, hi)
        alphas[idx], D[idx] = _scan_rows(x, logx, idx)
        for i in idx[np.isinf(alphas[idx])]:  # S = 0: 1^(-inf) by pow's rules
            D[i] = _ks_reference(x, int(i), float(alphas[i]))
    best = float(D.min())
    if not best < 1.0:
        return TailFit(None, peak=peak, window=(lo, hi), n_evals=N,
                       reason="no candidate xmin in the peak window gives alpha > 1 "
                              "(the reference returns its placeholder alphas[0])")
    near = np.flatnonzero(D <= best + TIE_TOLERANCE)
    if near.size == 1:
        k = int(near[0])
    else:
        k = min((_ks_reference(x, int(i), float(alphas[i])), int(i)) for i in near)[1]
    alpha = float(alphas[k])
    if not math.isfinite(alpha):
        return TailFit(None, xmin=float(x[k]), n=N - k, peak=peak, window=(lo, hi),
                       n_evals=N, reason="the chosen tail's eigenvalues are all equal: "
                                         "alpha is infinite")
    return TailFit(alpha, float(x[k]), float(D[k]), N - k, peak, (lo, hi), N)


# ---- FARMS --------------------------------------------------------------------------

def farms_windows(shape: tuple[int, int], *, num_row_samples: int = FARMS_ROWS,
                  q_ratio: float = FARMS_Q, ops_per_dim: int = FARMS_OPS,
                  corrected: bool = False) -> list[tuple[slice, slice]]:
    """The submatrices FARMS's ``fixed_sampling`` takes of an m x n matrix, as slices
    (Python's semantics: with ``corrected=False`` a negative column start wraps,
    quirk 2 of the module docstring)."""
    rows, cols = int(shape[0]), int(shape[1])
    nr = min(num_row_samples, min(rows, cols))
    nc = int(nr * q_ratio)
    if corrected and nc > cols:  # keep the aspect ratio: fewer rows
        nr = max(1, int(cols / q_ratio))
        nc = min(cols, max(1, int(nr * q_ratio)))
    row_step = max(1, (rows - nr) // (ops_per_dim - 1))
    col_step = max(1, (cols - nc) // (ops_per_dim - 1))
    n_row = min(ops_per_dim, max(1, (rows - nr) // row_step + 1))
    n_col = min(ops_per_dim, max(1, (cols - nc) // col_step + 1))
    out = []
    for i in range(n_row):
        for j in range(n_col):
            r0 = min(i * row_step, rows - nr)
            c0 = min(j * col_step, cols - nc)
            out.append((slice(r0, r0 + nr), slice(c0, c0 + nc)))
    return out


def farms_eigenvalues(a: np.ndarray, *, corrected: bool = False, **settings: Any
                      ) -> np.ndarray:
    """The pooled σ² of FARMS's submatrices of ``a`` (float64, ascending)."""
    a = np.asarray(a, dtype=np.float64)
    parts = []
    for rs, cs in farms_windows(a.shape, corrected=corrected, **settings):
        sub = a[rs, cs]
        if sub.size:
            s = np.linalg.svd(sub, compute_uv=False)
            parts.append(s * s)
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0)


def fit_farms(a: np.ndarray, *, corrected: bool = False, **settings: Any) -> TailFit:
    """FARMS's α of the matrix ``a`` (the module docstring)."""
    evals = farms_eigenvalues(a, corrected=corrected, **settings)
    if evals.size < FARMS_MIN_EIGS:
        return TailFit(None, n_evals=int(evals.size),
                       reason=f"{evals.size} pooled eigenvalues: fewer than "
                              f"{FARMS_MIN_EIGS} (FARMS's eigs_num_thresh skips the layer)")
    return fit_peak(evals, corrected=corrected)


# ---- the metrics ---------------------------------------------------------------------

def _memo(kind: str, s: np.ndarray, fit: Callable[[np.ndarray], TailFit]) -> TailFit:
    s = np.asarray(s, dtype=np.float64)
    return esd.memoized(kind, (s,), (), lambda: fit(esd.eigenvalues(s)))


@dataclass(frozen=True)
class EstimatorMetric:
    """One estimator as a metric (:class:`spectrum_cli.core.metrics.Metric`'s protocol
    plus ``explain``)."""

    name: str
    fit: Callable[[np.ndarray], TailFit]
    description: str
    needs: str = "singular_values"
    context: bool = True
    opt_in: str = ""

    def _fit(self, values: np.ndarray) -> TailFit:
        if self.needs == "matrix":
            return self.fit(values)
        return _memo(self.name, values, self.fit)

    def compute(self, values: np.ndarray, ctx: Any = None) -> float | None:
        return self._fit(values).alpha

    def explain(self, values: np.ndarray, ctx: Any = None) -> str | None:
        return self._fit(values).reason


# Each metric: one object here (its description is the report's) plus its line in
# pyproject.toml's ``spectrum.metrics`` group. The report order is the order below.
alpha_hill = EstimatorMetric(
    "alpha_hill", fit_hill_median,
    "Hill estimator, xmin at the median eigenvalue (TempBalance PL_Alpha_Hill)")
alpha_peak = EstimatorMetric(
    "alpha_peak", fit_peak,
    "alpha with xmin in the ESD histogram's peak window (AlphaPruning xmin_peak, its "
    "quirks included)")
alpha_peak_corrected = EstimatorMetric(
    "alpha_peak_corrected", lambda lam: fit_peak(lam, corrected=True),
    "alpha_peak with the window's lower bound 0.95*xmin2 on the linear scale")
#: About 100 SVDs of r x 2r submatrices per matrix: computed when asked.
alpha_farms = EstimatorMetric(
    "alpha_farms", fit_farms,
    "alpha_peak of the pooled ESD of fixed-aspect-ratio submatrices (FARMS; computed "
    "when asked)", needs="matrix", opt_in="farms")
alpha_farms_corrected = EstimatorMetric(
    "alpha_farms_corrected", lambda a: fit_farms(a, corrected=True),
    "alpha_farms without the wrapping column slice and with alpha_peak_corrected's "
    "window (computed when asked)", needs="matrix", opt_in="farms")

#: Every metric of this module, in the order defined.
ALL: tuple[EstimatorMetric, ...] = tuple(v for v in list(globals().values())
                                         if isinstance(v, EstimatorMetric))
#: Contract names -> one-line description, in report order (read-only; from ``ALL``).
ESTIMATOR_METRICS: Mapping[str, str] = MappingProxyType(
    {m.name: m.description for m in ALL})
