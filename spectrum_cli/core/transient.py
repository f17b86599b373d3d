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
from typing import Any

import numpy as np

from spectrum_cli.core.eigen import complex_schur
from spectrum_cli.core.lapack import fblas
from spectrum_cli.core.scaling import ldexp, scale_exponent

DEFAULT_POWER_MAX = 200
EPS64 = float(np.finfo(np.float64).eps)
#: Matrices up to this size get exact (batched) SVDs in the Kreiss search.
SMALL = 48
#: The Kreiss grid is ranked with six inverse-iteration steps up to this side, four
#: beyond (the ranking only picks points for the converged evaluation and refinement).
COARSE_SIX_MAX_N = 128
#: The search ranks and refines its points by inverse iteration (see
#: ``_ResolventRatio.sharp``), stopped when a step changes σ_min by less than
#: SHARP_RTOL relative or after SHARP_ITERATIONS steps; the best CERTIFIED_POINTS points
#: found (fewer when the first certified value already beats the others' estimates) get
#: a dense SVD, and the best of those is the value reported.
SHARP_ITERATIONS = 60
SHARP_RTOL = 1e-13
CERTIFIED_POINTS = 3
#: The refinement's 1-D searches stop when the best point is known to within this
#: fraction of a grid cell.
REFINE_TOL = 1e-4
#: The numerical-range certificate of K(A) = 1 (:func:`numerical_radius_upper`) uses this
#: many supporting lines, and is tried only where ρ(A) < cos(π/RANGE_ANGLES), below which
#: w(A) <= 1 can be certified at all (w(A) >= ρ(A)).
RANGE_ANGLES = 8
RANGE_CERTIFY_MAX_RHO = math.cos(math.pi / RANGE_ANGLES)


@dataclass(frozen=True)
class PowerNorms:
    """‖A^k‖₂ for k = 1..k_max as certified intervals: ``lower[k-1] <= ‖A^k‖₂ <=
    upper[k-1]``, equal (to rounding) where ``exact_points[k-1]``. ``norms`` is the curve
    as reported: ‖A^k‖₂ where exact, the certified lower bound where an interval was
    enough, NaN where k was not evaluated at all (``upper`` still bounds it, by
    submultiplicativity)."""

    norms: np.ndarray
    max_power_norm: float  # the max over k <= k_max: exact if max_kind == "exact"
    argmax_power: int
    exact: bool  # max_power_norm is exact and is the sup over all k >= 1
    last_above_one: int  # the largest k <= k_max with ‖A^k‖ > 1 (0 if none)
    notes: tuple[str, ...] = ()
    upper: np.ndarray | None = None
    lower: np.ndarray | None = None
    exact_points: np.ndarray | None = None
    max_kind: str = "exact"  # "exact" or "lower_bound" (of the max over k <= k_max)
    max_upper: float = math.nan  # a certified upper bound of the max over k <= k_max
    above_one_kind: str = "exact"  # or "lower_bound" (last_above_one_upper bounds it)
    last_above_one_upper: int = 0
    growth_rate: float | None = None  # ‖A^k_max‖^(1/k_max) >= ρ(A), for a growing curve
    evaluations: int = 0  # powers whose norm was bounded or computed
    svds: int = 0  # of those, the ones that took a dense SVD

    def details(self) -> dict[str, Any]:
        """The curve's provenance (optional fields of the document's ``nonnormal``)."""
        return {"max_kind": self.max_kind, "max_upper": self.max_upper,
                "above_one_kind": self.above_one_kind,
                "above_one_upper": self.last_above_one_upper,
                "growth_rate": self.growth_rate, "evaluated": self.evaluations,
                "exact_points": int(np.sum(self.exact_points))
                if self.exact_points is not None else int(self.norms.size),
                "dense_svds": self.svds}


@dataclass(frozen=True)
class KreissBound:
    value: float  # a lower bound of K(A); inf when ρ(A) >= 1
    argmax: complex | None
    evaluations: int
    notes: tuple[str, ...] = field(default_factory=tuple)


#: Matrices up to this side get ‖A^k‖₂ by a dense SVD for every k = 1..k_max (the whole
#: curve exact, as before the walk; 200 SVDs of 128x128 take ~0.3 s on one core).
FULL_CURVE_MAX_N = 128
#: Bounds that agree to this relative slack are treated as equal (rounding level: the
#: dense SVD itself is accurate to ~n·eps relative).
CERT_RTOL = 1e-12
#: A power P is bounded through Gᵠ, G = PᵀP, q = 1, 2, 4 (Schatten norms 4, 8, 16).
SCHATTEN_LEVELS = 3
#: Powers walked before a curve that has not fallen below 1 is probed at k_max.
PROBE_AFTER = 8
#: Work of the certified walk, in products of two n x n matrices (a dense SVD counts
#: SVD_COST): past WALK_BUDGET the walk stops and the curve is reported by bounds
#: (a lower bound of the maximum with its certified upper bound); past
#: WALK_BUDGET + CERTIFY_BUDGET no more SVDs are spent telling intervals apart.
WALK_BUDGET = 48
CERTIFY_BUDGET = 48
#: The budgets are for sides >= BUDGET_SIDE; smaller matrices get (BUDGET_SIDE/n)³ times
#: more (their products are cheap: the budget bounds time, not the count).
BUDGET_SIDE = 256
SVD_COST = 8
#: Cache the powers A^(2^i) for matrices up to this side (log2(k_max) copies).
CACHE_MAX_N = 1024


