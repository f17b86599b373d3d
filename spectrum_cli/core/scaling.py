"""Exact power-of-two scaling of matrices whose entries are near the float64 limits.

Finite entries near 1e300 make squares (Gram matrices, ‖A‖_F², σ²) overflow and some
LAPACK paths fail ("SVD did not converge"); entries near 1e-300 make squares subnormal
(lost digits) or zero. Dividing by ``2^e`` with ``2^(e-1) <= max|a_ij| < 2^e`` is exact in
binary floating point (every entry keeps its 53-bit significand, except entries more
than 2^1022 below the largest, which are far under the ``eps·‖A‖`` rounding floor of any
backward-stable factorization), and singular values, eigenvalues, error bounds and
pseudospectral radii scale back exactly by ``2^e``; ratios (κ, entropies, stable rank,
κ(V), eigenvalue condition numbers) do not change at all.

Matrices with ``max|a_ij|`` inside ``[2^-SAFE_EXPONENT, 2^SAFE_EXPONENT]`` are left
alone, so ordinary weights take exactly the same code path (and give the same bits) as
before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: No scaling while 2^-SAFE_EXPONENT <= max|a_ij| <= 2^SAFE_EXPONENT (about 1e±60):
#: squares, sums of squares of up to 2^100 terms and products stay normal and finite.
SAFE_EXPONENT = 200
#: The same for float32 work (max 3.4e38 = 2^128, smallest normal 2^-126).
SAFE_EXPONENT_FLOAT32 = 40


def safe_exponent(dtype: str = "float64") -> int:
    """The safe-range exponent for work in ``dtype`` ('float64' or 'float32')."""
    return SAFE_EXPONENT_FLOAT32 if dtype == "float32" else SAFE_EXPONENT


def max_abs(a: Any) -> float:
    """max |a_ij| of a numpy array or torch tensor, without an ``|a|`` temporary
    (NaN if any entry is NaN, inf if any is infinite)."""
    if type(a).__module__.startswith("torch"):
        return float(a.abs().max()) if a.numel() else 0.0
    a = np.asarray(a)
    if a.size == 0:
        return 0.0
    if np.iscomplexobj(a):
        return float(np.max(np.abs(a)))
    return max(float(a.max()), -float(a.min()))


def exponent_for(amax: float, safe: int = SAFE_EXPONENT) -> int:
    """The e with ``2^(e-1) <= amax < 2^e`` when ``amax`` lies outside the safe range
    ``[2^-safe, 2^safe]``, else 0 (no scaling). 0 also for a zero or non-finite ``amax``."""
    if not math.isfinite(amax) or amax == 0.0:
        return 0
    e = math.frexp(amax)[1]
    return e if abs(e) > safe else 0


def scale_exponent(a: Any, frobenius_norm: float | None = None,
                   dtype: str = "float64") -> int:
    """The scaling exponent of :func:`exponent_for` for the matrix ``a`` (worked on in
    ``dtype``). A known ``‖A‖_F`` well inside the safe range proves that no scaling is
    needed and saves a pass over ``a`` (``max|a_ij| <= ‖A‖_F <= sqrt(mn)·max|a_ij|``)."""
    safe = safe_exponent(dtype)
    if frobenius_norm is not None and math.isfinite(frobenius_norm):
        size = math.prod(getattr(a, "shape", ())) or 1
        lo = math.ldexp(1.0, -safe) * math.sqrt(size)
        if lo <= frobenius_norm <= math.ldexp(1.0, safe):
            return 0
    return exponent_for(max_abs(a), safe)


def ldexp(x: Any, e: int) -> Any:
    """``x · 2^e`` exactly (numpy arrays, complex arrays, floats, torch tensors); values
    beyond the float range become ±inf (or 0), without warnings."""
    if e == 0:
        return x
    if type(x).__module__.startswith("torch"):
        # torch has no overflow-safe ldexp for |e| > 1023: multiply in exact steps.
        out = x
        while e:
            step = max(-1000, min(1000, e))
            out = out * math.ldexp(1.0, step)
            e -= step
        return out
    if isinstance(x, float | int):
        try:
            return math.ldexp(float(x), e)
        except OverflowError:
            return math.copysign(math.inf, x)
    x = np.asarray(x)
    with np.errstate(over="ignore", under="ignore"):
        if np.iscomplexobj(x):
            out = np.empty(x.shape, dtype=np.result_type(x.dtype, np.complex128))
            out.real = np.ldexp(x.real, e)
            out.imag = np.ldexp(x.imag, e)
            return out
        return np.ldexp(x, e)


def scaled_result(result: Any, e: int) -> Any:
    """A :class:`~spectrum_cli.core.results.SingularValues` or ``Eigenvalues`` of ``A``
    turned into that of ``2^e·A``: values, error estimate and error bounds times ``2^e``
    (exact; values past the float64 range become inf, and the result says so)."""
    if e == 0:
        return result
    from dataclasses import replace

    changes: dict[str, Any] = {"values": ldexp(result.values, e)}
    if getattr(result, "error_estimate", None) is not None:
        changes["error_estimate"] = ldexp(float(result.error_estimate), e)
    if result.error_bounds is not None:
        changes["error_bounds"] = ldexp(result.error_bounds, e)
    if not np.all(np.isfinite(changes["values"])):
        changes["notes"] = tuple(result.notes) + (
            "values beyond the float64 range (1.8e308) are reported as inf",)
    return replace(result, **changes)
