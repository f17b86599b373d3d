"""The exact-by-blocks analysis shared by every diagonal-preconditioned family.

With a frozen diagonal preconditioner P and an L2-shifted Hessian H, the linearized step
of Adam, AdamW, RMSprop, Adagrad, Adamax, NAdam, RAdam and Adafactor is, after the
diagonal similarity D = diag(P^½, P^e) (e = -½ when the second state is a raw gradient
average, +½ when it accumulates preconditioned steps), orthogonally similar to 2x2
blocks of one :class:`spectrum_cli.core.update_blocks.BlockForm` evaluated at the
eigenvalues of K = P^-½ H P^-½ (docs/operators.md §2-3). Reduced forms (no second
state) need only D = P^½. Everything is exact in the P-weighted norm of D; κ(V) in the
optimizer's own coordinates is one SVD of V_J = D⁻¹(Q ⊕ Q)V_blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spectrum_cli.core.update_blocks import (
    analyze_blocks,
    block_eigenvalues,
    block_eigvectors,
)
from spectrum_cli.optim.base import (
    OperatorContext,
    ends,
    entry,
    extremes_entry,
    hessian_spectrum,
    public,
)


@dataclass
class Preconditioned:
    """What one diagonal-preconditioned analysis needs.

    ``extra(kmax)`` gives the rule's own metrics (its edge-of-stability ratio) from the
    largest eigenvalue of K; ``second`` is e in D = diag(P^½, P^e); ``own`` names the
    optimizer's own coordinates; ``euclidean_reduced`` adds κ(V) in those coordinates to
    reduced forms too; ``weighted`` is False when P = I (nothing to weight)."""

    pvec: np.ndarray
    l2: np.ndarray | None
    forms: list[Any]
    step: int
    extra: Any
    second: float = -0.5
    own: str = "(θ, m)"
    euclidean_reduced: bool = False
    weighted: bool = True
    settings_note: dict[str, Any] = field(default_factory=dict)


def analyze(ctx: OperatorContext, spec: Preconditioned) -> None:
    """Append one entry per form of ``spec`` to ``ctx`` (dense: exact; matrix-free: the
    two ends of K's spectrum, bounds and lower bounds, as the report labels them)."""
    problem, options = ctx.problem, ctx.options
    pvec, l2 = spec.pvec, spec.l2
    lam_k, info = hessian_spectrum(ctx, l2, 1.0 / np.sqrt(pvec))
    kmax, kmin = ends(lam_k, info)
    extra: dict[str, Any] = dict(spec.extra(kmax))
    extra["preconditioner_spread"] = math.sqrt(pvec.max() / pvec.min())
    hess = public(info)
    hess["matrix"] = ("K = P^-1/2 (H + L2) P^-1/2" if spec.weighted else "H + L2")
    hess["step_used"] = spec.step
    hess.update(spec.settings_note)
    dense_h = info.get("dense_H")
    if dense_h is not None:
        h_eff = dense_h + (np.diag(l2) if l2 is not None else 0.0)
        lam_h = np.linalg.eigvalsh(h_eff)
        extra.update(hessian_lambda_max=float(lam_h[-1]), hessian_lambda_min=float(lam_h[0]))
        pinv = 1.0 / pvec
        comm = pinv[:, None] * h_eff - h_eff * pinv[None, :]
        extra["commutator_norm_relative"] = float(
            np.linalg.norm(comm) / (np.linalg.norm(pinv) * np.linalg.norm(h_eff)))
    comm_accuracy: dict[str, Any] = {}
    if dense_h is None:  # matrix-free: estimate ‖[P⁻¹, H]‖_F with Hutchinson probes
        est = commutator_estimate(problem, 1.0 / pvec, l2, seed=options.seed)
        extra["commutator_norm_relative"] = est["value"]
        comm_accuracy = {"commutator_norm_relative": {
            "accuracy": "estimate", "error_bar": est["error_bar"], "confidence": 0.95,
            "method": f"Hutchinson, {est['probes']} Rademacher probes, jackknife"}}
    for form in spec.forms:
        reduced = form.beta == 0.0 and form.gamma == 0.0
        if lam_k is None:
            out = extremes_entry(form, kmin, kmax, extra, info, options)
            out["accuracy"].update(comm_accuracy)
            out["unavailable"].pop("commutator_norm_relative", None)
            ctx.add(out)
            continue
        analysis = analyze_blocks(form, lam_k, options.eps, options.power_max)
        metrics = dict(extra)
        if (not reduced or spec.euclidean_reduced) and dense_h is not None \
                and problem.n <= 1500:
            metrics["kappa_V_euclidean"] = euclidean_kappa(form, dense_h, l2, pvec,
                                                           spec.second)
        out = entry(analysis, metrics, {}, hess)
        if spec.weighted:
            d_text = "P^½" if reduced and spec.euclidean_reduced else _d_text(spec.second)
            own = "θ" if reduced and spec.euclidean_reduced else spec.own
            out["details"]["norm"] = (f"P-weighted: D = {d_text}; in the Euclidean norm of "
                                      f"{own}, ‖J^k‖ <= κ(D)·(the value here)")
            out["details"]["kappa_D"] = kappa_d(pvec, None if reduced and
                                                spec.euclidean_reduced else spec.second)
        ctx.add(out, {"power_norms": analysis.power_norms,
                      "eigenvalues": analysis.eigenvalues, "hessian_eigenvalues": lam_k})


def _d_text(second: float) -> str:
    return "diag(P^½, P^-½)" if second < 0 else "diag(P^½, P^½)"


def commutator_estimate(problem: Any, pinv: np.ndarray, l2: np.ndarray | None,
                        probes: int = 16, seed: int = 0) -> dict[str, float]:
    """‖[P⁻¹, H]‖_F / (‖P⁻¹‖_F ‖H‖_F) from Rademacher probes z (Hutchinson 1990):
    E‖Cz‖² = ‖C‖_F² with Cz = P⁻¹(Hz) - H(P⁻¹z), and E‖Hz‖² = ‖H‖_F² from the same Hz;
    two HVPs a probe. The error bar is 2 jackknife standard errors of the ratio."""
    rng = np.random.default_rng(seed)
    shift = np.zeros_like(pinv) if l2 is None else l2
    a, b = np.empty(probes), np.empty(probes)
    for i in range(probes):
        z = rng.choice([-1.0, 1.0], size=pinv.size)
        hz = problem.hvp_numpy(z) + shift * z
        hpz = problem.hvp_numpy(pinv * z) + shift * pinv * z
        a[i] = float(np.sum((pinv * hz - hpz) ** 2))
        b[i] = float(np.sum(hz**2))
    norm_p = float(np.linalg.norm(pinv))

    def ratio(sa: float, sb: float) -> float:
        return math.sqrt(sa / sb) / norm_p if sb > 0 else math.nan

    value = ratio(a.mean(), b.mean())
    loo = np.array([ratio((a.sum() - a[i]) / (probes - 1), (b.sum() - b[i]) / (probes - 1))
                    for i in range(probes)])
    se = math.sqrt((probes - 1) / probes * float(np.sum((loo - loo.mean()) ** 2)))
    return {"value": value, "error_bar": 2 * se, "probes": probes}


def kappa_d(p: np.ndarray, second: float | None = -0.5) -> float:
    """κ of D = diag(P^½, P^e) (or of P^½ alone when ``second`` is None): the factor
    between the P-weighted and the Euclidean norms."""
    s = np.sqrt(p)
    if second is None or second > 0:
        return float(s.max() / s.min())
    big = max(s.max(), 1 / s.min())
    small = min(s.min(), 1 / s.max())
    return float(big / small)


def euclidean_kappa(form: Any, h: np.ndarray, l2: np.ndarray | None, p: np.ndarray,
                    second: float = -0.5) -> float:
    """κ(V) of J in the optimizer's own coordinates: V_J = D⁻¹ (Q ⊕ Q) V_blocks with
    D = diag(P^½, P^e) (docs/operators.md §3), columns renormalized; one SVD. A reduced
    form's eigenvectors are P^-½ Q."""
    w = 1 / np.sqrt(p)
    h_eff = h + (np.diag(l2) if l2 is not None else 0.0)
    k_mat = (w[:, None] * h_eff) * w[None, :]
    kvals, q = np.linalg.eigh((k_mat + k_mat.T) / 2)
    top = w[:, None] * q   # D⁻¹ acting on the θ half: P^-½ Q
    if form.beta == 0.0 and form.gamma == 0.0:
        x = top / np.linalg.norm(top, axis=0)
    else:
        b = form.blocks(kvals)
        vb = block_eigvectors(b, block_eigenvalues(b))
        bottom = (p ** -second)[:, None] * q  # and on the second half: P^-e Q
        x = np.concatenate([np.concatenate([top * vb[:, 0, j][None, :],
                                            bottom * vb[:, 1, j][None, :]])
                            for j in range(2)], axis=1)
        x = x / np.linalg.norm(x, axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    return math.inf if s[-1] == 0 else float(s[0] / s[-1])
