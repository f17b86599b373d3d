"""Marchenko-Pastur fit of the ESD's bulk, as WeightWatcher 0.7.7 does it (``mp_fit=True``).

For an N x M matrix (N >= M, Q = N/M) with i.i.d. entries of variance σ²/N, the
eigenvalues of WᵀW fill [λ₋, λ₊] with λ± = σ²(1 ± 1/√Q)² (Marchenko & Pastur, Math.
USSR-Sbornik 1(4), 1967); the largest one fluctuates around λ₊ on the Tracy-Widom
scale ∝ M^(-2/3) (Johnstone, Ann. Statist. 29(2), 2001). WeightWatcher's fit
(Martin & Mahoney, JMLR 22(165), 2021, §4.1), reproduced step by step:

1. rescale the M eigenvalues so that their mean is 1: λ' = λ·M/Σλ (``Wscale²``);
2. smooth them with a linear-kernel density estimate of bandwidth 0.1 on 1000 points
   of [0, max + 0.5] (of the singular values √λ' when Q = 1), and keep the points
   where it exceeds 0.01;
3. choose σ minimizing the squared residual between that density and the
   Marchenko-Pastur density (the quarter circle (1/πσ²)√(4 - x²) of the singular values
   when Q = 1); a σ whose edges miss the density's peak (or λ₊ beyond the grid) costs
   1000 per point. The search is scipy's ``optimize.brute`` on
   [0.05 s₀, 2 s₀) in steps of 0.01 s₀, s₀ = √(λ'_max)/(1 + 1/√Q), polished by
   ``optimize.fmin``, exactly as WeightWatcher calls it;
4. λ₊ = (σ(1 + 1/√Q))², the spikes are the λ' > λ₊ + √(Q^(-1/2) λ₊^(2/3) M^(-2/3))
   (its Tracy-Widom margin), ``softrank`` = λ₊/λ'_max, and the edge is reported in
   the matrix's own units, λ₊·Σλ/M.

The density estimate does not depend on σ, so it is computed once (WeightWatcher
recomputes it for every σ); it costs 1000·M operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from spectrum_cli.core.esd import check_evals, memoized

BANDWIDTH = 0.1
GRID_POINTS = 1000
DENSITY_FLOOR = 0.01
PENALTY = 1000.0


@dataclass(frozen=True)
class MarchenkoPasturFit:
    """The bulk fit: ``bulk_max`` λ₊ and ``bulk_min`` λ₋ in the matrix's units,
    ``num_spikes`` beyond λ₊ plus the Tracy-Widom margin, ``softrank`` = λ₊/λ_max,
    ``sigma`` the fitted σ in the rescaled units (mean eigenvalue 1), ``q`` = N/M;
    ``law`` is ``"MP"`` or ``"QC"`` (quarter circle, square matrices). None values and
    a ``reason`` when undefined."""

    bulk_max: float | None
    bulk_min: float | None
    num_spikes: int | None
    softrank: float | None
    sigma: float | None
    q: float | None
    law: str | None
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return self.bulk_max is not None


def _undefined(reason: str, q: float | None = None) -> MarchenkoPasturFit:
    return MarchenkoPasturFit(None, None, None, None, None, q, None, reason)


def linear_kde(points: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """(1/(n h)) Σ_i max(0, 1 - |x - x_i|/h) on ``grid``: scikit-learn's
    ``KernelDensity(kernel='linear')`` in one dimension (its normalization is 1/h),
    in blocks of at most 2^20 entries."""
    n = points.size
    out = np.empty(grid.size)
    step = max(1, (1 << 20) // max(n, 1))
    for g0 in range(0, grid.size, step):
        d = np.abs(grid[g0:g0 + step, None] - points[None, :])
        np.subtract(1.0, d / bandwidth, out=d)
        np.maximum(d, 0.0, out=d)
        out[g0:g0 + step] = d.sum(axis=1)
    return out / (n * bandwidth)


class _Residual:
    """WeightWatcher's ``resid_mp`` (sum of squares) with the density computed once."""

    def __init__(self, to_fit: np.ndarray, q: float) -> None:
        xde = np.linspace(0, np.max(to_fit) + 0.5, GRID_POINTS)
        yde = linear_kde(to_fit, xde, BANDWIDTH)
        good = yde > DENSITY_FLOOR
        self.n_bad = int(np.count_nonzero(yde < DENSITY_FLOOR))
        self.x, self.y, self.q = xde[good], yde[good], q
        if self.x.size:
            self.peak = self.x[np.flatnonzero(self.y == self.y.max())[0]]
            self.xmax = float(self.x.max())

    def __call__(self, p: np.ndarray) -> float:
        return float(self.many(np.ravel(p)[:1])[0])

    def many(self, sigmas: np.ndarray) -> np.ndarray:
        """The residual at every σ of ``sigmas`` at once: row by row the same floating
        point operations as WeightWatcher's scalar ``resid_mp`` (the sum of each row,
        zeros for the points below the density floor included, is numpy's pairwise sum
        of a contiguous row, as for the 1-D array), so the values are bit-identical."""
        sig = np.asarray(sigmas, dtype=np.float64)[:, None]
        x, q = self.x[None, :], self.q
        resid = np.zeros((sig.shape[0], self.x.size + self.n_bad))
        with np.errstate(all="ignore"):
            if q == 1:
                ymp = np.nan_to_num((1 / (np.pi * sig * sig)) * np.sqrt(4 - x ** 2))
                resid[:, :self.x.size] = ymp - self.y
            else:
                b = np.power(sig * (1 + np.sqrt(1 / q)), 2)
                a = np.power(sig * (1 - np.sqrt(1 / q)), 2)
                ymp = np.nan_to_num((1 / (2 * np.pi * sig * sig * x * (1 / q)))
                                    * np.sqrt((b - x) * (x - a)))
                resid[:, :self.x.size] = ymp - self.y
                penalized = ((b < self.peak) | (b > self.xmax) | (a > self.peak))[:, 0]
                resid[penalized, :self.x.size] = PENALTY
        return np.sum(resid ** 2, axis=1)


