"""Transient growth and the Kreiss constant of a square matrix (discrete time).

- Kreiss constant K(A) = sup_{|z|>1} (|z| - 1)‖(zI - A)⁻¹‖₂ = sup_ε (ρ_ε(A) - 1)/ε, and
  the Kreiss matrix theorem K <= sup_k ‖A^k‖₂ <= e·n·K (LeVeque & Trefethen 1984,
  Spijker 1991; Trefethen & Embree, *Spectra and Pseudospectra*, §18). K >= 1 always
  (the ratio tends to 1 as |z| -> ∞). We evaluate (|z| - 1)/σ_min(zI - A) on a polar
  grid outside the unit disk (radii 1 + d, d log-spaced from 1e-8 to 1e4·max(1, ‖A‖),
  the angles of the dominant eigenvalues included), refine the best points by bounded
  1-D searches in log d and angle, and report max(1, the best ratio evaluated by a dense
  SVD at a recorded z): a *lower bound* of K, certified point by point.
- Power norms ‖A^k‖₂, k = 1..k_max. If ‖A^m‖ < 1 then for k > m,
  ‖A^k‖ <= ‖A^m‖‖A^{k-m}‖ < ‖A^{k-m}‖, so sup_{k>=1} ‖A^k‖ = max_{k<=m} ‖A^k‖: the maximum
  is then exact. Otherwise (ρ >= 1, or k_max too small) it is the max over the k
  computed, a lower bound, and said so. (The norms may rise above 1 again after m; the
  curve is kept to k_max and ``last_above_one`` reports the last such k seen.)
  The Kreiss relation uses sup over k >= 0, which includes ‖A⁰‖ = 1.
- Transient window ln κ(V)/(-ln ρ) (ρ < 1): the k at which the bound κ(V)ρ^k reaches 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spectrum_cli.core.eigen import complex_schur
from spectrum_cli.core.scaling import ldexp, scale_exponent

DEFAULT_POWER_MAX = 200
#: Matrices up to this size get exact (batched) SVDs in the Kreiss search.
SMALL = 48


@dataclass(frozen=True)
class PowerNorms:
    norms: np.ndarray  # norms[k-1] = ‖A^k‖₂, k = 1..k_max
    max_power_norm: float
    argmax_power: int
    exact: bool  # some ‖A^m‖ < 1 was seen: the max over k <= k_max is the sup over k >= 1
    last_above_one: int  # the largest k <= k_max with ‖A^k‖ > 1 (0 if none)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class KreissBound:
    value: float  # a lower bound of K(A); inf when ρ(A) >= 1
    argmax: complex | None
    evaluations: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def power_norms(a: np.ndarray, k_max: int = DEFAULT_POWER_MAX) -> PowerNorms:
    """‖A^k‖₂ for k = 1..k_max (the curve), its maximum, and whether that maximum is the
    exact supremum over all k >= 1 (it is once some ‖A^m‖ < 1, see the module docstring).

    The powers are formed from B = 2^-e·A (exact scaling, entries near 1 when A's are near
    the float64 limits) and kept renormalized by powers of two, so no product overflows;
    ‖A^k‖ = 2^(ek + s_k)·‖B^k/2^s_k‖ is then scaled back, and a norm beyond the float64
    range is reported as inf (with a note), never as a crash or NaN."""
    if k_max < 1:
        raise ValueError(f"k_max: expected >= 1, got {k_max}")
    a = np.asarray(a, dtype=np.float64)
    e = scale_exponent(a)
    b = ldexp(a, -e)
    p = b.copy()
    shift = 0  # p holds B^k · 2^-shift
    norms = np.empty(k_max)
    for k in range(k_max):
        nrm = float(np.linalg.norm(p, 2))
        norms[k] = ldexp(nrm, shift + e * (k + 1))
        if nrm == 0.0:  # nilpotent: every later power is zero
            norms[k + 1:] = 0.0
            break
        if k + 1 < k_max:
            if not 2.0**-100 < nrm < 2.0**100:
                f = math.frexp(nrm)[1]
                p = ldexp(p, -f)
                shift += f
            p = b @ p
    i = int(np.argmax(norms))
    above = np.nonzero(norms > 1.0)[0]
    notes: tuple[str, ...] = ()
    big = np.nonzero(np.isinf(norms))[0]
    if big.size:
        notes = (f"‖A^k‖₂ exceeds the float64 range (1.8e308) from k = {int(big[0]) + 1}: "
                 "reported as inf",)
    return PowerNorms(norms, float(norms[i]), i + 1, bool(np.any(norms < 1.0)),
                      int(above[-1]) + 1 if above.size else 0, notes)


def transient_window(kappa_v: float | None, rho: float) -> float | None:
    """ln κ(V) / (-ln ρ) for 0 < ρ < 1 and a defined κ(V); None otherwise."""
    if kappa_v is None or not (0.0 < rho < 1.0) or not math.isfinite(kappa_v):
        return None
    return math.log(kappa_v) / -math.log(rho)


def kreiss_lower_bound(a: np.ndarray, per_decade: int = 2, angular: int = 24,
                       refine: int | None = None) -> KreissBound:
    """A certified lower bound of the Kreiss constant K(A) = sup_{|z|>1} (|z|-1)‖(zI-A)⁻¹‖₂;
    inf when ρ(A) >= 1.

    K(A) >= 1 always: (|z|-1)‖(zI-A)⁻¹‖₂ -> 1 as |z| -> ∞. The search covers |z| = 1 + d
    with d log-spaced from 1e-8 to 1e4·max(1, ‖A‖) (``per_decade`` radii a decade) times
    ``angular`` equispaced angles plus the arguments of the dominant eigenvalues. The grid
    ranks points (exact batched SVDs for n <= SMALL, else a few steps of inverse iteration,
    whose ratios never exceed the true ones); the best points overall and the best of every
    decade of d are evaluated with a dense SVD of zI - A, and the best ``refine`` of those
    are refined by bounded 1-D searches (Brent) in log d and in the angle. The value is the
    largest ratio so evaluated (``argmax`` records its z), or 1 (the limit |z| -> ∞,
    ``argmax`` None) if that is larger: a lower bound of K(A), never an estimate."""
    a = np.asarray(a, dtype=np.float64)
    e = scale_exponent(a)
    b = ldexp(a, -e)  # exact; zI - A = 2^e (2^-e z I - B)
    t = complex_schur(b)
    lam = np.diag(t)
    rho = ldexp(float(np.max(np.abs(lam))), e)
    if rho >= 1.0:
        return KreissBound(math.inf, None, 0, ("ρ(A) >= 1: K(A) = inf",))
    if ldexp(float(np.linalg.norm(b, 2)), e) <= 1.0:
        # A contraction: ‖(zI-A)⁻¹‖ <= 1/(|z| - ‖A‖) <= 1/(|z| - 1), so the ratio never
        # exceeds its limit 1 as |z| -> ∞ (Trefethen & Embree 2005, ch. 18): K(A) = 1.
        return KreissBound(1.0, None, 0, ("‖A‖₂ <= 1: K(A) = 1 exactly, the limit of "
                                          "(|z|-1)‖(zI-A)⁻¹‖ as |z| -> ∞",))
    ratio = _ResolventRatio(t, b, e)
    if refine is None:  # each refinement costs ~50 dense SVDs of A's size
        refine = 2 if a.shape[0] <= 128 else 1
    top = min(math.log10(1e4 * max(1.0, ldexp(float(np.linalg.norm(t)), e))), 300.0)
    logd = np.linspace(-8.0, top, int((top + 8) * per_decade) + 1)
    dominant = lam[np.argsort(-np.abs(lam))[:8]]
    angles = np.unique(np.round(np.r_[np.linspace(-np.pi, np.pi, angular, endpoint=False),
                                      np.angle(dominant)], 12))
    zs = ((1 + 10.0 ** logd)[:, None] * np.exp(1j * angles)[None, :])
    vals = ratio.coarse(zs.ravel()).reshape(zs.shape)
    picks = {int(i) for i in np.argsort(-vals, axis=None)[:refine]}
    for lo in range(0, logd.size, per_decade):  # the best point of every decade of d
        band = vals[lo:lo + per_decade]
        picks.add(lo * angles.size + int(np.argmax(band)))
    certified = sorted(((ratio.exact(complex(zs.flat[i])), complex(zs.flat[i]))
                        for i in picks), key=lambda p: -p[0])
    step_d, step_t = 1.0 / per_decade, 2 * np.pi / angles.size
    for value, z in certified[:refine]:
        certified.append(_refine(ratio, z, value, step_d, step_t))
    best, best_z = max(certified, key=lambda p: p[0])
    if not best > 1.0:
        return KreissBound(1.0, None, ratio.evaluations,
                           ("no evaluated |z| > 1 beats the limit 1 of (|z|-1)‖(zI-A)⁻¹‖ "
                            "as |z| -> ∞",))
    notes: tuple[str, ...] = ()
    if math.isinf(best):
        notes = ("(|z|-1)‖(zI-A)⁻¹‖₂ exceeds the float64 range at the recorded z",)
    return KreissBound(best, best_z, ratio.evaluations, notes)


class _ResolventRatio:
    """f(z) = (|z|-1)·‖(zI - A)⁻¹‖₂ = (|z|-1)/σ_min(zI - A) for A = 2^e·B, B = Q T Qᴴ."""

    def __init__(self, t: np.ndarray, b: np.ndarray, e: int) -> None:
        self.t, self.b, self.e = t, b, e
        self.n = t.shape[0]
        self.evaluations = 0

    def _finish(self, zs: np.ndarray, smin_b: np.ndarray) -> np.ndarray:
        """(|z|-1) / (2^e σ_min(2^-e z I - B)), inf where σ_min = 0 or past 1.8e308."""
        with np.errstate(divide="ignore", over="ignore"):
            return ldexp((np.abs(zs) - 1) / smin_b, -self.e)

    def coarse(self, zs: np.ndarray) -> np.ndarray:
        """Ratios on many points: exact batched SVDs for small n, else six steps of inverse
        iteration run on all points at once (their σ_min estimates never fall below the
        true σ_min, so these ratios never exceed the true ones)."""
        self.evaluations += zs.size
        w = ldexp(zs, -self.e)
        if self.n <= SMALL:
            return self._finish(zs, _smin_batched_svd(self.t, w))
        return self._finish(zs, _smin_batched_inverse(self.t, w, iters=6))

    def exact(self, z: complex) -> float:
        """The certified value: σ_min(zI - A) by a dense SVD of the (scaled) matrix."""
        from spectrum_cli.core.pseudospectra import sigma_min

        self.evaluations += 1
        w = complex(ldexp(np.array([z]), -self.e)[0])
        return float(self._finish(np.array([z]), np.array([sigma_min(w, self.b)]))[0])


def _smin_batched_svd(t: np.ndarray, w: np.ndarray, chunk: int = 512) -> np.ndarray:
    """σ_min(w_k I - T) for every w_k, by batched SVDs."""
    n = t.shape[0]
    out = np.empty(w.size)
    idx = np.arange(n)
    for start in range(0, w.size, chunk):
        z = w[start:start + chunk]
        m = np.broadcast_to(-t, (z.size, n, n)).copy()
        m[:, idx, idx] += z[:, None]
        out[start:start + chunk] = np.linalg.svd(m, compute_uv=False)[:, -1]
    return out


def _smin_batched_inverse(t: np.ndarray, w: np.ndarray, iters: int) -> np.ndarray:
    """Upper estimates of σ_min(w_k I - T), T upper triangular, for all w_k at once:
    inverse iteration on MᴴM (M = w_k I - T) with back/forward substitution vectorized
    over the points; 1/sqrt(‖(MᴴM)⁻¹x‖) >= σ_min for every unit x."""
    n = t.shape[0]
    d = w[None, :] - np.diag(t)[:, None]  # diagonal of each M, (n, Z)
    x = np.full((n, w.size), 1 / math.sqrt(n), dtype=np.complex128)
    est = np.full(w.size, np.inf)
    tc = t.conj()
    for _ in range(iters):
        y = np.empty_like(x)
        for i in range(n):  # Mᴴ y = x (lower triangular)
            y[i] = (x[i] + tc[:i, i] @ y[:i]) / d[i].conj()
        v = np.empty_like(y)
        for i in range(n - 1, -1, -1):  # M v = y (upper triangular)
            v[i] = (y[i] + t[i, i + 1:] @ v[i + 1:]) / d[i]
        nrm = np.linalg.norm(v, axis=0)
        ok = np.isfinite(nrm) & (nrm > 0)
        est = np.where(ok, np.minimum(est, 1 / np.sqrt(np.where(ok, nrm, 1.0))), 0.0)
        x = v / np.where(ok, nrm, 1.0)[None, :]
    return est


def _refine(ratio: _ResolventRatio, z0: complex, f0: float, step_d: float,
            step_t: float) -> tuple[float, complex]:
    """Bounded 1-D maximizations (Brent) of the certified ratio in log10(|z|-1), then in
    arg z, then in log10(|z|-1) again, each within one grid cell; returns the best
    (value, z) evaluated."""
    from scipy.optimize import minimize_scalar

    x, th = math.log10(abs(z0) - 1), float(np.angle(z0))
    best = (f0, z0)

    def point(x_: float, th_: float) -> complex:
        return complex((1 + 10.0 ** x_) * np.exp(1j * th_))

    for axis in ("d", "angle", "d"):
        if axis == "d":
            res = minimize_scalar(lambda v: -ratio.exact(point(v, th)),
                                  bounds=(x - step_d, x + step_d), method="bounded",
                                  options={"xatol": 1e-5, "maxiter": 16})
            cand = (float(-res.fun), point(float(res.x), th))
            if cand[0] > best[0]:
                best, x = cand, float(res.x)
        else:
            res = minimize_scalar(lambda v: -ratio.exact(point(x, v)),
                                  bounds=(th - step_t, th + step_t), method="bounded",
                                  options={"xatol": 1e-6, "maxiter": 16})
            cand = (float(-res.fun), point(x, float(res.x)))
            if cand[0] > best[0]:
                best, th = cand, float(res.x)
    return best
