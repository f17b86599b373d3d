"""Randomized SVD backend (Halko, Martinsson & Tropp, SIAM Review 53(2), 2011).

Range finder with oversampling ``p`` (their §4.2, Algorithm 4.1) and subspace iteration
with re-orthonormalization after every product (Algorithm 4.4), then the SVD of the small
``B = QᵀA`` (Algorithm 5.1). Power iterations continue, up to ``max_power``, until the
a-posteriori bound below meets ``tol`` for the k requested values.

A-posteriori error: for the Ritz triplet (σ̃_i, Q û_i, v̂_i) of B, ``Aᵀ(Q û_i) = σ̃_i v̂_i``
holds exactly and ``A v̂_i - σ̃_i Q û_i = (I - QQᵀ) A v̂_i``, so with
``r_i = ‖(I - QQᵀ) A v̂_i‖`` some singular value of A lies within ``r_i`` of σ̃_i
(the Jordan-Wielandt argument of Parlett, *The Symmetric Eigenvalue Problem*, Thm 4.5.1),
refined to ``r_i²/δ_i`` when the Ritz values show a gap ``δ_i`` (Parlett Thm 11.7.1; see
``spectrum_backends._common.gap_refined``); moreover σ̃_i <= σ_i (interlacing,
σ_i(QᵀA) <= σ_i(A)). These are the reported ``error_bounds``: one extra product with A.

Runs on CPU or CUDA through torch (float64 by default, float32 on request). Only the
largest singular values: the smallest are out of reach of a range finder, and the
pipeline reports σ_min, κ and the entropies as unavailable.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from spectrum_backends._common import (
    as_torch, check_options, cuda_note, gap_refined, torch_installed,
)
from spectrum_cli.core.backend import Capabilities, check_which
from spectrum_cli.core.linear_operator import as_operator
from spectrum_cli.core.results import SingularValues
from spectrum_cli.core.scaling import ldexp, scale_exponent

DEFAULT_TOL = 1e-10


class RandomizedSVDBackend:
    name = "randomized-svd"
    description = "Halko-Martinsson-Tropp randomized SVD with power iterations (top-k)"
    capabilities = Capabilities(singular_values=("largest",), devices=("cpu", "cuda"),
                                dtypes=("float64", "float32"), accuracy="bound")

    def available(self) -> tuple[bool, str]:
        # find_spec, not import: listing backends must not pay torch's 1-2 s import.
        return (True, "") if torch_installed() else (False, "needs torch")

    def device_support(self) -> str:
        return f"cpu, {cuda_note()}"

    def singular_values(self, op: Any, k: int | None = None, which: str = "largest", *,
                        oversampling: int = 10, max_power: int = 100, tol: float = DEFAULT_TOL,
                        seed: int = 0, dtype: str = "float64", device: str = "cpu",
                        frobenius_norm: float | None = None, **_: Any) -> SingularValues:
        """The k largest singular values with residual bounds (see module docstring)."""
        import torch

        check_which(which, ("largest",), "singular values", self.name)
        check_options(self.name, dtype, device, self.capabilities.devices)
        op = as_operator(op)
        if op.dense() is None:
            raise NotImplementedError("randomized-svd needs an explicit matrix")
        t0 = time.perf_counter()
        # Entries near the float64 limits: scale by 2^-e (exact) before any cast or product.
        e = scale_exponent(op.dense(), frobenius_norm, dtype)
        a = as_torch(ldexp(op.dense(), -e), device, dtype)
        if a.shape[0] < a.shape[1]:
            a = a.T  # tall: the range finder then works in the smaller dimension
        m, n = a.shape
        k = min(k or 10, n)
        ell = min(k + oversampling, n)
        gen = torch.Generator(device=device).manual_seed(seed)
        omega = torch.randn(n, ell, generator=gen, device=device, dtype=a.dtype)
        q, _ = torch.linalg.qr(a @ omega)
        matvecs = ell
        eps = float(torch.finfo(a.dtype).eps)
        converged = False
        power = 0
        while True:
            # One subspace-iteration step (HMT Alg. 4.4) that also yields the Ritz values
            # and their residuals without extra passes over A:
            #   B = QᵀA = R₂ᵀQ₂ᵀ (QR of Bᵀ), SVD R₂ᵀ = P S Wᵀ, so v̂ = Q₂W and
            #   A v̂ = (A Q₂) W, whose component outside range(Q) is the residual.
            b = q.T @ a                                     # pass 1: ell x n
            q2, r2 = torch.linalg.qr(b.T)
            y = a @ q2                                      # pass 2: m x ell
            matvecs += 2 * ell
            _, sig, wt = torch.linalg.svd(r2.T)
            av = y @ wt.T
            resid = torch.linalg.norm(av - q @ (q.T @ av), dim=0)
            # Gaps need every Ritz value; the oversampled ones keep the k-th honest.
            r = resid.double().cpu().numpy()
            refined = gap_refined(sig.double().cpu().numpy(), r)[:k]
            floor = 8 * math.sqrt(m) * eps * float(sig[0])  # rounding floor
            bounds = refined + floor
            # Converged: every bound meets tol relative to its value, or lies under the
            # rounding floor that no iteration can beat (the zero singular values of a
            # low-rank matrix: exact value 0, residual ~ eps·σ_max, relative bound ∞).
            if bool(np.all(refined <= np.maximum(tol * sig[:k].double().cpu().numpy(),
                                                 floor))) or ell == n:
                converged = True
                break
            if power == max_power:
                break
            q, _ = torch.linalg.qr(y)                       # Q <- orth(A Aᵀ Q)
            power += 1
        if device == "cuda":
            torch.cuda.synchronize()
        values = ldexp(sig[:k].double().cpu().numpy(), e)
        bnd = ldexp(bounds, e)
        notes = () if converged else (
            f"randomized-svd did not converge to tol {tol:g} in {max_power} power iterations "
            f"(bounds up to {_relative(float(np.max(bounds)), float(sig[0]))} of σ_max)",)
        return SingularValues(values, self.name, "halko-martinsson-tropp", "bound",
                              float(np.max(bnd)), time.perf_counter() - t0, notes,
                              which="largest", converged=converged, n_matvec=matvecs,
                              error_bounds=bnd,
                              settings={"k": k, "oversampling": oversampling,
                                        "power_iterations": power, "max_power": max_power,
                                        "tol": tol, "seed": seed, "dtype": dtype,
                                        "device": device})


def _relative(bound: float, top: float) -> str:
    """``bound / top`` for a note, without a division by zero or an overflow."""
    if top > 0:
        with np.errstate(over="ignore"):
            return f"{float(np.float64(bound) / np.float64(top)):.2g}"
    return "0" if bound == 0 else "inf"