def _brute(resid: _Residual, lo: float, hi: float, step: float) -> float:
    """scipy's ``optimize.brute(resid, (slice(lo, hi, step),))`` as WeightWatcher calls
    it (the grid ``np.mgrid[lo:hi:step]``, the first minimum, polished by
    ``optimize.fmin`` from there), with the grid evaluated in one vectorized pass and the
    polish by :func:`_fmin`."""
    grid = np.mgrid[slice(lo, hi, step)]
    values = resid.many(grid)
    start = grid[int(np.argmin(values))]
    return float(_fmin(resid, np.ravel(start))[0])


class _Exhausted(Exception):
    """The evaluation budget of :func:`_fmin` is spent."""


def _fmin(f: Callable[[np.ndarray], float], x0: np.ndarray, xatol: float = 1e-4,
          fatol: float = 1e-4) -> np.ndarray:
    """The Nelder-Mead simplex search (Nelder & Mead, Computer Journal 7(4), 1965) with
    the standard coefficients (reflection 1, expansion 2, contraction and shrink 1/2;
    Lagarias et al., SIAM J. Optim. 9(1), 1998), step for step what
    ``scipy.optimize.fmin(f, x0)`` does with its defaults (initial simplex x0 with one
    coordinate at a time times 1.05, or 0.00025 where it is 0; at most 200·N iterations
    and evaluations; stop when the simplex and its values are within ``xatol`` and
    ``fatol``), so the minimizer has the same bits. Written out because importing
    ``scipy.optimize`` costs ~0.3 s, paid by every process that fits a spectrum."""
    x0 = np.asarray(x0, dtype=np.float64).ravel()
    n = x0.size
    sim = np.empty((n + 1, n))
    sim[0] = x0
    for k in range(n):
        y = x0.copy()
        y[k] = (1 + 0.05) * y[k] if y[k] != 0 else 0.00025
        sim[k + 1] = y
    budget = n * 200
    calls = [0]

    def call(x: np.ndarray) -> float:
        if calls[0] >= budget:
            raise _Exhausted
        calls[0] += 1
        return float(f(np.copy(x)))

    fsim = np.full(n + 1, np.inf)
    try:
        for k in range(n + 1):
            fsim[k] = call(sim[k])
    except _Exhausted:
        pass
    ind = np.argsort(fsim)
    sim, fsim = np.take(sim, ind, 0), np.take(fsim, ind, 0)
    iterations = 1
    while calls[0] < budget and iterations < budget:
        try:
            if (np.max(np.ravel(np.abs(sim[1:] - sim[0]))) <= xatol
                    and np.max(np.abs(fsim[0] - fsim[1:])) <= fatol):
                break
            xbar = np.add.reduce(sim[:-1], 0) / n
            xr = (1 + 1) * xbar - 1 * sim[-1]
            fxr = call(xr)
            if fxr < fsim[0]:
                xe = (1 + 1 * 2) * xbar - 1 * 2 * sim[-1]
                fxe = call(xe)
                if fxe < fxr:
                    sim[-1], fsim[-1] = xe, fxe
                else:
                    sim[-1], fsim[-1] = xr, fxr
            elif fxr < fsim[-2]:
                sim[-1], fsim[-1] = xr, fxr
            else:
                shrink = False
                if fxr < fsim[-1]:  # outside contraction
                    xc = (1 + 0.5 * 1) * xbar - 0.5 * 1 * sim[-1]
                    fxc = call(xc)
                    if fxc <= fxr:
                        sim[-1], fsim[-1] = xc, fxc
                    else:
                        shrink = True
                else:  # inside contraction
                    xcc = (1 - 0.5) * xbar + 0.5 * sim[-1]
                    fxcc = call(xcc)
                    if fxcc < fsim[-1]:
                        sim[-1], fsim[-1] = xcc, fxcc
                    else:
                        shrink = True
                if shrink:
                    for j in range(1, n + 1):
                        sim[j] = sim[0] + 0.5 * (sim[j] - sim[0])
                        fsim[j] = call(sim[j])
            iterations += 1
        except _Exhausted:
            pass
        ind = np.argsort(fsim)
        sim, fsim = np.take(sim, ind, 0), np.take(fsim, ind, 0)
    return sim[0]


