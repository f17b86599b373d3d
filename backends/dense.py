"""Dense LAPACK backend: full singular spectra and eigenvalues, exact to rounding.

CPU: numpy's LAPACK (scipy only for the ``gesvd`` fallback). CUDA (``device="cuda"``):
``torch.linalg`` on the GPU. float64 by default, float32 on request.

Two CPU routes to the singular values of an ``m x n`` matrix ``W`` (``k = min(m, n)``):

``gram``
    ``eigvalsh`` of the ``k x k`` Gram matrix (``WᵀW`` or ``WWᵀ``), ``sigma = sqrt(lambda)``.
    About ``m k²`` flops instead of LAPACK's ``4 m k²``, but squaring loses accuracy at
    the bottom of the spectrum: a backward error ``δλ ≈ c·eps·σ_max²`` in the eigenvalues
    (Demmel, *Applied Numerical Linear Algebra*, 1997, §5.2 and Thm 5.5) becomes a
    relative error ``c·eps·κ²/2`` in ``σ_min``. We model ``c = sqrt(k)`` (conservative by
    3-6x on the calibration set in ``tests/backends/test_dense_routes.py``) and accept the
    route only when that predicted relative error of κ is at most
    :data:`GRAM_KAPPA_REL_ERR` (1e-9, ten times below the 1e-8 contract); otherwise we
    fall back to ``gesdd`` and say so.
``gesdd``
    LAPACK's divide-and-conquer SVD (``numpy.linalg.svd``'s driver), backward stable:
    every singular value within ``p(m, n)·eps·σ_max`` (Golub & Van Loan, *Matrix
    Computations*, 4th ed., §8.6). If it fails to converge, ``gesvd`` is tried next.

``auto`` takes ``gram`` for matrices with aspect ratio >= :data:`GRAM_MIN_ASPECT` (where
it saves most and where trained layers are usually well conditioned) and ``gesdd`` for
near-square ones, whose Gram saving is small and which are often too ill-conditioned.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from spectrum_backends._common import as_torch, check_options, cuda_note, select
from spectrum_cli.core.backend import SVD_ROUTES, Capabilities, check_which
from spectrum_cli.core.linear_operator import as_operator
from spectrum_cli.core.results import Eigenvalues, SingularValues
from spectrum_cli.core.scaling import ldexp, scale_exponent, scaled_result

EPS = float(np.finfo(np.float64).eps)
#: Largest predicted relative error of kappa for which the Gram route is accepted.
GRAM_KAPPA_REL_ERR = 1e-9
#: ``auto`` uses the Gram route only when max(m, n) >= GRAM_MIN_ASPECT * min(m, n).
GRAM_MIN_ASPECT = 2.0
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
        lam = ldexp(np.linalg.eigvalsh(ldexp(a, -e))[::-1].copy(), e)
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
    """
    _validate(a)
    if route not in ROUTES:
        raise ValueError(f"route: expected one of {ROUTES}, got {route!r}")
    e = scale_exponent(a, frobenius_norm)
    if e:
        fro = None if frobenius_norm is None else ldexp(frobenius_norm, -e)
        return scaled_result(_singular_values(ldexp(a, -e), route, fro), e)
    return _singular_values(a, route, frobenius_norm)


def _singular_values(a: np.ndarray, route: str,
                     frobenius_norm: float | None) -> SingularValues:
    t0 = time.perf_counter()
    m, n = a.shape
    k = min(m, n)
    notes: list[str] = []
    if route == "gram" or (route == "auto" and max(m, n) >= GRAM_MIN_ASPECT * k):
        values, reason = _gram_route(a, frobenius_norm)
        if values is not None:
            s_max = float(values[0])
            err = 0.5 * math.sqrt(k) * EPS * s_max * (s_max / float(values[-1]))
            return SingularValues(values, "dense", "gram", "exact", err,
                                  time.perf_counter() - t0)
        notes.append(f"gram route rejected ({reason}); fell back to gesdd")
    values, used = _lapack_route(a)
    if used != "gesdd":
        notes.append("gesdd did not converge; used gesvd")
    err = max(m, n) * EPS * float(values[0])
    return SingularValues(values, "dense", used, "exact", err,
                          time.perf_counter() - t0, tuple(notes))


def _gram_route(a: np.ndarray, fro: float | None = None) -> tuple[np.ndarray | None, str]:
    if fro == 0.0:
        return None, "zero matrix"
    # Scale by a power of two (exact) so that squaring neither overflows nor underflows;
    # a known, moderate ‖A‖_F proves no scaling is needed and saves a pass over A.
    e = 0
    if fro is None or not 1e-140 < fro < 1e140:
        amax = max(float(a.max()), -float(a.min()))  # no |a| temporary: page faults
        if amax == 0.0:
            return None, "zero matrix"
        _, e = math.frexp(amax)
    scaled = np.ldexp(a, -e) if abs(e) > 200 else a
    g = scaled.T @ scaled if a.shape[0] >= a.shape[1] else scaled @ scaled.T
    lam = np.linalg.eigvalsh(g)  # LAPACK syevd
    if lam[0] <= 0.0:
        return None, "Gram matrix is numerically singular"
    kappa = math.sqrt(lam[-1] / lam[0])
    limit = gram_kappa_limit(min(a.shape))
    if kappa > limit:
        return None, f"estimated kappa {kappa:.3g} > {limit:.3g}"
    values = np.sqrt(lam[::-1])
    if scaled is not a:
        values = np.ldexp(values, e)
    return values, ""


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
    lam = ldexp(np.linalg.eigvals(ldexp(a, -e)).astype(np.complex128), e)
    lam = lam[np.argsort(-np.abs(lam), kind="stable")]
    return Eigenvalues(lam.astype(np.complex128), "dense", "geev", "exact",
                       time.perf_counter() - t0)
