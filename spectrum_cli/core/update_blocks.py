"""Linearized optimizer update operators and their exact 2x2-block structure.

Notation, formulas and derivations: docs/operators.md (PyTorch's conventions). With the
Hessian H = Q diag(h) Qᵀ (or, for Adam, K = P^{-1/2} H P^{-1/2} = Q diag(k) Qᵀ), every
momentum-type operator is orthogonally similar (for Adam: after the diagonal similarity
D = diag(P^{1/2}, P^{-1/2})) to a direct sum of 2x2 blocks

    J_i = [[w - α h_i, -β], [γ h_i, μ]]

(``w`` = 1, or 1 - lr·wd for AdamW's decoupled decay). So every spectral quantity is
exact and O(n) after one symmetric eigendecomposition:

- eigenvalues: the union of the blocks' (a quadratic each); ρ(J) = max_i ρ(J_i);
- κ(V) with unit eigenvector columns = max_i σ_max(V_i) / min_i σ_min(V_i) (V_i the
  block's unit-column eigenvector matrix; it takes one orthonormal eigenbasis of H, so
  it stays well defined when H has repeated or zero eigenvalues); a defective block
  (an exceptional point, discriminant 0) gives inf;
- ‖J^k‖₂ = max_i ‖J_i^k‖₂ and ‖(zI - J)⁻¹‖ = max_i ‖(zI - J_i)⁻¹‖, hence ρ_ε(J) =
  max_i ρ_ε(J_i) and K(J) = max_i K(J_i).

For Adam these hold in the P-weighted norm of the similarity D (the report says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.pseudospectra import criss_cross
from spectrum_cli.core.transient import kreiss_lower_bound, transient_window


@dataclass(frozen=True)
class BlockForm:
    """The 2x2 block family J_i = [[w - alpha·h_i, -beta], [gamma·h_i, mu]] of one
    optimizer, plus what the report must say about it."""

    optimizer: str          # "sgd", "adam", "adamw"
    form: str               # "momentum", "nesterov", "gd", "adam-augmented", "adam-reduced"
    w: float
    alpha: float
    beta: float
    gamma: float
    mu: float
    coordinates: str        # e.g. "(θ, buf)", "(θ, lr·buf)", "P-weighted (P^½θ, P^-½m)"
    step: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def blocks(self, h: np.ndarray) -> np.ndarray:
        """All blocks, shape (n, 2, 2)."""
        h = np.asarray(h, dtype=np.float64)
        out = np.empty((h.size, 2, 2))
        out[:, 0, 0] = self.w - self.alpha * h
        out[:, 0, 1] = -self.beta
        out[:, 1, 0] = self.gamma * h
        out[:, 1, 1] = self.mu
        return out

    def exceptional_points(self) -> tuple[float, float]:
        """The two h at which a block is defective (equal eigenvalues): the discriminant
        (w - αh - μ)² - 4βγh = 0."""
        a, b, c = self.alpha, self.beta, self.gamma
        # (w - μ - a h)² = 4 b c h  ->  a² h² - (2 a (w - μ) + 4 b c) h + (w - μ)² = 0
        A, B, C = a * a, -(2 * a * (self.w - self.mu) + 4 * b * c), (self.w - self.mu) ** 2
        if A == 0:
            return (math.nan, math.nan)
        disc = math.sqrt(max(B * B - 4 * A * C, 0.0))
        return ((-B - disc) / (2 * A), (-B + disc) / (2 * A))


def sgd_form(lr: float, momentum: float = 0.0, dampening: float = 0.0,
             nesterov: bool = False, coordinates: str = "stored") -> BlockForm:
    """torch.optim.SGD linearized (L2 weight decay goes into H as H + wd·I)."""
    if coordinates not in ("stored", "scaled"):
        raise UsageError(f"coordinates: expected 'stored' or 'scaled', got {coordinates!r}")
    mu = float(momentum)
    if mu == 0.0:
        # No buffer: θ' = (I - lr H) θ. Represented as blocks with a decoupled second
        # state (β = γ = 0, μ = 0), whose extra eigenvalues 0 do not change ρ or norms.
        return BlockForm("sgd", "gd", 1.0, lr, 0.0, 0.0, 0.0, "(θ)",
                         settings={"lr": lr})
    scale = lr if coordinates == "scaled" else 1.0
    if nesterov:
        alpha, beta, gamma = lr * (1 + mu), lr * mu * mu, 1.0
        form = "nesterov"
    else:
        alpha, beta, gamma = lr * (1 - dampening), lr * mu, 1 - dampening
        form = "momentum"
    # Scaled coordinates (θ, lr·buf): D J D⁻¹ with D = diag(I, lr I).
    coords = "(θ, lr·buf)" if coordinates == "scaled" else "(θ, buf)"
    return BlockForm("sgd", form, 1.0, alpha, beta / scale, gamma * scale, mu, coords,
                     settings={"lr": lr, "momentum": mu, "dampening": dampening,
                               "nesterov": nesterov})


def adam_form(lr: float, beta1: float, step: int, decoupled_wd: float = 0.0,
              reduced: bool = False, optimizer: str = "adam") -> BlockForm:
    """Adam/AdamW quasi-static (frozen denominator P) in the P-weighted coordinates, with
    c = lr / (1 - β1^t) and h the eigenvalues of K = P^{-1/2} H P^{-1/2}."""
    if step < 1:
        raise UsageError(f"step: Adam's bias correction needs t >= 1, got {step}")
    c = lr / (1 - beta1**step)
    w = 1.0 - lr * decoupled_wd
    if reduced:
        return BlockForm(optimizer, "adam-reduced", w, c, 0.0, 0.0, 0.0,
                         "P-weighted (P^½θ)", step,
                         {"lr": lr, "beta1": beta1, "c": c, "weight_decay": decoupled_wd})
    return BlockForm(optimizer, "adam-augmented", w, c * (1 - beta1), c * beta1, 1 - beta1,
                     beta1, "P-weighted (P^½θ, P^-½m)", step,
                     {"lr": lr, "beta1": beta1, "c": c, "weight_decay": decoupled_wd})


# ---------------------------------------------------------------------------------------
# Vectorized 2x2 algebra (closed forms)


def block_eigenvalues(b: np.ndarray) -> np.ndarray:
    """Eigenvalues of every block, shape (n, 2) complex."""
    tr = b[:, 0, 0] + b[:, 1, 1]
    det = b[:, 0, 0] * b[:, 1, 1] - b[:, 0, 1] * b[:, 1, 0]
    disc = np.sqrt((tr * tr - 4 * det).astype(np.complex128))
    return np.stack([(tr + disc) / 2, (tr - disc) / 2], axis=1)


def sigma_2x2(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(σ_max, σ_min) of every 2x2 (complex or real) matrix in m, shape (..., 2, 2)."""
    f = np.sum(np.abs(m) ** 2, axis=(-2, -1))
    det = np.abs(m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0])
    root = np.sqrt(np.maximum(f * f - 4 * det * det, 0.0))
    smax = np.sqrt((f + root) / 2)
    smin = np.where(smax > 0, det / np.where(smax > 0, smax, 1.0), 0.0)
    return smax, smin