def power_norms(a: np.ndarray, k_max: int = DEFAULT_POWER_MAX,
                method: str = "auto", rho_lower: float = 0.0) -> PowerNorms:
    """‖A^k‖₂ for k = 1..k_max (the curve), its maximum and argmax, the last k with
    ‖A^k‖ > 1, and whether the maximum is the exact supremum over all k >= 1.

    Theorem (early stop). If ‖A^m‖ < 1 for some m >= 1, then sup_{k>=1} ‖A^k‖ =
    max_{1<=k<=m} ‖A^k‖ =: M, attained at some k <= m. Proof: k > m is k = qm + r with
    q >= 1, 0 <= r < m; by submultiplicativity ‖A^k‖ <= ‖A^m‖^q ‖A^r‖ < ‖A^r‖ <= M if
    r >= 1, and ‖A^k‖ <= ‖A^m‖^q <= ‖A^m‖ <= M if r = 0. More generally
    ``upper[k] = min_j upper[j]·upper[k-j]`` bounds every power by the ones bounded
    before (dynamic programming on log2 bounds).

    Small matrices (n <= FULL_CURVE_MAX_N; ``method="dense"``) get every ‖A^k‖ by a
    dense SVD. Larger ones (``method="walk"`` forces it) are walked k = 1, 2, ... with,
    per power P = A^k and G = PᵀP, a certified interval:
    lower = (xᵀGᵠx)^(1/2q) for a unit x (power iteration warm-started from the previous
    power; a Rayleigh quotient never exceeds λ_max), upper = ‖Gᵠ‖_F^(1/2q) (σ₁^(4q) <=
    Σσ_i^(4q)), q = 1, 2, 4 only while that decides something. The walk stops at the first
    k after which the dynamic programming bounds every later power below 1. The powers
    whose interval cannot be told from the maximum (or, for ``last_above_one``, from 1)
    then get a dense SVD, so the maximum, its argmax and ``last_above_one`` are exact (to
    rounding, CERT_RTOL relative). A curve still above 1 after PROBE_AFTER powers is
    probed at k_max (repeated squaring); if it still exceeds 1 there it grows (or decays
    too slowly to matter within k_max): the maximum is reported as a lower bound
    (``max_kind``) with its certified upper bound ``max_upper`` and ``growth_rate`` =
    ‖A^k_max‖^(1/k_max) (Gelfand: >= ρ(A), tending to it).

    ``rho_lower``: a certified lower bound of ρ(A) (e.g.
    :func:`spectrum_cli.core.eigen.spectral_radius_lower`). Where it exceeds 1 the walk
    is skipped: ‖A^k‖₂ >= ρ(A^k) = ρ(A)^k > 1 for every k (a norm bounds the spectral
    radius), so the last k above 1 is k_max and the curve grows without bound; only the
    powers 2^i and k_max (repeated squaring) are bounded, k_max exactly, and the result
    is the one of a curve still above 1 at k_max (below).

    The powers are formed from B = 2^-e·A (exact scaling) and renormalized by powers of
    two, so no product overflows; a norm beyond the float64 range is reported as inf
    (with a note), never as a crash or NaN."""
    if k_max < 1:
        raise ValueError(f"k_max: expected >= 1, got {k_max}")
    if method not in ("auto", "dense", "walk"):
        raise ValueError(f"method: expected 'auto', 'dense' or 'walk', got {method!r}")
    a = np.asarray(a, dtype=np.float64)
    if method == "dense" or (method == "auto" and a.shape[0] <= FULL_CURVE_MAX_N):
        return power_norms_dense(a, k_max)
    walk = _CurveWalk(a, k_max)
    return walk.growing(rho_lower) if 1.0 < rho_lower < math.inf else walk.run()


def power_norms_dense(a: np.ndarray, k_max: int = DEFAULT_POWER_MAX) -> PowerNorms:
    """Every ‖A^k‖₂, k = 1..k_max, by a dense SVD of the power (what every matrix got
    before the walk; kept for small matrices and as the reference)."""
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
    last = int(above[-1]) + 1 if above.size else 0
    return PowerNorms(norms, float(norms[i]), i + 1, bool(np.any(norms < 1.0)), last,
                      _range_notes(norms), upper=norms.copy(), lower=norms.copy(),
                      exact_points=np.ones(k_max, bool), max_upper=float(norms[i]),
                      last_above_one_upper=last, evaluations=k_max, svds=k_max)


def _range_notes(norms: np.ndarray) -> tuple[str, ...]:
    big = np.nonzero(np.isinf(norms))[0]
    if big.size:
        return (f"‖A^k‖₂ exceeds the float64 range (1.8e308) from k = {int(big[0]) + 1}: "
                "reported as inf",)
    return ()


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else -math.inf


def _slack(t: float) -> float:
    """The log2 slack under which two bounds near 2^t count as equal (CERT_RTOL relative,
    plus the rounding of t itself)."""
    return CERT_RTOL / math.log(2) + (abs(t) * 4 * EPS64 if math.isfinite(t) else 0.0)


def _normalized(p: np.ndarray, s: int) -> tuple[np.ndarray, int]:
    """(P·2^-f, s + f) with max|P·2^-f| in [1/2, 1) (exact) when max|P| leaves
    [2^-60, 2^60]; else (P, s) unchanged (no pass over P)."""
    m = max(float(p.max()), -float(p.min())) if p.size else 0.0
    if m == 0.0 or not math.isfinite(m) or 2.0**-60 <= m <= 2.0**60:
        return p, s
    f = math.frexp(m)[1]
    return (ldexp(p, -f), s + f) if f else (p, s)


