"""Dense LAPACK backend: full singular spectra and eigenvalues, exact to rounding.

CPU: numpy's LAPACK (scipy for the LU/QR factors and the ``gesvd`` fallback; torch's
``eigvalsh`` for Gram matrices of side >= :data:`TORCH_EIGVALSH_MIN_DIM`). CUDA
(``device="cuda"``): ``torch.linalg`` on the GPU. float64 by default, float32 on request.

Two CPU routes to the singular values of an ``m x n`` matrix ``W`` (``k = min(m, n)``):

``gram``
    ``eigvalsh`` of the ``k x k`` Gram matrix (``WᵀW`` or ``WWᵀ``), ``sigma = sqrt(lambda)``.
    About ``m k²`` flops instead of LAPACK's ``4 m k²``, but squaring loses accuracy at
    the bottom of the spectrum: a backward error ``δ ≈ c·eps·σ_max²`` in the eigenvalues
    (Demmel, *Applied Numerical Linear Algebra*, 1997, §5.2 and Thm 5.5) moves ``σ_i`` by
    at most ``min(√δ, δ/σ_i)``, a relative error ``c·eps·κ²/2`` in ``σ_min``. We model
    ``c = sqrt(k)`` (conservative by 3-6x on the calibration set in
    ``tests/backends/test_dense_routes.py``). When the predicted relative error of κ is
    at most :data:`GRAM_KAPPA_REL_ERR` (1e-9, ten times below the 1e-8 contract) the Gram
    values are the result (route ``gram``). Otherwise the values whose error bound exceeds
    :data:`REFINE_TARGET`·σ_max, σ_min among them, are *refined* (routes ``gram+lu``
    for a square matrix, ``gram+qr`` otherwise): subspace iteration with ``(FᵀF)⁻¹``,
    where ``F`` is ``W`` itself (square, through its LU factor) or the ``R`` of
    ``W = QR`` (inverse subspace iteration; Golub & Van Loan, *Matrix Computations*, 4th
    ed., §8.2.4 and §8.6.1), then Rayleigh–Ritz on ``F``: the right Ritz vectors ``ṽ``
    of the smallest singular values of ``F X``. The left vectors come from ``F⁻ᵀṽ``
    (accurate to rounding, where ``Fṽ/σ̃`` would amplify ``ṽ``'s rounding by κ), ``σ̃``
    is the two-sided Rayleigh quotient ``ũᵀFṽ`` and ``ρ`` the residual of ``[ũ; ṽ]/√2``
    as an eigenvector of the augmented matrix ``[[0, F], [Fᵀ, 0]]``, whose error is at
    most ``ρ²/gap`` (Kato–Temple; Parlett, *The Symmetric Eigenvalue Problem*, 1998,
    Thm 10.6.1), the gap taken to every other singular value's Gram enclosure and to
    ``-σ̃``, and at most ``ρ`` when no gap is known. Refined are the values whose Gram
    bound exceeds the target and every value whose enclosure reaches σ_min's (any of
    them may be the smallest). The iteration stops when every refined value's bound is
    below its target (:data:`REFINE_TARGET`·σ_max, and 1e-10 relative); each must also
    lie in its own Gram enclosure, or the route is abandoned. Refinement is tried for at
    most :func:`refine_limit` values (k/64, at least 64, at most k/4): more, a singular
    factor or no convergence in :data:`REFINE_MAX_STEPS` steps fall back to gesdd, with
    a note.
``gesdd``
    LAPACK's divide-and-conquer SVD (``numpy.linalg.svd``'s driver), backward stable:
    every singular value within ``p(m, n)·eps·σ_max`` (Golub & Van Loan, *Matrix
    Computations*, 4th ed., §8.6). If it fails to converge, ``gesvd`` is tried next.

``auto`` tries ``gram`` first for matrices of aspect ratio >= 2 and for those whose
smaller side is at least 512 (:func:`spectrum_cli.core.backend.auto_takes_gram`); small
near-square ones go straight to ``gesdd``. On one core, for the 2048 x 2048 attention
projections of bench/make_llm_shaped.py's TinyLlama shape, gesdd takes ~2.2 s and the
Gram eigenvalues plus refinement ~0.75 s, 8 values refined (``bench/bench_dense_routes.py``).

Threads: every LAPACK/BLAS call here runs on one thread
(:func:`spectrum_cli.core.measure.single_threaded`), so that a matrix gives the same bits
whatever ``--jobs``/``--threads``/Dask chose (their rounding depends on the thread count);
only the Gram product of big matrices is split, into shape-fixed tiles of one-threaded
BLAS calls (:func:`spectrum_cli.core.measure.gram_tiles`; the crossover and the
measurements are in that module).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np

from spectrum_backends._common import as_torch, check_options, cuda_note, select
from spectrum_cli.core.backend import SVD_ROUTES, Capabilities, auto_takes_gram, check_which
from spectrum_cli.core.linear_operator import as_operator
from spectrum_cli.core.measure import gram_tiles, single_threaded
from spectrum_cli.core.results import Eigenvalues, SingularValues
from spectrum_cli.core.scaling import ldexp, scale_exponent, scaled_result

EPS = float(np.finfo(np.float64).eps)
#: Largest predicted relative error of kappa for which the Gram values are kept unrefined.
GRAM_KAPPA_REL_ERR = 1e-9
#: Gram values whose error bound exceeds this fraction of σ_max are refined (under a third
#: of the contract's 1e-10·σ_max; the bound itself is conservative: on the TinyLlama-shaped
#: bench matrices the real error of every Gram value was at most 8% of it); σ_min is
#: refined to 1e-10 relative.
REFINE_TARGET = 3e-11
#: Refinement is tried for up to max(REFINE_MAX, k // REFINE_PER_SIDE) values (and at most
#: k/4; :func:`refine_limit`). Its cost is the LU or QR factor (2/3·k³ or 4/3·k³ flops)
#: plus ~11 steps of ~12·k²·r flops, all BLAS-3, against gesdd's 8/3·k³ of which half
#: runs at BLAS-2 (memory) speed: at r = k/64 still the cheaper of the two. Measured on
#: one core, a 8192 x 8192 projection of bench/make_llm_shaped.py's Llama-2-70B shape
#: (105 values to refine): Gram 24.7 s + refinement 25.7 s, where gesdd takes 276 s.
REFINE_MAX = 64
REFINE_PER_SIDE = 64
REFINE_MAX_STEPS = 30
#: Seed of the refinement's start block: the same matrix always gives the same numbers.
REFINE_SEED = 20261205
#: Gram matrices of at least this side go to torch's eigvalsh (MKL's syevd: 0.30 s at
#: k = 2048 on one core, numpy's OpenBLAS 0.66 s; equal below 1024).
TORCH_EIGVALSH_MIN_DIM = 1024
ROUTES = SVD_ROUTES  # the routes --svd-route names (core owns the list)
ALL = ("all", "largest", "smallest")


class DenseBackend:
    """LAPACK in float64 (float32 on request), CPU or CUDA. Exact to rounding."""

    name = "dense"
    description = "LAPACK full spectra, float64 (Gram shortcut checked, falls back to gesdd)"
    capabilities = Capabilities(singular_values=ALL, eigenvalues_symmetric=ALL,
                                eigenvalues=ALL, devices=("cpu", "cuda"),
                                dtypes=("float64", "float32"), accuracy="exact")

    def available(self) -> tuple[bool, str]:
        return True, ""

    def device_support(self) -> str:
        return f"cpu, {cuda_note()}"

    def singular_values(self, op: Any, k: int | None = None, which: str = "all", *,
                        route: str = "auto", dtype: str = "float64", device: str = "cpu",
                        frobenius_norm: float | None = None, **_: Any) -> SingularValues:
        """The singular values of ``op`` (all, or the k largest/smallest), descending.
        ``frobenius_norm``, if the caller has it, saves the Gram route a pass over A."""
        check_which(which, ALL, "singular values", self.name)
        check_options(self.name, dtype, device, self.capabilities.devices)
        a = _explicit(op)
        if device == "cpu" and dtype == "float64" and not _is_torch(a):
            sv = singular_values(a, route=route, frobenius_norm=frobenius_norm)
        else:  # scaled in the input's own precision, before any cast to float32
            e = scale_exponent(a, frobenius_norm, dtype)
            with single_threaded():
                sv = scaled_result(_torch_svdvals(ldexp(a, -e), dtype, device), e)
        if which == "all":
            return sv
        return _replace(sv, values=select(sv.values, k, which), which=which)

    def eigenvalues_symmetric(self, op: Any, k: int | None = None, which: str = "all",
                              **_: Any) -> Eigenvalues:
        """Eigenvalues of a symmetric operator, descending (LAPACK ``syevd``)."""
        check_which(which, ALL, "eigenvalues", self.name)
        a = np.asarray(_numpy(_explicit(op)), dtype=np.float64)
        t0 = time.perf_counter()
        e = scale_exponent(a)
        with single_threaded():
            lam = ldexp(_eigvalsh(ldexp(a, -e))[::-1].copy(), e)
        return Eigenvalues(select(lam, k, which), self.name, "syevd", "exact",
                           time.perf_counter() - t0, which=which)

    def eigenvalues(self, op: Any, k: int | None = None, which: str = "all",
                    **_: Any) -> Eigenvalues:
        """Eigenvalues of a square operator by decreasing modulus (LAPACK ``geev``)."""
        check_which(which, ALL, "eigenvalues", self.name)
        ev = eigenvalues(np.asarray(_numpy(_explicit(op)), dtype=np.float64))
        if which == "all":
            return ev
        return _replace(ev, values=select(ev.values, k, which), which=which)


def _replace(obj, **changes):
    from dataclasses import replace

    return replace(obj, **changes)


def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().double().numpy() if _is_torch(a) else a


def _explicit(op: Any) -> Any:
    a = as_operator(op).dense()
    if a is None:
        raise NotImplementedError("the dense backend needs an explicit matrix; use "
                                  "'lanczos' for matrix-free operators")
    return a


def _torch_svdvals(a: Any, dtype: str, device: str) -> SingularValues:
    import torch

    t0 = time.perf_counter()
    t = as_torch(a, device, dtype)
    s = torch.linalg.svdvals(t)
    if device == "cuda":
        torch.cuda.synchronize()
    values = s.cpu().double().numpy()
    eps = float(torch.finfo(t.dtype).eps)
    # The cast to the working precision moves every entry by at most eps·|a_ij|, so A by
    # at most eps·‖A‖_F <= eps·√k·σ_max; the SVD itself is backward stable with a
    # backward error modelled as 2·max(m, n)·eps·‖A‖₂ (Golub & Van Loan §8.6; 2x the
    # float64 path's model, which float32 on the conformance set exceeded by 1.15x).
    m, n = t.shape
    err = (2 * max(m, n) + math.sqrt(min(m, n))) * eps * float(values[0])
    return SingularValues(values, "dense", f"torch-svdvals-{device}", "exact", err,
                          time.perf_counter() - t0, settings={"dtype": dtype, "device": device})


def gram_kappa_limit(k: int, rel_err: float = GRAM_KAPPA_REL_ERR) -> float:
    """Largest kappa for which the Gram route's predicted error stays below ``rel_err``."""
    return math.sqrt(2.0 * rel_err / (math.sqrt(max(k, 1)) * EPS))