def fit_marchenko_pastur(evals: np.ndarray, shape: tuple[int, int]) -> MarchenkoPasturFit:
    """The Marchenko-Pastur fit of the eigenvalues ``evals`` (all min(m, n) of them,
    zeros included) of an m x n matrix (module docstring). Undefined for a zero
    matrix, for fewer than 2 eigenvalues, when they are all equal (an orthogonal
    matrix, say: WeightWatcher fits a bulk to the single value anyway), or when the
    density estimate is nowhere above 0.01 (WeightWatcher's fit fails there too).
    Memoized."""
    m, n = (int(d) for d in shape)
    if m < 1 or n < 1:
        raise ValueError(f"shape: expected two positive sizes, got {shape!r}")
    evals = np.asarray(evals, dtype=np.float64).ravel()
    return memoized("marchenko_pastur", (evals,), (max(m, n), min(m, n)),
                    lambda: _fit(evals, max(m, n), min(m, n)))


def _fit(evals: np.ndarray, N: int, M: int) -> MarchenkoPasturFit:
    q = N / M
    lam, bad = check_evals(evals)
    if bad:
        return _undefined(bad, q)
    if lam.size < 2:
        return _undefined(f"{lam.size} eigenvalue(s): no bulk to fit", q)
    total = float(np.sum(lam))
    if not total > 0:
        return _undefined("zero matrix: no bulk to fit", q)
    if lam[0] == lam[-1]:
        return _undefined(f"all {lam.size} eigenvalues are equal: no bulk to fit", q)
    wscale = np.sqrt(lam.shape[0]) / np.sqrt(total)
    to_plot = (wscale * wscale) * lam
    lambda_max = np.max(to_plot)
    s0 = np.sqrt(lambda_max / np.square(1 + 1.0 / np.sqrt(q)))
    resid = _Residual(np.sqrt(to_plot) if q == 1 else to_plot, q)
    if resid.x.size == 0:
        return _undefined(f"the density estimate of the ESD is nowhere above "
                          f"{DENSITY_FLOOR} (bandwidth {BANDWIDTH})", q)
    sigma = _brute(resid, 0.05 * s0, 2.0 * s0, 0.01 * s0)
    bulk_max = (sigma * (1 + 1 / np.sqrt(q))) ** 2
    bulk_min = (sigma * (1 - 1 / np.sqrt(q))) ** 2
    tw = 1 / np.sqrt(q) * np.power(bulk_max, 2 / 3) * np.power(M, -2 / 3)
    spikes = int(np.count_nonzero(to_plot > bulk_max + np.sqrt(tw)))
    scale = wscale * wscale
    if not all(math.isfinite(float(v)) for v in (sigma, bulk_max, scale)):
        return _undefined("the fit did not give a finite σ", q)
    return MarchenkoPasturFit(bulk_max=float(bulk_max / scale),
                              bulk_min=float(bulk_min / scale), num_spikes=spikes,
                              softrank=float(bulk_max / lambda_max), sigma=sigma, q=q,
                              law="QC" if q == 1 else "MP")