class _CurveWalk:
    """The certified walk of :func:`power_norms`, on log2 ‖A^k‖₂ (no overflow)."""

    def __init__(self, a: np.ndarray, k_max: int) -> None:
        self.n = a.shape[0]
        self.k_max = k_max
        self.e = scale_exponent(a)
        self.b = ldexp(a, -self.e)
        self.lo = np.full(k_max + 1, -math.inf)  # log2 lower bounds, index k
        self.hi = np.full(k_max + 1, math.inf)  # log2 upper bounds
        self.lo[0] = self.hi[0] = 0.0  # ‖A⁰‖ = 1
        self.exact = np.zeros(k_max + 1, bool)
        self.evaluated = np.zeros(k_max + 1, bool)
        self.exact[0] = self.evaluated[0] = True
        self.value = np.full(k_max + 1, math.nan)  # dense-SVD values (not through log2)
        self.svds = 0
        self.ladder: dict[int, tuple[np.ndarray, int]] = {}  # k -> (P, s): B^k = 2^s P
        self.cache = self.n <= CACHE_MAX_N
        self.x: np.ndarray | None = None
        self.frontier = self.hi.copy()  # the dynamic programming up to the walk's k
        self.cost = 0  # work so far, in products of two n x n matrices
        self.budget = max(1.0, (BUDGET_SIDE / self.n) ** 3)
        self.single_level_until = 0  # Schatten levels that do not help are skipped
        # Rounding of the products, Frobenius norms and Rayleigh quotients (generous).
        self.round = math.log2(1 + 64 * self.n * EPS64)
        self.stopped = 0  # the k where the walk's budget ran out (0: it did not)
        self.notes: tuple[str, ...] = ()

    def power(self, k: int) -> tuple[np.ndarray, int]:
        """B^k = 2^s·P by repeated squaring, through the cached powers 2^i."""
        if k in self.ladder:
            return self.ladder[k]
        out: tuple[np.ndarray, int] | None = None
        base, sb, j, rem = self.b, 0, 1, k
        while rem:
            if rem & 1:
                if out is None:
                    out = (base, sb)
                else:
                    out = _normalized(out[0] @ base, out[1] + sb)
                    self.cost += 1
            rem >>= 1
            if rem:
                nxt = self.ladder.get(2 * j)
                if nxt is None:
                    nxt = _normalized(base @ base, 2 * sb)
                    self.cost += 1
                    if self.cache:
                        self.ladder[2 * j] = nxt
                base, sb = nxt
                j *= 2
        assert out is not None
        return out

    def bound(self, k: int, p: np.ndarray, s: int, targets: list[float]) -> None:
        """A certified interval of log2 ‖A^k‖₂ (A^k = 2^(s + e·k)·P), tightened until it
        decides each of the log2 ``targets`` or the Schatten levels run out."""
        off = s + self.e * k
        if not np.any(p):
            self.lo[k] = self.hi[k] = -math.inf
            self.value[k] = 0.0
            self.exact[k] = self.evaluated[k] = True
            return
        self.evaluated[k] = True
        # gq = 2^-F·Gᵠ, G = PᵀP: log2 σ₁(P) = (F + log2 λ_max(gq)) / (2q).
        gq, f = _normalized(p.T @ p, 0)
        self.cost += 1
        levels = 1 if k < self.single_level_until else SCHATTEN_LEVELS
        big_f, q = f, 1
        x = self.x if self.x is not None else np.full(self.n, 1 / math.sqrt(self.n))
        for level in range(levels):
            for _ in range(2):  # power steps with Gᵠ from the warm vector
                y = gq @ x
                ny = float(np.linalg.norm(y))
                if ny == 0.0 or not math.isfinite(ny):
                    break
                x = y / ny
            rq = float(x @ (gq @ x))  # <= λ_max(gq) for the unit x
            lo = (big_f + _log2(rq)) / (2 * q) + off - self.round
            hi = (big_f + _log2(float(np.linalg.norm(gq)))) / (2 * q) + off + self.round
            self.lo[k], self.hi[k] = max(self.lo[k], lo), min(self.hi[k], hi)
            if self.hi[k] - self.lo[k] <= _slack(self.hi[k]) or all(
                    self.hi[k] <= t or self.lo[k] > t for t in targets):
                break
            if level + 1 < levels:
                gq, f = _normalized(gq @ gq, 0)
                self.cost += 1
                big_f, q = 2 * big_f + f, 2 * q
        if levels > 1 and self.hi[k] - self.lo[k] > 0.1:  # even Gᴬ⁴ leaves it wide
            self.single_level_until = k + 8  # (clustered top singular values)
        if np.all(np.isfinite(x)):
            self.x = x

    def svd(self, k: int) -> None:
        p, s = self.power(k)
        nrm = float(np.linalg.norm(p, 2))
        self.lo[k] = self.hi[k] = _log2(nrm) + s + self.e * k
        self.value[k] = ldexp(nrm, s + self.e * k)
        self.exact[k] = self.evaluated[k] = True
        self.svds += 1
        self.cost += SVD_COST

    def propagate(self) -> np.ndarray:
        """upper[k] = min(hi[k], min_j upper[j] + upper[k-j]) (log2; submultiplicativity)."""
        u = self.hi.copy()
        for k in range(2, self.k_max + 1):
            c = float(np.min(u[1:k] + u[k - 1:0:-1]))
            if c < u[k]:
                u[k] = c
        return u

    def _tail_below_one(self, k: int) -> bool:
        """Whether every power after k is certified <= 1, by the periodic bound
        u[qm + r] <= q·hi[m] + u[r] (q >= 1, 0 <= r < m) for the m <= k with the most
        negative hi[m]/m and for m = k (O(k) each; the full dynamic programming runs
        once the walk is over)."""
        u = self.frontier
        u[k] = min(self.hi[k], float(np.min(u[1:k] + u[k - 1:0:-1]))) if k > 1 \
            else self.hi[k]
        cands = {k}
        with np.errstate(invalid="ignore"):
            rate = np.where(self.hi[1:k + 1] < 0, self.hi[1:k + 1] / np.arange(1, k + 1), 0)
        if np.min(rate) < 0:
            cands.add(int(np.argmin(rate)) + 1)
        for m in cands:
            if not u[m] < 0.0:
                continue
            r = np.arange(m)
            q0 = np.maximum(1, (k - r) // m + 1)  # the smallest q with qm + r > k
            if np.all(u[r] + q0 * u[m] <= 0.0):
                return True
        return False

    def run(self) -> PowerNorms:
        k_max = self.k_max
        p, s = self.b.copy(), 0
        best = -math.inf  # the largest certified lower bound so far
        for k in range(1, k_max + 1):
            if k > 1:
                if k in self.ladder:
                    p, s = self.ladder[k]
                else:
                    p, s = _normalized(self.b @ p, s)
                    self.cost += 1
            if self.cache and k & (k - 1) == 0:
                self.ladder[k] = (p, s)
            self.bound(k, p, s, [best, 0.0])
            best = max(best, self.lo[k])
            if self.exact[k] and self.lo[k] == -math.inf:  # nilpotent: zero from here on
                self.lo[k + 1:] = self.hi[k + 1:] = -math.inf
                self.value[k + 1:] = 0.0
                self.exact[k + 1:] = self.evaluated[k + 1:] = True
                break
            if self._tail_below_one(k):
                break
            if self.cost > WALK_BUDGET * self.budget and k < k_max:
                return self._sparse(stopped=k)
            if k == PROBE_AFTER < k_max:
                pk, sk = self.power(k_max)
                self.bound(k_max, pk, sk, [0.0])
                if self.lo[k_max] > 0.0:  # still above 1 at k_max
                    return self._sparse()
        return self._certify()

    def growing(self, rho_lower: float) -> PowerNorms:
        """The curve of a matrix with ρ(A) >= ``rho_lower`` > 1 (see :func:`power_norms`):
        ρ^k is a certified lower bound of every ‖A^k‖₂; the powers 1, 2, 4, ... < k_max
        and k_max are bounded (one Gram product each, their squares shared), k_max and
        the best of them exactly."""
        rate = math.log2(rho_lower)
        self.lo[1:] = np.maximum(self.lo[1:], rate * np.arange(1, self.k_max + 1))
        k = 1
        while True:
            p, s = self.power(k)
            self.bound(k, p, s, [])
            if k == self.k_max:
                break
            k = min(2 * k, self.k_max)
        self.notes = (f"ρ(A) >= {rho_lower:.6g} > 1: ‖A^k‖₂ >= ρ(A)^k > 1 for every k, "
                      "so only the powers 2^i and k_max were evaluated",)
        return self._sparse()

    def _certify(self) -> PowerNorms:
        """Exact max, argmax and last k above 1 (dense SVDs where intervals cannot tell)."""
        while True:
            u = self.propagate()
            spent = self.cost > (WALK_BUDGET + CERTIFY_BUDGET) * self.budget
            best = float(np.max(self.lo[1:]))
            open_max = [k for k in range(1, self.k_max + 1) if not self.exact[k]
                        and u[k] > best + _slack(best)]
            if open_max and not spent:
                self.svd(max(open_max, key=lambda k: (u[k], -k)))
                continue
            above = np.nonzero(self.lo[1:] > 0.0)[0]
            last = int(above[-1]) + 1 if above.size else 0
            open_one = [k for k in range(last + 1, self.k_max + 1)
                        if u[k] > 0.0 and not self.exact[k]]
            if open_one and not spent:
                self.svd(max(open_one))
                continue
            self._exact_at_best()
            if open_max:
                u = self.propagate()
            return self._result(u, "lower_bound" if open_max else "exact", last,
                                "lower_bound" if open_one else "exact",
                                max(open_one) if open_one else last, None)

    def _sparse(self, stopped: int = 0) -> PowerNorms:
        """A curve above 1 at k_max (or the walk's budget spent at k = ``stopped``): the
        walked powers and k_max (exact), the rest bounded by the dynamic programming;
        the maximum as a lower bound with its certified upper bound, and the growth
        rate when the curve still exceeds 1 at k_max."""
        if not self.exact[self.k_max]:
            self.svd(self.k_max)
        u = self.propagate()
        growth = float(2.0 ** (self.lo[self.k_max] / self.k_max)) \
            if self.lo[self.k_max] > 0.0 else None
        self.stopped = stopped
        above = np.nonzero(self.lo[1:] > 0.0)[0]
        last = int(above[-1]) + 1 if above.size else 0
        maybe = np.nonzero(u[1:] > 0.0)[0]
        upper_last = int(maybe[-1]) + 1 if maybe.size else 0
        kind = "exact" if last == upper_last else "lower_bound"
        self._exact_at_best()
        u = self.propagate()
        best = float(np.max(self.lo[1:]))
        certain = bool(np.all(u[1:][~self.exact[1:]] <= best + _slack(best)))
        return self._result(u, "exact" if certain else "lower_bound", last, kind,
                            upper_last, growth)

    def _exact_at_best(self) -> None:
        """A dense SVD at the k of the largest lower bound, if only bounded there: the
        reported maximum is then always an exact ‖A^k‖₂ (of the max, a lower bound)."""
        i = int(np.argmax(np.where(self.evaluated[1:], self.lo[1:], -math.inf))) + 1
        if not self.exact[i]:
            self.svd(i)

    def _result(self, u: np.ndarray, max_kind: str, last: int, above_kind: str,
                last_upper: int, growth: float | None) -> PowerNorms:
        k_max = self.k_max
        ev = self.evaluated[1:]
        with np.errstate(over="ignore"):
            lower = np.where(ev, np.exp2(self.lo[1:]), 0.0)
            upper = np.exp2(u[1:])
        exact = self.exact[1:]
        lower = np.where(exact & ~np.isnan(self.value[1:]), self.value[1:], lower)
        upper = np.where(exact & ~np.isnan(self.value[1:]), self.value[1:], upper)
        norms = np.where(ev, lower, math.nan)
        i = int(np.argmax(np.where(ev, self.lo[1:], -math.inf)))
        value = float(norms[i])
        max_upper = value if max_kind == "exact" else float(np.max(upper))
        sup_exact = max_kind == "exact" and bool(np.any(self.hi[1:] < 0.0))
        notes = _range_notes(norms) + self.notes
        if growth is not None:
            notes += (f"‖A^k‖₂ still exceeds 1 at k = {k_max}: growth rate ‖A^k‖^(1/k) "
                      f"there {growth:.6g}",)
        if self.stopped:
            notes += (f"‖A^k‖₂ bounded, not computed, from k = {self.stopped} on (work "
                      "budget of the certified walk)",)
        if max_kind != "exact":
            notes += (f"max ‖A^k‖₂ over k <= {k_max}: a lower bound (certified upper "
                      f"bound {max_upper:.6g})",)
        if above_kind != "exact":
            notes += (f"last k with ‖A^k‖₂ > 1: between {last} and {last_upper}",)
        return PowerNorms(norms, value, i + 1, sup_exact, last, notes, upper=upper,
                          lower=lower, exact_points=exact.copy(), max_kind=max_kind,
                          max_upper=max_upper, above_one_kind=above_kind,
                          last_above_one_upper=last_upper, growth_rate=growth,
                          evaluations=int(np.sum(ev)), svds=self.svds)


def transient_window(kappa_v: float | None, rho: float) -> float | None:
    """ln κ(V) / (-ln ρ) for 0 < ρ < 1 and a defined κ(V); None otherwise."""
    if kappa_v is None or not (0.0 < rho < 1.0) or not math.isfinite(kappa_v):
        return None
    return math.log(kappa_v) / -math.log(rho)


def kreiss_lower_bound(a: np.ndarray, per_decade: int = 2, angular: int = 24,
                       refine: int | None = None, *, schur: np.ndarray | None = None,
                       norm_upper: float | None = None,
                       powers: PowerNorms | None = None,
                       spectral_radius: float | None = None) -> KreissBound:
    """A certified lower bound of the Kreiss constant K(A) = sup_{|z|>1} (|z|-1)‖(zI-A)⁻¹‖₂;
    inf when ρ(A) >= 1.

    K(A) >= 1 always: (|z|-1)‖(zI-A)⁻¹‖₂ -> 1 as |z| -> ∞. The search covers |z| = 1 + d
    with d log-spaced from 1e-8 to 1e4·max(1, ‖A‖_F) (``per_decade`` radii a decade) times
    ``angular`` equispaced angles plus the arguments of the dominant eigenvalues (for a
    real A only the upper half plane: σ_min(z̄I - A) = σ_min(zI - A)). The grid ranks
    points (exact batched SVDs for n <= SMALL, else a few steps of inverse iteration,
    whose ratios never exceed the true ones); the best points overall and the best of every
    decade of d are evaluated by inverse iteration on the Schur factor run to convergence
    (an upper estimate of σ_min, so again never above the true ratio), and the best
    ``refine`` of those are refined by bounded 1-D searches (Brent's method) in log d and
    in the angle (only those above the floor 1). The value is the ratio at the best z
    found, evaluated by a dense SVD of
    zI - T (``argmax`` records z), or 1 (the limit |z| -> ∞, ``argmax`` None) if that is
    larger: a lower bound of K(A), never an estimate.

    ``schur``: the complex Schur factor T of 2^-e·A (e = ``scale_exponent(a)``), when the
    caller has it (one factorization shared with the eigen-analysis); ``norm_upper``: an
    upper bound of ‖A‖₂ (e.g. from :func:`power_norms`), which spares an SVD when <= 1.
    ``powers`` (the certified power curve of A, when known) prunes the grid: on |z| = r,
    ‖(zI-A)⁻¹‖ <= Σ_{k>=0} ‖A^k‖ r^(-k-1) (Neumann series), so no z on a circle where
    g(r) = (r-1)·Σ_k upper_k r^(-k-1) <= 1 can beat the floor 1, and such radii are
    skipped (the tail beyond k_max bounded geometrically, see :func:`neumann_bound`).
    ``spectral_radius`` (ρ(A) from the caller's eigenvalues) decides K = inf before any
    factorization; the Schur factor is computed only when the search needs it. Before
    any search, a certified numerical radius w(A) <= 1 (:func:`numerical_radius_upper`,
    three symmetric eigenvalue problems, tried where the given ρ(A) is below
    RANGE_CERTIFY_MAX_RHO)
    gives K(A) = 1 exactly: the resolvent ratio never exceeds 1 outside the unit disk."""
    a = np.asarray(a, dtype=np.float64)
    e = scale_exponent(a)
    b = ldexp(a, -e)  # exact; zI - A = 2^e (2^-e z I - B)
    if spectral_radius is not None and spectral_radius >= 1.0:
        return KreissBound(math.inf, None, 0, ("ρ(A) >= 1: K(A) = inf",))
    if spectral_radius is not None and norm_upper is not None and norm_upper <= 1.0:
        return KreissBound(1.0, None, 0, ("‖A‖₂ <= 1: K(A) = 1 exactly, the limit of "
                                          "(|z|-1)‖(zI-A)⁻¹‖ as |z| -> ∞",))
    if spectral_radius is not None and spectral_radius < RANGE_CERTIFY_MAX_RHO:
        w = ldexp(numerical_radius_upper(b), e)
        if w <= 1.0:
            return KreissBound(1.0, None, 0, (
                f"numerical radius w(A) <= {w:.6g} <= 1, so (|z|-1)‖(zI-A)⁻¹‖ <= "
                "(|z|-1)/(|z|-w(A)) <= 1 for |z| > 1: K(A) = 1 exactly, the limit as "
                "|z| -> ∞",))
    t = complex_schur(b) if schur is None else schur
    lam = np.diag(t)
    rho = ldexp(float(np.max(np.abs(lam))), e)
    if rho >= 1.0:
        return KreissBound(math.inf, None, 0, ("ρ(A) >= 1: K(A) = inf",))
    if (norm_upper if norm_upper is not None and norm_upper <= 1.0
            else ldexp(float(np.linalg.norm(b, 2)), e)) <= 1.0:
        # A contraction: ‖(zI-A)⁻¹‖ <= 1/(|z| - ‖A‖) <= 1/(|z| - 1), so the ratio never
        # exceeds its limit 1 as |z| -> ∞ (Trefethen & Embree 2005, ch. 18): K(A) = 1.
        return KreissBound(1.0, None, 0, ("‖A‖₂ <= 1: K(A) = 1 exactly, the limit of "
                                          "(|z|-1)‖(zI-A)⁻¹‖ as |z| -> ∞",))
    ratio = _ResolventRatio(t, e)
    if refine is None:  # each refinement costs ~50 inverse iterations
        refine = 2 if a.shape[0] <= 128 else 1
    if norm_upper is not None and math.isfinite(norm_upper):
        # Beyond |z| = 1 + 100·max(1, ‖A‖), (|z|-1)‖(zI-A)⁻¹‖ <= (|z|-1)/(|z|-‖A‖) stays
        # within 1 + 1/99 of the floor: the grid ends there.
        top = min(math.log10(1e2 * max(1.0, norm_upper)), 300.0)
    else:
        top = min(math.log10(1e4 * max(1.0, ldexp(float(np.linalg.norm(t)), e))), 300.0)
    logd = np.linspace(-8.0, top, int((top + 8) * per_decade) + 1)
    if powers is not None:
        keep = neumann_bound(powers, 1 + 10.0 ** logd) > 1.0
        if not np.any(keep):
            return KreissBound(1.0, None, 0, (
                "(|z|-1)·Σ‖A^k‖|z|^(-k-1) <= 1 on every searched circle (Neumann series "
                "with the certified power norms): no evaluated |z| > 1 beats the limit 1 "
                "of (|z|-1)‖(zI-A)⁻¹‖ as |z| -> ∞",))
        logd = logd[keep]
    dominant = lam[np.argsort(-np.abs(lam))[:8]]
    angles = np.r_[np.linspace(-np.pi, np.pi, angular, endpoint=False), np.angle(dominant)]
    if not np.iscomplexobj(a):  # real A: the ratio is symmetric about the real axis
        angles = np.abs(angles)
        angles = angles[angles <= np.pi + 1e-12]
    angles = np.unique(np.round(angles, 12))
    zs = ((1 + 10.0 ** logd)[:, None] * np.exp(1j * angles)[None, :])
    vals = ratio.coarse(zs.ravel()).reshape(zs.shape)
    picks = {int(i) for i in np.argsort(-vals, axis=None)[:refine]}
    decade = np.floor(logd * (1 + 1e-12)).astype(int)
    for dec in np.unique(decade):  # the best point of every decade of d
        rows = np.nonzero(decade == dec)[0]
        band = vals[rows]
        i, j = np.unravel_index(int(np.argmax(band)), band.shape)
        picks.add(int(rows[i]) * angles.size + int(j))
    found = sorted(((ratio.sharp(complex(zs.flat[i])), complex(zs.flat[i]))
                    for i in picks), key=lambda p: -p[0])
    step_d, step_t = 1.0 / per_decade, 2 * np.pi / angular
    for value, z in found[:refine]:
        if value > 1.0:  # a peak above the floor: refine it (else the floor stands)
            found.append(_refine(ratio, z, value, step_d, step_t))
    # The value reported is a dense SVD at a recorded z. The points of the search are
    # ranked by converged inverse iteration (never above the true ratio): the best gets
    # the SVD, and so does the next while its estimate beats every certified value so
    # far (at most CERTIFIED_POINTS SVDs).
    found.sort(key=lambda p: -p[0])
    certified: list[tuple[float, complex]] = []
    for est, z in found[:CERTIFIED_POINTS]:
        if certified and est <= max(v for v, _ in certified):
            break
        certified.append((ratio.exact(z), z))
    best, best_z = max(certified, key=lambda p: p[0])
    if not best > 1.0:
        return KreissBound(1.0, None, ratio.evaluations,
                           ("no evaluated |z| > 1 beats the limit 1 of (|z|-1)‖(zI-A)⁻¹‖ "
                            "as |z| -> ∞",))
    notes: tuple[str, ...] = ()
    if math.isinf(best):
        notes = ("(|z|-1)‖(zI-A)⁻¹‖₂ exceeds the float64 range at the recorded z",)
    return KreissBound(best, best_z, ratio.evaluations, notes)


def numerical_radius_upper(a: np.ndarray, angles: int = RANGE_ANGLES) -> float:
    """A certified upper bound of the numerical radius w(A) = max_{‖x‖=1} |xᴴAx|.

    The numerical range W(A) is convex (Toeplitz-Hausdorff) and lies in every half-plane
    Re(e^{iθ}z) <= λ_max(H(θ)), H(θ) = (e^{iθ}A + e^{-iθ}Aᴴ)/2 (Johnson, SIAM J. Numer.
    Anal. 15, 1978). With h = max_j λ_max(H(θ_j)) over ``angles`` equispaced θ_j, W(A)
    lies in the regular polygon circumscribed about the disk of radius h, whose corners
    are at h/cos(π/angles): w(A) <= h/cos(π/angles). λ_max(H(θ+π)) = -λ_min(H(θ)), so
    one ``eigvalsh`` serves two angles; for a real A, H(-θ) = conj(H(θ)) has the same
    eigenvalues, so only θ in [0, π/2] are factorized (3 for 8 angles). Rounding (forming
    H, the backward-stable ``eigvalsh``) is covered by 64·n·eps·‖A‖_F, added to h.

    What it is for: σ_min(zI - A) >= dist(z, W(A)) (for a unit x, ‖(zI-A)x‖ >=
    |xᴴ(zI-A)x| = |z - xᴴAx|; Trefethen & Embree, *Spectra and Pseudospectra*, 2005,
    §17: σ_ε(A) ⊆ W(A) + Δ_ε), so w(A) <= 1 gives (|z|-1)‖(zI-A)⁻¹‖ <= (|z|-1)/(|z|-w(A))
    <= 1 on |z| > 1: K(A) = 1 with no search."""
    a = np.asarray(a)
    n = a.shape[0]
    if n == 0:
        return 0.0
    if angles < 4 or angles % 4:
        raise ValueError(f"angles: expected a positive multiple of 4, got {angles}")
    real = not np.iscomplexobj(a)
    ah = a.conj().T
    sym, skew = (a + ah) / 2, (a - ah) / 2  # H(θ) = cos θ·sym + i sin θ·skew
    last = angles // 4 if real else angles // 2 - 1
    h = -math.inf
    for j in range(last + 1):
        theta = 2 * math.pi * j / angles
        c, s = math.cos(theta), math.sin(theta)
        if real and j == 0:
            herm = sym
        else:
            herm = (c * sym + (1j * s) * skew).astype(np.complex128)
        lam = np.linalg.eigvalsh(herm)
        h = max(h, float(lam[-1]), -float(lam[0]))
    slack = 64 * n * EPS64 * float(np.linalg.norm(a))
    return (h + slack) / math.cos(math.pi / angles)


def neumann_bound(powers: PowerNorms, r: np.ndarray) -> np.ndarray:
    """g(r) = (r-1)·Σ_{k>=0} u_k r^(-k-1) >= (r-1)‖(zI-A)⁻¹‖₂ on |z| = r > 1, with u_0 = 1,
    u_k the certified upper bounds of ‖A^k‖₂ (k <= k_max) and, beyond k_max, when some
    u_m < 1: u_k <= M·u_m^floor(k/m) <= (M/u_m)·c^k, c = u_m^(1/m), M = max_{j<m} u_j
    (submultiplicativity), a geometric tail summed in closed form. inf where no u_m < 1
    (the tail is not bounded) or r <= c."""
    r = np.asarray(r, dtype=np.float64)
    up = powers.upper
    if up is None or not np.any(up < 1.0):
        return np.full(r.shape, math.inf)
    u = np.r_[1.0, up]
    k_max = up.size
    with np.errstate(divide="ignore"):
        rate = np.where(up < 1.0, np.log(np.maximum(up, 1e-300)) / np.arange(1, k_max + 1),
                        np.inf)
    m = int(np.argmin(rate)) + 1
    c = math.exp(float(rate[m - 1]))
    big = float(np.max(u[:m])) / max(float(up[m - 1]), 1e-300)
    ks = np.arange(k_max + 1)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        logr = np.log(r)[:, None]
        head = np.sum(np.exp(np.log(np.maximum(u, 1e-300))[None, :] - (ks[None, :] + 1)
                             * logr), axis=1)
        q = c / r
        tail = np.where(q < 1, big / r * np.exp((k_max + 1) * np.log(np.maximum(q, 1e-300)))
                        / (1 - q), np.inf)
        return (r - 1) * (head + tail)


class _ResolventRatio:
    """f(z) = (|z|-1)·‖(zI - A)⁻¹‖₂ = (|z|-1)/σ_min(zI - A) for A = 2^e·B, B = Q T Qᴴ
    (σ_min(zI - A) = σ_min(zI - T): Q is unitary)."""

    def __init__(self, t: np.ndarray, e: int) -> None:
        self.t, self.e = t, e
        self.n = t.shape[0]
        self.evaluations = 0
        self.x: np.ndarray | None = None  # the last converged vector (warm start)
        self.neg_t: np.ndarray | None = None  # -T in Fortran order (BLAS solves)

    def _finish(self, zs: np.ndarray, smin_b: np.ndarray) -> np.ndarray:
        """(|z|-1) / (2^e σ_min(2^-e z I - B)), inf where σ_min = 0 or past 1.8e308."""
        with np.errstate(divide="ignore", over="ignore"):
            return ldexp((np.abs(zs) - 1) / smin_b, -self.e)

    def _w(self, z: complex) -> complex:
        return complex(ldexp(np.array([z]), -self.e)[0])

    def coarse(self, zs: np.ndarray) -> np.ndarray:
        """Ratios on many points: exact batched SVDs for small n, else six (four past
        COARSE_SIX_MAX_N) steps of inverse iteration run on all points at once (their σ_min
        estimates never fall below the true σ_min, so these ratios never exceed the true
        ones; they only rank the grid)."""
        self.evaluations += zs.size
        w = ldexp(zs, -self.e)
        if self.n <= SMALL:
            return self._finish(zs, _smin_batched_svd(self.t, w))
        iters = 6 if self.n <= COARSE_SIX_MAX_N else 4
        return self._finish(zs, _smin_batched_inverse(self.t, w, iters=iters))

    def sharp(self, z: complex) -> float:
        """The ratio with σ_min(zI - T) from inverse iteration on the triangular Schur
        factor run to convergence (O(n²) a step, warm-started from the last point):
        for a unit x, 1/‖(zI - T)⁻ᴴx‖ >= σ_min, so the value never exceeds the true
        ratio. A dense SVD (:meth:`exact`) for n <= SMALL, where it is as cheap."""
        if self.n <= SMALL:
            return self.exact(z)
        ztrsv = fblas().ztrsv
        self.evaluations += 1
        if self.neg_t is None:
            self.neg_t = np.asfortranarray(-self.t, dtype=np.complex128)
        m = self.neg_t.copy(order="F")
        m[np.diag_indices(self.n)] += self._w(z)
        if not np.all(np.diag(m)):  # exactly singular: z is an eigenvalue
            return math.inf
        x = self.x if self.x is not None else np.full(self.n, 1 / math.sqrt(self.n),
                                                      dtype=np.complex128)
        best = math.inf
        for _ in range(SHARP_ITERATIONS):
            y = ztrsv(m, x, trans=2)  # Mᴴ y = x (BLAS: no checks, no copies of M)
            v = ztrsv(m, y)  # M v = y
            ny, nv = float(np.linalg.norm(y)), float(np.linalg.norm(v))
            if not (math.isfinite(nv) and math.isfinite(ny) and nv > 0.0):
                return math.inf  # σ_min(M) below the float64 range: M is singular
            est = 1.0 / ny  # >= σ_min (x is a unit vector)
            x = v / nv
            done = est >= best * (1 - SHARP_RTOL)
            best = min(best, est)
            if done:
                break
        self.x = x
        return float(self._finish(np.array([z]), np.array([best]))[0])

    def exact(self, z: complex) -> float:
        """The certified value: σ_min(zI - T) by a dense SVD."""
        self.evaluations += 1
        s = _smin_batched_svd(self.t, np.array([self._w(z)]))[0]
        return float(self._finish(np.array([z]), np.array([s]))[0])


def _brent_max(f, lo: float, hi: float, x0: float, f0: float, tol: float,
               max_evals: int = 16) -> tuple[float, float]:
    """Maximize f on [lo, hi] from the point x0 (f(x0) = f0 known) by Brent's method:
    parabolic interpolation through the best three points, a golden-section step where
    the parabola is not trusted, stopped when the bracket around the best point is
    within ``tol`` or after ``max_evals`` evaluations (R. P. Brent, *Algorithms for
    Minimization without Derivatives*, 1973, ch. 5, procedure localmin, here on -f).
    Returns the best (value, argument) evaluated, never below (f0, x0)."""
    golden = (3 - math.sqrt(5)) / 2
    a, b = lo, hi
    x = w = v = x0
    fx = fw = fv = -f0
    d = e = 0.0
    for _ in range(max_evals):
        m = (a + b) / 2
        tol1 = tol + 2 * EPS64 * abs(x)
        if abs(x - m) <= 2 * tol1 - (b - a) / 2:
            break
        parabolic = False
        if abs(e) > tol1:
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = 2 * (q - r)
            if q > 0:
                p = -p
            q = abs(q)
            if abs(p) < abs(0.5 * q * e) and q * (a - x) < p < q * (b - x):
                e, d = d, p / q
                parabolic = True
                if (x + d) - a < 2 * tol1 or b - (x + d) < 2 * tol1:
                    d = tol1 if x < m else -tol1
        if not parabolic:
            e = (a - x) if x >= m else (b - x)
            d = golden * e
        u = x + (d if abs(d) >= tol1 else math.copysign(tol1, d))
        fu = -f(u)
        if fu <= fx:
            if u < x:
                b = x
            else:
                a = x
            v, fv, w, fw, x, fx = w, fw, x, fx, u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu <= fv or v == x or v == w:
                v, fv = u, fu
    return -fx, x


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


#: Rows per block of the batched triangular solves (BLAS-3 between blocks).
SOLVE_BLOCK = 32


def _smin_batched_inverse(t: np.ndarray, w: np.ndarray, iters: int) -> np.ndarray:
    """Upper estimates of σ_min(w_k I - T), T upper triangular, for all w_k at once:
    inverse iteration on MᴴM (M = w_k I - T) with back/forward substitution vectorized
    over the points; 1/sqrt(‖(MᴴM)⁻¹x‖) >= σ_min for every unit x.

    Only M's diagonal depends on w_k; its off-diagonal part is -T for every point, so
    the substitutions run in blocks of :data:`SOLVE_BLOCK` rows: what the rows already
    solved contribute to a block is one matrix product over all the points, and only
    the rows inside a block are solved one at a time (Golub & Van Loan, *Matrix
    Computations*, 4th ed., §3.1.4, block triangular solves)."""
    n = t.shape[0]
    d = w[None, :] - np.diag(t)[:, None]  # diagonal of each M, (n, Z)
    dc = d.conj()
    x = np.full((n, w.size), 1 / math.sqrt(n), dtype=np.complex128)
    est = np.full(w.size, np.inf)
    tc = t.conj()
    blocks = [(i, min(i + SOLVE_BLOCK, n)) for i in range(0, n, SOLVE_BLOCK)]
    y = np.empty_like(x)
    v = np.empty_like(x)
    for _ in range(iters):
        for i0, i1 in blocks:  # Mᴴ y = x (lower triangular), block rows top down
            acc = x[i0:i1] + tc[:i0, i0:i1].T @ y[:i0] if i0 else x[i0:i1].copy()
            for i in range(i0, i1):
                y[i] = (acc[i - i0] + tc[i0:i, i] @ y[i0:i]) / dc[i]
        for i0, i1 in reversed(blocks):  # M v = y (upper triangular), bottom up
            acc = y[i0:i1] + t[i0:i1, i1:] @ v[i1:] if i1 < n else y[i0:i1].copy()
            for i in range(i1 - 1, i0 - 1, -1):
                v[i] = (acc[i - i0] + t[i, i + 1:i1] @ v[i + 1:i1]) / d[i]
        nrm = np.linalg.norm(v, axis=0)
        ok = np.isfinite(nrm) & (nrm > 0)
        est = np.where(ok, np.minimum(est, 1 / np.sqrt(np.where(ok, nrm, 1.0))), 0.0)
        x = v / np.where(ok, nrm, 1.0)[None, :]
    return est


def _refine(ratio: _ResolventRatio, z0: complex, f0: float, step_d: float,
            step_t: float) -> tuple[float, complex]:
    """Bounded 1-D maximizations (:func:`_brent_max`) of the ratio in log10(|z|-1), then in
    arg z, then in log10(|z|-1) again, each within one grid cell around the best point
    so far; returns the best (value, z) evaluated."""
    x, th = math.log10(abs(z0) - 1), float(np.angle(z0))
    best = f0

    def point(x_: float, th_: float) -> complex:
        return complex((1 + 10.0 ** x_) * np.exp(1j * th_))

    for axis in ("d", "angle", "d"):
        if axis == "d":
            best, x = _brent_max(lambda v: ratio.sharp(point(v, th)), x - step_d,
                                 x + step_d, x, best, REFINE_TOL * step_d)
        else:
            best, th = _brent_max(lambda v: ratio.sharp(point(x, v)), th - step_t,
                                  th + step_t, th, best, REFINE_TOL * step_t)
    return best, point(x, th)