def _validate(a: np.ndarray) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(f"a: expected a 2-D numpy array, got {type(a).__name__} "
                         f"with shape {getattr(a, 'shape', None)}")
    if a.dtype != np.float64:
        raise ValueError(f"a: expected float64, got {a.dtype}")
    if 0 in a.shape:
        raise ValueError(f"a: expected a non-empty matrix, got shape {a.shape}")
    return a


def singular_values(a: np.ndarray, route: str = "auto",
                    frobenius_norm: float | None = None) -> SingularValues:
    """All ``min(m, n)`` singular values of a finite float64 matrix, descending.

    Entries near the float64 limits (max |a_ij| outside 2^±200) are first scaled by a
    power of two (exact, see :mod:`spectrum_cli.core.scaling`) and the values scaled back.
    One library thread (the same bits whatever the parallelism; see the module notes).
    """
    _validate(a)
    if route not in ROUTES:
        raise ValueError(f"route: expected one of {ROUTES}, got {route!r}")
    e = scale_exponent(a, frobenius_norm)
    with single_threaded():
        if e:
            fro = None if frobenius_norm is None else ldexp(frobenius_norm, -e)
            return scaled_result(_singular_values(ldexp(a, -e), route, fro), e)
        return _singular_values(a, route, frobenius_norm)


