"""The empirical spectral density (ESD) of a weight matrix, as WeightWatcher reads it.

The ESD is the set of eigenvalues λ_i = σ_i² of WᵀW (the squared singular values of the
float64 matrix, not normalized). Everything here follows WeightWatcher 0.7.7
(Martin & Mahoney, "Implicit self-regularization in deep neural networks", JMLR
22(165), 2021; Martin, Peng & Mahoney, "Predicting trends in the quality of
state-of-the-art neural networks without access to training or testing data", Nature
Communications 12:4122, 2021) so that the numbers agree with its columns on the same
matrix; where spectrum adds or differs, the docstring says so.

Power law of the tail (Clauset, Shalizi & Newman, "Power-law distributions in empirical
data", SIAM Review 51(4), 2009, §3): among the eigenvalues above ``threshold`` (1e-5,
WeightWatcher's ``EVALS_THRESH``), sorted x_1 <= ... <= x_N, each x_i but the last is a
candidate xmin with tail size n = N - i + 1 (x_i included) and

    S_i = Σ_{j>=i} ln(x_j / x_i),   α_i = 1 + n / S_i                 (eq. 3.1)
    D_i = max_{j>=i} |1 - (x_j/x_i)^(1-α_i) - (j - i)/n|              (KS, §3.3)

(WeightWatcher's one-sided empirical CDF (j - i)/n). The fit is the first i of minimal
D_i among those with α_i > 1; σ = (α - 1)/√n (eq. 3.2). With N < 20 eigenvalues
(WeightWatcher's small-n branch) only tails of at least 8 are candidates and α is the
bias-corrected 1 + (n - 1)/S_i. The reported tail count is #{λ >= xmin}.

Beyond WeightWatcher, an exact interval for α at the chosen xmin: given x_i, the n - 1
tail points above it are i.i.d. Pareto(α, x_i), so ln(x_j/x_i) ~ Exp(α - 1) and
(α - 1)·S_i ~ Gamma(n - 1, 1) (Johnson, Kotz & Balakrishnan, *Continuous Univariate
Distributions* 1, 2nd ed., ch. 20); the interval is 1 + Gamma⁻¹(q; n - 1)/S_i for
q = (1 ∓ level)/2. It does not include the uncertainty of choosing xmin;
:func:`bootstrap_alpha` does (the nonparametric bootstrap Clauset et al. use for the
uncertainty of xmin and α), at B times the cost of a fit.

Cost: the S_i are N - 1 suffix sums (numpy's pairwise sums, as WeightWatcher computes
them); the D_i would need Σ_i (N - i) ≈ N²/2 exponentials, but only those near the
minimum are computed in full (:func:`ks_distances`, branch and bound, in row blocks of
at most 2^20 entries): the minimum and its index are the full scan's, and N = 4096
takes 0.03 s on one core (0.17 s for the full scan). Candidates whose D is within 1e-9
of the minimum are recomputed with WeightWatcher's own expression so that ties resolve
as it resolves them.

Results are memoized (a small LRU cache keyed on a hash of the eigenvalues' bytes and
the settings): the dozen metrics computed from one spectrum share one fit.

Also here: WeightWatcher's log norms (:func:`log_norms`). The Marchenko-Pastur fit of
the bulk is :mod:`spectrum_cli.core.marchenko_pastur`, ``rand_distance``
:mod:`spectrum_cli.core.randomization`, all of them for one matrix
:mod:`spectrum_cli.core.esd_analysis`.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

#: WeightWatcher's ``EVALS_THRESH``: eigenvalues at or below it are left out of the fit.
EVALS_THRESHOLD = 1e-5
#: WeightWatcher's ``SMALL_N_CUTOFF``: fewer eigenvalues above the threshold select the
#: small-n variant of the fit.
SMALL_N = 20
#: The smallest tail the small-n variant considers (WeightWatcher's ``k_min``).
SMALL_N_MIN_TAIL = 8
#: WeightWatcher's ``DEFAULT_MIN_EVALS``: it skips matrices with fewer eigenvalues.
MIN_EVALS = 8
#: WeightWatcher's warnings: α below 2 "over-trained", above 6 "under-trained".
OVER_TRAINED, UNDER_TRAINED = "over-trained", "under-trained"
OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE = 2.0, 6.0
DEFAULT_LEVEL = 0.95
#: Row blocks of the KS scan hold at most this many entries.
BLOCK_ENTRIES = 1 << 20
#: The KS scan bounds each D_i from below on every KS_STRIDE-th eigenvalue, then
#: evaluates candidates exactly KS_CHUNK at a time (:func:`ks_distances`); bounds within
#: KS_SLACK of the cut-off are evaluated too (rounding of the bound's own arithmetic).
KS_STRIDE, KS_CHUNK, KS_SLACK = 32, 64, 1e-12
#: Candidates within this distance of the smallest D are rechecked exactly.
TIE_TOLERANCE = 1e-9

INTERVAL_METHOD = "exact Gamma pivot at the chosen xmin ((alpha-1)*S ~ Gamma(n-1, 1))"


@dataclass(frozen=True)
class PowerLawFit:
    """The power-law fit of the ESD's tail (see the module docstring).

    ``alpha`` is None when the fit is undefined for these eigenvalues, and ``reason``
    says why; the other fields are then None too. ``variant`` is ``"standard"`` or
    ``"small-n"`` (WeightWatcher's branch for N < 20). ``interval`` is the exact
    ``level`` interval for α at the chosen xmin. ``warning`` is WeightWatcher's
    ``"over-trained"`` (α < 2) or ``"under-trained"`` (α > 6), or None.
    """

    alpha: float | None
    xmin: float | None
    xmax: float | None
    ks_distance: float | None
    sigma: float | None
    tail_count: int | None
    interval: tuple[float, float] | None
    n_fit: int
    level: float
    variant: str | None
    warning: str | None
    reason: str | None
    threshold: float

    @property
    def defined(self) -> bool:
        return self.alpha is not None


@dataclass(frozen=True)
class LogNorms:
    """WeightWatcher's norm columns (base-10 logarithms; None where undefined):
    ``log_norm`` = log10 Σλ_i, ``log_spectral_norm`` = log10 λ_max, ``log_alpha_norm`` =
    log10 Σλ_i^α and ``alpha_weighted`` = α·log10 λ_max (Martin, Peng & Mahoney 2021)."""

    log_norm: float | None
    log_spectral_norm: float | None
    log_alpha_norm: float | None
    alpha_weighted: float | None


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile interval of α over ``n_boot`` resamples (with replacement) of the
    eigenvalues above the threshold, each refitted with its own xmin; ``n_defined``
    resamples gave a defined α."""

    low: float | None
    high: float | None
    level: float
    n_boot: int
    n_defined: int
    seed: int


# ---- memo --------------------------------------------------------------------------

_CACHE: OrderedDict[bytes, Any] = OrderedDict()
_CACHE_SIZE = 64
_LOCK = threading.Lock()


def memoized(kind: str, arrays: tuple[np.ndarray, ...], params: tuple[Any, ...],
             compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered under a hash of ``kind``, the arrays' bytes, shapes and
    dtypes and ``params`` (the last 64 results)."""
    h = hashlib.blake2b(repr((kind, params)).encode(), digest_size=20)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    key = h.digest()
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = compute()
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


# ---- eigenvalues -------------------------------------------------------------------

def eigenvalues(singular_values: np.ndarray) -> np.ndarray:
    """λ_i = σ_i², ascending, float64 (values past 1.3e154 overflow to inf)."""
    s = np.asarray(singular_values, dtype=np.float64).ravel()
    with np.errstate(over="ignore"):
        return np.sort(s * s)


def check_evals(evals: np.ndarray) -> tuple[np.ndarray, str | None]:
    lam = np.sort(np.asarray(evals, dtype=np.float64).ravel())
    if lam.size and not np.isfinite(lam).all():
        return lam, "eigenvalues are not all finite (NaN, or σ past 1.3e154)"
    if lam.size and lam[0] < 0:
        return lam, "negative eigenvalues: expected λ = σ² >= 0"
    return lam, None


def warning_for(alpha: float | None) -> str | None:
    """WeightWatcher's warning for α: "over-trained" below 2, "under-trained" above 6."""
    if alpha is None:
        return None
    if alpha < OVER_TRAINED_BELOW:
        return OVER_TRAINED
    if alpha > UNDER_TRAINED_ABOVE:
        return UNDER_TRAINED
    return None


# ---- the power-law fit -------------------------------------------------------------

def _tail_sums(logx: np.ndarray) -> np.ndarray:
    """S_i = Σ_{j>=i} ln x_j - n_i ln x_i for i < N - 1, with numpy's pairwise sum of
    each suffix (the same expression, so the same bits, as WeightWatcher's)."""
    N = logx.size
    return np.array([np.sum(logx[i:]) - float(N - i) * logx[i] for i in range(N - 1)],
                    dtype=np.float64)


def _ks_exact(x: np.ndarray, i: int, alpha: float) -> float:
    """D_i by WeightWatcher's own expression (power of the ratio)."""
    n = float(x.size - i)
    with np.errstate(all="ignore"):
        return float(np.max(np.abs(1 - (x[i:] / x[i]) ** (-alpha + 1) - np.arange(n) / n)))


def _ks_rows(logx: np.ndarray, alphas: np.ndarray, r: np.ndarray,
             cols: np.ndarray) -> np.ndarray:
    """max over the columns j in ``cols`` (j >= i) of |1 - (x_j/x_i)^(1-α_i) - (j-i)/n_i|
    for each candidate i in ``r`` (ascending, α finite): D_i when ``cols`` is every
    j >= min(r), a lower bound of D_i for a subset (the same elementwise values)."""
    N = logx.size
    a = alphas[r]
    dev = logx[None, cols] - logx[r, None]              # ln(x_j/x_i)
    dev *= (1.0 - a)[:, None]
    with np.errstate(over="ignore"):
        np.exp(dev, out=dev)                            # (x_j/x_i)^(1-α)
    np.subtract(1.0, dev, out=dev)                      # the fitted CDF
    k = cols[None, :] - r[:, None]                      # j - i
    dev -= k / (N - r)[:, None].astype(np.float64)      # minus the empirical CDF
    np.abs(dev, out=dev)
    dev[k < 0] = 0.0                                    # j < i is not in the tail
    return dev.max(axis=1, initial=0.0)  # (a subset may hold no j >= i: bound 0)


def ks_distances(logx: np.ndarray, alphas: np.ndarray, rows: np.ndarray,
                 D: np.ndarray) -> int:
    """Fill ``D[i]`` for the candidates i (True in ``rows``, α_i finite) of the sorted
    eigenvalues exp(``logx``): exactly, D_i = max_{j>=i} |1 - (x_j/x_i)^(1-α_i) -
    (j-i)/n_i|, for every candidate that can lie within TIE_TOLERANCE of the smallest D
    (the other entries of ``D`` count as known); a lower bound above that for the rest,
    which can then be neither the minimum nor tied with it. Returns how many were exact.

    Branch and bound, not a scan of all N²/2 pairs: the maximum over every KS_STRIDE-th
    j (the same elementwise values) bounds each D_i from below; candidates are then
    evaluated exactly in the order of their bounds, in chunks, until the next bound
    exceeds the smallest exact D plus TIE_TOLERANCE. The minimum, its index and every
    D near it are the full scan's, bit for bit (tests/core/test_esd.py); 10-30x less
    work on N = 2,000-10,000 eigenvalues."""
    N = logx.size
    cand = np.flatnonzero(rows & np.isfinite(alphas))
    if not cand.size:
        return 0
    cols = np.arange(0, N, KS_STRIDE)
    lower = np.empty(cand.size)
    step = max(1, BLOCK_ENTRIES // cols.size)
    for s in range(0, cand.size, step):
        r = cand[s:s + step]
        lower[s:s + step] = _ks_rows(logx, alphas, r, cols[cols >= r[0]])
    known = np.ones(D.size, bool)
    known[cand] = False
    best = float(np.min(D[known], initial=math.inf))
    order = np.argsort(lower, kind="stable")
    chunk = max(1, min(KS_CHUNK, BLOCK_ENTRIES // N))
    done = 0
    while done < order.size and lower[order[done]] <= best + TIE_TOLERANCE + KS_SLACK:
        r = np.sort(cand[order[done:done + chunk]])
        d = _ks_rows(logx, alphas, r, np.arange(int(r[0]), N))
        D[r] = d
        best = min(best, float(d.min()))
        done += r.size
    D[cand[order[done:]]] = lower[order[done:]]
    return done


def _ks_scan(x: np.ndarray, logx: np.ndarray, alphas: np.ndarray,
             rows: np.ndarray) -> np.ndarray:
    """D_i for the candidates i (True in ``rows``) as :func:`ks_distances` gives them
    (exact near the minimum), 1 elsewhere; α = ±inf by WeightWatcher's expression."""
    D = np.ones(x.size - 1)
    finite = rows & np.isfinite(alphas)
    for i in np.flatnonzero(rows & ~finite):  # α = ±inf: 1^(-inf) needs pow's rules
        D[i] = _ks_exact(x, int(i), float(alphas[i]))
    ks_distances(logx, alphas, finite, D)
    return D


def _choose(x: np.ndarray, alphas: np.ndarray, D: np.ndarray) -> int:
    """The first index of minimal D, ties among near-equal candidates resolved with
    WeightWatcher's own expression for D."""
    best = float(D.min())
    near = np.flatnonzero(D <= best + TIE_TOLERANCE)
    if near.size == 1:
        return int(near[0])
    exact = [(_ks_exact(x, int(i), float(alphas[i])) if D[i] < 1.0 else 1.0, int(i))
             for i in near]
    return min(exact)[1]


def _scan(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, str]:
    """(chosen index, α_i, D_i, S_i, variant) for sorted x (N >= 2), as WeightWatcher's
    ``WWFit`` chooses: the standard scan, or its small-n branch for N < 20."""
    N = x.size
    logx = np.log(x)
    S = _tail_sums(logx)
    n = (N - np.arange(N - 1)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if N >= SMALL_N:
            alphas = 1 + n / S
            D = _ks_scan(x, logx, alphas, alphas > 1)
            return _choose(x, alphas, D), alphas, D, S, "standard"
        # Small n: tails of >= 8 with S > 1e-12, bias-corrected α. WeightWatcher scores
        # them with J = D - 0.868/sqrt(n), but its caller then re-selects by minimal D
        # (WW_powerlaw.WWFit.__init__): what it reports is the minimal-D candidate.
        ok = (n >= SMALL_N_MIN_TAIL) & (S > 1e-12)
        alphas = np.where(ok, 1 + (n - 1) / S, 0.0)
        rows = ok & (alphas > 1)
        D = _ks_scan(x, logx, alphas, rows)
        if not rows.any():  # no candidate: the whole sample is the tail
            if S[0] > 1e-12:
                alphas[0] = 1 + (N - 1) / S[0]
                D[0] = _ks_exact(x, 0, float(alphas[0]))
        return _choose(x, alphas, D), alphas, D, S, "small-n"


def _gamma_interval(S: float, n: int, level: float) -> tuple[float, float] | None:
    """1 + Gamma⁻¹(q; n - 1)/S for q = (1 ∓ level)/2 (None when n < 2 or S <= 0)."""
    if n < 2 or not S > 0 or not math.isfinite(S):
        return None
    q = (1.0 - level) / 2.0
    return (1.0 + gamma_quantile(n - 1, q) / S, 1.0 + gamma_quantile(n - 1, 1.0 - q) / S)


def _log_front(a: float, x: float) -> float:
    """log(x^a·e^(-x)/Γ(a)) without the cancellation of its three large terms: with
    x = a(1 + t), a·(log1p(t) - t) + ½·log(a/2π) - stirlerr(a), stirlerr(a) = log Γ(a) -
    (a - ½)·log a + a - ½·log 2π (its asymptotic series from a = 15 on; Abramowitz &
    Stegun 6.1.41)."""
    t = (x - a) / a
    # log(x/a) - t: log1p near x = a, where log(x/a) would cancel; log itself far from
    # it, where forming 1 + t would lose the digits of a small x/a.
    dev = (math.log1p(t) if abs(t) < 0.5 else math.log(x / a)) - t
    if a >= 15.0:
        r = 1.0 / (a * a)
        stirlerr = (1.0 / 12 - r * (1.0 / 360 - r * (1.0 / 1260 - r * (1.0 / 1680
                                                                       - r / 1188)))) / a
        head = 0.5 * math.log(a / (2 * math.pi)) - stirlerr
    else:
        head = a * math.log(a) - a - math.lgamma(a)
    return a * dev + head


def _gamma_pq(a: float, x: float) -> tuple[float, float]:
    """The regularized incomplete gamma functions P(a, x) and Q(a, x) = 1 - P(a, x), the
    smaller of the two to full relative accuracy: the series of P for x < a + 1, else
    the continued fraction of Q by the modified Lentz method (Numerical Recipes, 3rd
    ed., §6.2; Abramowitz & Stegun 6.5.29 and 6.5.31)."""
    if x <= 0.0:
        return 0.0, 1.0
    front = math.exp(_log_front(a, x))
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(1_000_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-17:
                break
        p = total * front
        return p, 1.0 - p
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 1_000_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-16:
            break
    q = front * h
    return 1.0 - q, q


def gamma_quantile(a: float, q: float) -> float:
    """x with P(a, x) = q: the q-quantile of Gamma(a, 1) (what ``scipy.special.
    gammaincinv(a, q)`` gives, without importing scipy.special, ~0.3 s of every process
    that fits a spectrum). Newton's method on log P(a, x) = log q (q < ½) or on
    log Q(a, x) = log(1 - q), each computed to full relative accuracy, from the
    Wilson-Hilferty approximation (Johnson, Kotz & Balakrishnan 1, ch. 17-18), kept
    inside the bracket of the points evaluated (bisection, geometric where the bracket
    spans decades), until a step changes x by under 1e-15 relative. a >= 1, 0 < q < 1."""
    if not (a >= 1.0 and 0.0 < q < 1.0):
        raise ValueError(f"gamma_quantile: expected a >= 1 and 0 < q < 1, got {a}, {q}")
    if a == 1.0:
        return -math.log1p(-q)
    from statistics import NormalDist

    lower = q < 0.5
    target = math.log(q) if lower else math.log1p(-q)
    z = NormalDist().inv_cdf(q)
    x = a * (1.0 - 1.0 / (9.0 * a) + z / (3.0 * math.sqrt(a))) ** 3
    if not x > 0.0:  # far in the lower tail: P ~ x^a / Γ(a + 1)
        x = math.exp((math.log(q) + math.lgamma(a + 1.0)) / a)
    lo, hi = 0.0, math.inf
    for _ in range(400):
        p, qq = _gamma_pq(a, x)
        part = p if lower else qq
        if part <= 0.0:  # underflow: outside the range of interest; step towards it
            g = -math.inf if lower else math.inf
        else:
            g = math.log(part) - target  # increasing in x (lower) or decreasing (upper)
        below = g < 0 if lower else g > 0  # x is below the quantile
        if below:
            lo = max(lo, x)
        else:
            hi = min(hi, x)
        if math.isfinite(g):
            density = math.exp(_log_front(a, x)) / x  # d/dx P = x^(a-1)e^(-x)/Γ(a)
            slope = density / part if lower else -density / part
            new = x - g / slope if slope != 0.0 else math.nan
        else:
            new = math.nan
        if not (lo <= new <= hi):  # NaN included
            if math.isinf(hi):
                new = 2.0 * x if x > 0 else 1.0
            elif lo > 0.0 and hi / lo > 4.0:
                new = math.sqrt(lo * hi)
            else:
                new = 0.5 * (lo + hi)
        if abs(new - x) <= 1e-15 * x:
            return new
        x = new
    return x


def exact_interval(tail: np.ndarray, level: float = DEFAULT_LEVEL
                   ) -> tuple[float, float] | None:
    """The exact ``level`` interval for α when the power law starts at the smallest
    value of ``tail``: 1 + Gamma⁻¹(q; n - 1)/S, S = Σ ln(x_j/x_min), q = (1 ∓ level)/2
    (module docstring). None for fewer than 2 values or all equal."""
    _validate(level, 0.0)
    x = np.sort(np.asarray(tail, dtype=np.float64).ravel())
    if x.size < 2 or not (np.isfinite(x).all() and x[0] > 0):
        return None
    logx = np.log(x)
    return _gamma_interval(float(np.sum(logx) - x.size * logx[0]), int(x.size), level)


def _undefined(reason: str, n_fit: int, level: float, threshold: float) -> PowerLawFit:
    return PowerLawFit(None, None, None, None, None, None, None, n_fit, level, None, None,
                       reason, threshold)


def _validate(level: float, threshold: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if not (math.isfinite(threshold) and threshold >= 0.0):
        raise ValueError(f"threshold: expected a finite number >= 0, got {threshold!r}")


def fit_power_law(evals: np.ndarray, *, threshold: float = EVALS_THRESHOLD,
                  level: float = DEFAULT_LEVEL, min_evals: int = MIN_EVALS) -> PowerLawFit:
    """The power-law fit of the tail of the eigenvalues ``evals`` (any order; the
    module docstring gives the method). Undefined, with the reason, when there are
    fewer than ``min_evals`` eigenvalues (WeightWatcher skips such matrices), fewer
    than 2 above ``threshold``, when those are all equal (WeightWatcher then reports
    rounding noise), or when no candidate gives α > 1. Memoized."""
    _validate(level, threshold)
    evals = np.asarray(evals, dtype=np.float64).ravel()
    return memoized("power_law", (evals,), (threshold, level, min_evals),
                    lambda: _fit_power_law(evals, threshold, level, min_evals))


def _fit_power_law(evals: np.ndarray, threshold: float, level: float,
                   min_evals: int) -> PowerLawFit:
    lam, bad = check_evals(evals)
    x = lam[lam > threshold]
    N = int(x.size)
    if bad:
        return _undefined(bad, N, level, threshold)
    if lam.size < min_evals:
        return _undefined(f"{lam.size} eigenvalues: fewer than {min_evals} "
                          "(WeightWatcher's min_evals)", N, level, threshold)
    if N < 2:
        return _undefined(f"{N} eigenvalue(s) above {threshold:g}: no tail to fit", N,
                          level, threshold)
    if x[0] == x[-1]:
        return _undefined(f"all {N} eigenvalues above {threshold:g} are equal: no power "
                          "law", N, level, threshold)
    i, alphas, D, S, variant = _scan(x)
    alpha = float(alphas[i])
    if not (math.isfinite(alpha) and alpha > 1.0 and D[i] < 1.0):
        return _undefined("no candidate xmin gives a finite alpha > 1", N, level, threshold)
    n = N - i
    xmin = float(x[i])
    return PowerLawFit(
        alpha=alpha, xmin=xmin, xmax=float(x[-1]), ks_distance=float(D[i]),
        sigma=(alpha - 1.0) / math.sqrt(n), tail_count=int(np.count_nonzero(lam >= xmin)),
        interval=_gamma_interval(float(S[i]), n, level), n_fit=N, level=level,
        variant=variant, warning=warning_for(alpha), reason=None, threshold=threshold)


def bootstrap_alpha(evals: np.ndarray, n_boot: int = 200, *, seed: int = 0,
                    level: float = DEFAULT_LEVEL, threshold: float = EVALS_THRESHOLD
                    ) -> BootstrapInterval:
    """Percentile interval of α over ``n_boot`` nonparametric bootstrap resamples of the
    eigenvalues above ``threshold``, each refitted from scratch (xmin included): the
    uncertainty of the whole procedure, as Clauset et al. (2009) estimate it. Costs
    ``n_boot`` fits."""
    _validate(level, threshold)
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise ValueError(f"n_boot: expected a positive integer, got {n_boot!r}")
    lam, bad = check_evals(evals)
    x = lam[lam > threshold]
    if bad or x.size < 2:
        return BootstrapInterval(None, None, level, n_boot, 0, seed)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        xb = np.sort(rng.choice(x, x.size, replace=True))
        if xb[0] == xb[-1]:
            continue
        i, alphas, D, _, _ = _scan(xb)
        a = float(alphas[i])
        if math.isfinite(a) and a > 1.0 and D[i] < 1.0:
            values.append(a)
    if not values:
        return BootstrapInterval(None, None, level, n_boot, 0, seed)
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.array(values), [q, 1.0 - q])
    return BootstrapInterval(float(lo), float(hi), level, n_boot, len(values), seed)


# ---- norms -------------------------------------------------------------------------

def log_norms(evals: np.ndarray, alpha: float | None) -> LogNorms:
    """WeightWatcher's log norms of the eigenvalues (see :class:`LogNorms`), computed
    relative to λ_max so that no power overflows; undefined (None) for a zero matrix,
    and the α-dependent ones when ``alpha`` is None."""
    lam, bad = check_evals(evals)
    if bad or lam.size == 0 or lam[-1] <= 0.0:
        return LogNorms(None, None, None, None)
    top = float(lam[-1])
    r = lam / top
    log_top = math.log10(top)
    log_norm = log_top + math.log10(float(np.sum(r)))
    if alpha is None:
        return LogNorms(log_norm, log_top, None, None)
    return LogNorms(log_norm, log_top, alpha * log_top + math.log10(float(np.sum(r ** alpha))),
                    alpha * log_top)