def block_eigvectors(b: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Unit-column eigenvector matrices V_i, shape (n, 2, 2) complex. For eigenvalue λ
    of [[p, q], [r, s]] a null vector of (B - λI) is (q, λ - p) or (λ - s, r), whichever is
    larger (numerically safer)."""
    p, q, r, s = b[:, 0, 0], b[:, 0, 1], b[:, 1, 0], b[:, 1, 1]
    out = np.empty((b.shape[0], 2, 2), dtype=np.complex128)
    for j in range(2):
        l = lam[:, j]
        v1 = np.stack([q + 0j, l - p], axis=1)
        v2 = np.stack([l - s, r + 0j], axis=1)
        n1, n2 = np.linalg.norm(v1, axis=1), np.linalg.norm(v2, axis=1)
        v = np.where((n1 >= n2)[:, None], v1, v2)
        nrm = np.maximum(n1, n2)
        # A block with q = r = 0 is diagonal: its eigenvectors are the unit vectors.
        diag = nrm == 0
        v[diag] = np.array([1.0, 0.0]) if j == 0 else np.array([0.0, 1.0])
        nrm[diag] = 1.0
        out[:, :, j] = v / nrm[:, None]
    return out


#: Blocks whose powers are formed together by :func:`block_power_norms` (k_max·CHUNK 2x2
#: matrices at a time: 26 MB at the default 200 powers).
POWER_CHUNK = 4096
#: A power with an entry beyond this is taken as overflowing: inf from there on.
POWER_OVERFLOW = 1e70


def block_power_norms(b: np.ndarray, k_max: int) -> np.ndarray:
    """‖J^k‖₂ = max_i ‖J_i^k‖₂ for k = 1..k_max, and the index of the block attaining
    each (shape (k_max,) twice).

    The powers of every block are formed by doubling, B^(m+j) = B^j·B^m for j <= m (one
    batched 2x2 product per doubling, ~log₂ k_max of them, instead of one per power),
    and their σ_max in closed form all at once. From the first power with an entry
    beyond :data:`POWER_OVERFLOW` the norms are inf (its factors are all below that
    bound, so no earlier power is computed from an overflowed one)."""
    n = b.shape[0]
    norms = np.full(k_max, -np.inf)
    which = np.zeros(k_max, dtype=np.int64)
    first_big = k_max
    for lo in range(0, n, POWER_CHUNK):
        chunk = b[lo:lo + POWER_CHUNK]
        # the four entries of B^(k+1) in q[:, k]: 1-D products, not stacks of 2x2 matmuls
        q = np.empty((4, k_max, chunk.shape[0]), dtype=np.result_type(chunk, np.float64))
        q[:, 0] = chunk.reshape(-1, 4).T
        m = 1
        with np.errstate(over="ignore", invalid="ignore"):
            while m < k_max:
                step = min(m, k_max - m)
                a, b_, c, d = q[:, :step]
                e, f, g, h = q[:, m - 1]
                out = q[:, m:m + step]
                np.add(a * e, b_ * g, out=out[0])
                np.add(a * f, b_ * h, out=out[1])
                np.add(c * e, d * g, out=out[2])
                np.add(c * f, d * h, out=out[3])
                m += step
            big = np.flatnonzero(np.max(np.abs(q), axis=(0, 2)) > POWER_OVERFLOW)
            if big.size:
                first_big = min(first_big, int(big[0]))
            s, _ = sigma_2x2(np.moveaxis(q[:, :first_big], 0, -1).reshape(
                first_big, -1, 2, 2))
        if first_big:
            i = np.argmax(s, axis=1)
            best = s[np.arange(first_big), i]
            better = best > norms[:first_big]
            norms[:first_big][better] = best[better]
            which[:first_big][better] = i[better] + lo
    if first_big < k_max:
        norms[first_big:] = math.inf
        which[first_big:] = which[first_big - 1] if first_big else 0
    return norms, which


# ---------------------------------------------------------------------------------------
# The analysis


@dataclass(frozen=True)
class OperatorAnalysis:
    """Exact metrics of ⊕_i J_i (see the module docstring)."""

    form: BlockForm
    n_params: int
    metrics: dict[str, Any]
    details: dict[str, Any]
    power_norms: np.ndarray
    eigenvalues: np.ndarray  # (2n,) complex; (n,) without a second state


def _discriminant(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p - s)² + 4qr (= tr² - 4 det without the cancellation) and its rounding scale."""
    p, q, r, s = b[:, 0, 0], b[:, 0, 1], b[:, 1, 0], b[:, 1, 1]
    return (p - s) ** 2 + 4 * q * r, np.maximum((p - s) ** 2, np.abs(4 * q * r))


def block_spectrum(form: BlockForm, h: np.ndarray) -> tuple[float, float]:
    """ρ(J) and κ(V) alone (the O(n) core of :func:`analyze_blocks`)."""
    b = form.blocks(np.asarray(h, dtype=np.float64))
    lam = block_eigenvalues(b)
    disc, scale = _discriminant(b)
    if (form.beta != 0.0 or form.gamma != 0.0) and np.any(
            np.abs(disc) <= 100 * np.finfo(float).eps * scale):
        return float(np.max(np.abs(lam))), math.inf
    vmax, vmin = sigma_2x2(block_eigvectors(b, lam))
    kappa = math.inf if vmin.min() == 0 else float(vmax.max() / vmin.min())
    return float(np.max(np.abs(lam))), kappa


def analyze_blocks(form: BlockForm, h: np.ndarray, eps: Sequence[float] = (),
                   power_max: int = 200) -> OperatorAnalysis:
    """Every operator metric of the blocks built from the eigenvalues ``h``."""
    h = np.asarray(h, dtype=np.float64)
    b = form.blocks(h)
    lam = block_eigenvalues(b)
    rho_i = np.max(np.abs(lam), axis=1)
    i_rho = int(np.argmax(rho_i))
    rho = float(rho_i[i_rho])
    disc, scale = _discriminant(b)
    has_second_state = form.beta != 0.0 or form.gamma != 0.0
    defective = has_second_state & (np.abs(disc) <= 100 * np.finfo(float).eps * scale)
    v = block_eigvectors(b, lam)
    vmax, vmin = sigma_2x2(v)
    vmin = np.where(defective, 0.0, vmin)
    i_kappa = int(np.argmin(vmin / vmax))
    kappa_v = math.inf if np.any(defective) or vmin.min() == 0 else float(
        vmax.max() / vmin.min())
    ep = form.exceptional_points() if has_second_state else (math.nan, math.nan)
    # Transient growth, exact: the norm of the direct sum is the max over blocks.
    norms, who = block_power_norms(b, power_max)
    k_star = int(np.argmax(norms))
    above = np.nonzero(norms > 1.0)[0]
    kappa_i = np.where(vmin > 0, vmax / np.where(vmin > 0, vmin, 1.0), math.inf)
    # ρ_ε(J) = max_i ρ_ε(J_i): ρ_i + ε <= ρ_ε(J_i) <= ρ_i + ε κ(V_i) (Bauer-Fike), so only
    # blocks whose upper bound beats the best value so far need the criss-cross.
    ps = []
    for e in eps:
        upper = rho_i + e * kappa_i
        best, arg, evaluated = rho + e, i_rho, 0
        for i in np.argsort(-upper):
            if upper[i] <= best:
                break
            value = criss_cross(b[i], e).value
            evaluated += 1
            if value > best:
                best, arg = value, int(i)
        ps.append({"eps": e, "value": best, "kind": "exact", "block_h": float(h[arg]),
                   "blocks_evaluated": evaluated})
    # Kreiss: K(J) = max_i K(J_i) and K(J_i) <= sup_k ‖J_i^k‖ (k >= 0): evaluate blocks in
    # decreasing order of that ceiling while it can still beat the bound found.
    if rho >= 1.0:
        kreiss = math.inf
        kreiss_blocks = 0
    else:
        ceiling = np.maximum(1.0, _block_peaks(b, power_max))
        kreiss, kreiss_blocks = 1.0, 0
        for i in np.argsort(-ceiling)[:16]:
            if ceiling[i] <= kreiss:
                break
            kreiss = max(kreiss, kreiss_lower_bound(b[i]).value)
            kreiss_blocks += 1
    exact_sup = bool(np.any(norms < 1.0))
    metrics = {
        "spectral_radius": rho,
        "kappa_V": kappa_v,
        "max_power_norm": float(norms[k_star]),
        "argmax_power": k_star + 1,
        "power_above_one_until": int(above[-1]) + 1 if above.size else 0,
        "transient_window": transient_window(kappa_v, rho),
        "kreiss_lower_bound": kreiss,
    }
    details = {
        "rho_block_h": float(h[i_rho]),
        "kappa_V_block": {"h": float(h[i_kappa]),
                          "alpha_h": form.alpha * float(h[i_kappa]),
                          "exceptional_points_h": list(ep),
                          "exceptional_points_alpha_h": [form.alpha * x for x in ep],
                          "distance_to_exceptional_points_h":
                              [abs(float(h[i_kappa]) - x) for x in ep],
                          "defective_blocks": int(np.count_nonzero(defective))},
        "pseudospectral_radius": ps,
        "max_power_norm_exact": exact_sup,
        "max_power_norm_block_h": float(h[who[k_star]]),
        "kreiss_blocks_evaluated": kreiss_blocks,
        "negative_curvature": int(np.count_nonzero(h <= 0)),
    }
    if rho >= 1.0 and np.any(h <= 0) and form.alpha > 0:
        details["rho_note"] = ("ρ >= 1 because H has eigenvalues <= 0 (flat or non-convex "
                               "directions, which no step size makes contracting); it is "
                               "not by itself a sign of divergence")
    # Without a second state the blocks are diag(w - αh, 0): only the first is J's.
    eigenvalues = lam.ravel() if has_second_state else b[:, 0, 0].astype(np.complex128)
    return OperatorAnalysis(form, int(h.size), metrics, details, norms, eigenvalues)


def _block_peaks(b: np.ndarray, k_max: int) -> np.ndarray:
    """max_k ‖J_i^k‖₂ per block (k = 1..k_max)."""
    p = b.copy()
    peak = np.zeros(b.shape[0])
    for _ in range(k_max):
        if np.max(np.abs(p)) > 1e70:
            peak[np.max(np.abs(p), axis=(1, 2)) > 1e70] = math.inf
            break
        s, _ = sigma_2x2(p)
        peak = np.maximum(peak, s)
        p = np.einsum("nij,njk->nik", b, p)
    return peak