def _singular_values(a: np.ndarray, route: str,
                     frobenius_norm: float | None) -> SingularValues:
    t0 = time.perf_counter()
    m, n = a.shape
    notes: list[str] = []
    if route == "gram" or (route == "auto" and auto_takes_gram(m, n)):
        got = _gram_route(a, frobenius_norm)
        if not isinstance(got, str):
            values, err, used, settings = got
            return SingularValues(values, "dense", used, "exact", err,
                                  time.perf_counter() - t0, settings=settings)
        notes.append(f"gram route rejected ({got}); fell back to gesdd")
    values, used = _lapack_route(a)
    if used != "gesdd":
        notes.append("gesdd did not converge; used gesvd")
    err = max(m, n) * EPS * float(values[0])
    return SingularValues(values, "dense", used, "exact", err,
                          time.perf_counter() - t0, tuple(notes))


def _gram_route(a: np.ndarray, fro: float | None = None
                ) -> tuple[np.ndarray, float, str, dict[str, Any]] | str:
    """(values, error bound, route, settings), or why the route cannot promise the
    contract."""
    if fro == 0.0:
        return "zero matrix"
    # Scale by a power of two (exact) so that squaring neither overflows nor underflows;
    # a known, moderate ‖A‖_F proves no scaling is needed and saves a pass over A.
    e = 0
    if fro is None or not 1e-140 < fro < 1e140:
        amax = max(float(a.max()), -float(a.min()))  # no |a| temporary: page faults
        if amax == 0.0:
            return "zero matrix"
        _, e = math.frexp(amax)
    scaled = np.ldexp(a, -e) if abs(e) > 200 else a
    tall = scaled if scaled.shape[0] >= scaled.shape[1] else scaled.T
    k = tall.shape[1]
    lam = _eigvalsh(gram_tiles(tall))[::-1]  # LAPACK syevd, descending
    if lam[0] <= 0.0:
        return "zero matrix"
    kappa = math.sqrt(lam[0] / lam[-1]) if lam[-1] > 0.0 else math.inf
    limit = gram_kappa_limit(k)
    if kappa <= limit:
        values = np.sqrt(lam)
        err = 0.5 * math.sqrt(k) * EPS * float(values[0]) * kappa
        got: tuple[np.ndarray, float, str, dict[str, Any]] | str = (values, err, "gram", {})
    else:
        got = _refine_bottom(tall, lam)
        if isinstance(got, str):
            return f"estimated kappa {kappa:.3g} > {limit:.3g}; {got}"
    if e and scaled is not a:
        values, err, used, settings = got
        got = (np.ldexp(values, e), math.ldexp(err, e), used, settings)
    return got


def _eigvalsh(g: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of a symmetric float64 matrix (LAPACK syevd): torch's (MKL)
    for a side >= :data:`TORCH_EIGVALSH_MIN_DIM`, numpy's below or without torch."""
    if g.shape[0] >= TORCH_EIGVALSH_MIN_DIM:
        try:
            import torch

            with single_threaded():  # torch loaded just now: one MKL thread too
                return torch.linalg.eigvalsh(torch.from_numpy(g)).numpy()
        except (ImportError, RuntimeError):  # no torch, or MKL's syevd did not converge
            pass
    return np.linalg.eigvalsh(g)


def refine_limit(k: int) -> int:
    """Most values the refinement is tried for on a ``k``-column matrix (see
    :data:`REFINE_PER_SIDE`)."""
    return min(k // 4, max(REFINE_MAX, k // REFINE_PER_SIDE))


def _refine_bottom(w: np.ndarray, lam: np.ndarray
                   ) -> tuple[np.ndarray, float, str, dict[str, Any]] | str:
    """The singular values of a tall or square ``w`` (``m >= k``) from its Gram
    eigenvalues ``lam`` (descending), the bottom ones refined by inverse subspace
    iteration and Rayleigh–Ritz (see the module docstring); or why not."""
    import scipy.linalg as sla

    m, k = w.shape
    s_hat = np.sqrt(np.maximum(lam, 0.0))
    smax = float(s_hat[0])
    delta = math.sqrt(k) * EPS * float(lam[0])  # modelled error of each Gram eigenvalue
    with np.errstate(divide="ignore"):
        enclosure = np.minimum(math.sqrt(delta), delta / s_hat)  # |σ̂_i - σ_i| <= this
    target = REFINE_TARGET * smax
    # Refine the values the Gram route cannot promise to the target, and every value that
    # may be the smallest (its enclosure reaches σ_min's): κ is promised to 1e-10.
    lowest = s_hat[-1] + enclosure[-1]
    r = max(1, int(np.count_nonzero(enclosure > target)),
            int(np.count_nonzero(s_hat - enclosure <= lowest)))
    if r > refine_limit(k):
        return f"{r} small singular values to refine"
    # F: a square matrix with W's singular values, and solves with F and Fᵀ. A square W
    # is its own F (LU with partial pivoting); a tall one's is the R of W = QR
    # (Householder, backward stable like gesdd, which starts from the same QR).
    if m == k:
        f = w
        with warnings.catch_warnings():  # a zero pivot is answered below, not warned
            warnings.simplefilter("ignore", sla.LinAlgWarning)
            lu = sla.lu_factor(w, check_finite=False)
        diagonal = np.diagonal(lu[0])
        route = "gram+lu"

        def solve(x: np.ndarray, trans: int) -> np.ndarray:  # F⁻¹x or F⁻ᵀx
            return sla.lu_solve(lu, x, trans=trans, check_finite=False)
    else:
        f = sla.qr(w, mode="r", check_finite=False)[0][:k]
        diagonal = np.diagonal(f)
        route = "gram+qr"

        def solve(x: np.ndarray, trans: int) -> np.ndarray:
            return sla.solve_triangular(f, x, trans=trans, check_finite=False)
    if not np.all(diagonal):
        return "the matrix is singular"
    b = min(k, r + max(8, r))
    x = np.linalg.qr(np.random.default_rng(REFINE_SEED).standard_normal((k, b)))[0]
    floor = max(m, k) * EPS * smax  # rounding in the factor and the products: gesdd's model
    own = np.arange(k - r, k)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        previous = None
        for step in range(1, REFINE_MAX_STEPS + 1):
            x = np.linalg.qr(solve(solve(x, 1), 0))[0]  # (FᵀF)⁻¹ = F⁻¹F⁻ᵀ
            if not np.all(np.isfinite(x)):
                return "the factor is too ill-conditioned"
            if step < 2:
                continue
            _, ritz, yt = np.linalg.svd(f @ x, full_matrices=False)
            ritz = ritz[-r:]
            # The residuals (~60% of a step) only once the wanted Ritz values have
            # settled to their targets from one step to the next.
            settled = previous is not None and bool(
                np.all(np.abs(ritz - previous) <= np.minimum(target, 1e-10 * ritz)))
            previous = ritz
            if not settled and step < REFINE_MAX_STEPS:
                continue
            v = x @ yt[-r:].T  # Ritz vectors of the r smallest values
            # Left vectors from F⁻ᵀv (its error along large σ_i shrinks by σ_min/σ_i,
            # where u = Fv/θ would grow it by σ_i/θ), the two-sided Rayleigh quotient
            # and the residual of z = [u; v]/√2 for [[0, F], [Fᵀ, 0]].
            u = solve(v, 1)
            u /= np.linalg.norm(u, axis=0)
            fv = f @ v
            theta = np.einsum("ij,ij->j", u, fv)
            rho = np.sqrt(0.5 * (np.linalg.norm(fv - u * theta, axis=0) ** 2
                                 + np.linalg.norm(f.T @ u - v * theta, axis=0) ** 2))
            # Gap: distance to every other singular value's enclosure, and to the
            # augmented matrix's eigenvalues -σ_i (at least θ away).
            dist = np.abs(theta[:, None] - s_hat[None, :]) - enclosure[None, :]
            dist[np.arange(r), own] = np.inf
            gap = np.minimum(dist.min(axis=1), theta)
            bound = np.where(gap > rho, rho * rho / np.where(gap > rho, gap, 1.0), rho)
            if np.all(bound <= np.minimum(target, 1e-10 * theta)):
                break
        else:
            return f"the refinement did not converge in {REFINE_MAX_STEPS} steps"
    order = np.argsort(theta)[::-1]
    theta, bound = theta[order], bound[order]
    if np.any(np.abs(theta - s_hat[own]) > enclosure[own] + bound + floor):
        return "the refined values leave their Gram enclosures"
    values = np.sort(np.concatenate([s_hat[:k - r], theta]))[::-1]  # a cluster may mix
    kept = float(enclosure[k - r - 1]) if k > r else 0.0
    err = max(kept, float(bound.max()) + floor)
    return values, err, route, {"refined": r, "refine_steps": step}


def _lapack_route(a: np.ndarray) -> tuple[np.ndarray, str]:
    # numpy.linalg, not scipy.linalg, on the default path: same LAPACK (gesdd), and
    # importing scipy.linalg alone costs ~0.15 s per process.
    try:
        return np.linalg.svd(a, compute_uv=False), "gesdd"
    except np.linalg.LinAlgError:
        import scipy.linalg as sla

        s = sla.svd(a, compute_uv=False, lapack_driver="gesvd", check_finite=False)
        return s, "gesvd"


def eigenvalues(a: np.ndarray) -> Eigenvalues:
    """Eigenvalues of a finite float64 square matrix (LAPACK ``geev`` through numpy),
    by decreasing modulus."""
    _validate(a)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"a: expected a square matrix, got shape {a.shape}")
    t0 = time.perf_counter()
    e = scale_exponent(a)
    with single_threaded():
        lam = ldexp(np.linalg.eigvals(ldexp(a, -e)).astype(np.complex128), e)
    lam = lam[np.argsort(-np.abs(lam), kind="stable")]
    return Eigenvalues(lam.astype(np.complex128), "dense", "geev", "exact",
                       time.perf_counter() - t0)
