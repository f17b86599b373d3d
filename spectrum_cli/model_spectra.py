"""Model-level spectra on a user's model and data (``spectrum model``).

Seeds 003 and 004 describe stability through four operators; this module measures them
on a checkpoint (float64, model in eval mode):

- Input Jacobian J_f(x) (outputs x inputs) per sample, by ``torch.func.vmap(jacrev)``:
  ``jacobian_norm`` σ_1, ``jacobian_entropy`` (spectral entropy of σ²/Σσ², as for
  weights) and ``attribution_condition`` σ_1/median σ_k (seed 003).
- Parameter Jacobian and empirical NTK: K = J_θ J_θᵀ over the samples (N·C x N·C),
  accumulated one parameter tensor at a time (Jacot et al. 2018; Novak et al. 2022's
  "Jacobian contraction"); the per-sample ‖∇_θ f(x)‖₂ is sqrt(λ_max) of K's (x, x) block.
  Top and bottom eigenvalues and κ exact (``eigh``) up to 4096 rows, by Lanczos beyond.
- Loss Hessian: λ_max and λ_min (dense ``eigh`` up to ``dense_max`` parameters, else
  Lanczos at both ends with bounds); the spectral density by stochastic Lanczos
  quadrature (Ghorbani, Krishnan & Xiao, ICML 2019; Papyan, JMLR 2020): Rademacher probes,
  Gaussian-broadened Ritz values; the first four normalized moments tr(H^j)/n with
  Hutchinson standard errors state its error; the flatness f̂_h(0) of seed 004 (Gaussian
  kernel density at 0, bandwidth h stated); and the Gauss-Newton matrix G = J_θᵀ H_ℓ J_θ's
  top eigenvalues beside the Hessian's.
- Stability index, see :func:`stability_index` for the formula and the choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spectrum_cli.core.estimators.ubaru2017slq import slq_nodes
from spectrum_cli.plugins import get_backend

NTK_DENSE_MAX = 4096


@dataclass(frozen=True)
class ModelOptions:
    samples: int = 256
    dense_max: int = 2000
    slq_probes: int = 16
    slq_steps: int = 60
    bandwidth: float | None = None
    seed: int = 0
    gn_top: int = 3


@dataclass
class ModelReport:
    doc: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _aggregate(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"max": float(v.max()), "p95": float(np.percentile(v, 95)), "mean": float(v.mean())}


def _entropy(s: np.ndarray) -> np.ndarray:
    """Row-wise spectral entropy of p = σ²/Σσ² (nats; 0 for a zero row)."""
    s2 = s**2
    tot = s2.sum(axis=1, keepdims=True)
    p = np.divide(s2, tot, out=np.zeros_like(s2), where=tot > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def sample_inputs(problem, n: int):
    """The first ``n`` samples of the data (concatenated batches)."""
    import torch

    xs = torch.cat([x for x, _ in problem.batches])[:n]
    ys = torch.cat([y for _, y in problem.batches])[:n]
    return xs, ys


def input_jacobians(problem, xs) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-sample singular values of J_f(x) (N x min(C, D)) and the metrics."""
    from torch.func import jacrev, vmap

    theta = problem.theta.detach()

    def f(x):
        return problem.forward(theta, x.unsqueeze(0)).reshape(-1)

    jac = vmap(jacrev(f))(xs)  # N x C x (input dims)
    j = jac.reshape(jac.shape[0], jac.shape[1], -1).detach().cpu().numpy()
    s = np.linalg.svd(j, compute_uv=False)
    norm = s[:, 0]
    entropy = _entropy(s)
    median = np.median(s, axis=1)
    attr = np.where(median > 0, norm / np.where(median > 0, median, 1.0), math.inf)
    return s, {"jacobian_norm": _aggregate(norm), "jacobian_entropy": _aggregate(entropy),
               "attribution_condition": _aggregate(attr), "shape": list(j.shape[1:]),
               "per_sample": {"jacobian_norm": norm, "jacobian_entropy": entropy,
                              "attribution_condition": attr}}


def ntk_gram(problem, xs) -> np.ndarray:
    """K = J_θ J_θᵀ (N·C x N·C), one parameter tensor at a time (memory: one tensor's
    per-sample Jacobian, N·C·numel, never the whole N·C·P)."""
    import torch
    from torch.func import jacrev, vmap

    theta = problem.theta.detach()
    sizes = [math.prod(s) for s in problem.shapes]
    offsets = np.cumsum([0] + sizes)
    n = xs.shape[0]
    k = None
    for i, size in enumerate(sizes):
        lo, hi = int(offsets[i]), int(offsets[i + 1])

        def f(piece, x, lo=lo, hi=hi):
            flat = torch.cat([theta[:lo], piece, theta[hi:]])
            return problem.forward(flat, x.unsqueeze(0)).reshape(-1)

        jac = vmap(jacrev(f), in_dims=(None, 0))(theta[lo:hi], xs)  # N x C x size
        jm = jac.reshape(-1, size)
        block = (jm @ jm.T).detach().cpu().numpy()
        k = block if k is None else k + block
    return k if k is not None else np.zeros((n, n))


def ntk_metrics(k: np.ndarray, n: int, backends=None) -> tuple[dict[str, Any], np.ndarray]:
    rows = k.shape[0]
    c = rows // n
    blocks = k.reshape(n, c, n, c)
    diag = np.stack([blocks[i, :, i, :] for i in range(n)])  # N x C x C
    param_norm = np.sqrt(np.maximum(np.linalg.eigvalsh(diag)[:, -1], 0.0))
    if rows <= NTK_DENSE_MAX:
        lam = np.linalg.eigvalsh((k + k.T) / 2)
        top, bottom, kind = float(lam[-1]), float(lam[0]), "exact"
    else:
        lz = (backends or get_backend)("lanczos")
        top = float(lz.eigenvalues_symmetric(k, k=1, which="largest").values[0])
        bottom = float(lz.eigenvalues_symmetric(k, k=1, which="smallest").values[-1])
        lam, kind = np.array([bottom, top]), "bound"
    cond = top / bottom if bottom > 0 else math.inf
    return ({"shape": [rows, rows], "lambda_max": top, "lambda_min": bottom,
             "condition_number": cond, "kind": kind,
             "param_jacobian_norm": _aggregate(param_norm),
             "per_sample": {"param_jacobian_norm": param_norm}}, lam)


def slq_density(problem, n: int, probes: int, steps: int, seed: int, bandwidth: float,
                lam_scale: float) -> dict[str, Any]:
    """Nodes and weights of stochastic Lanczos quadrature of H, the moments tr(H^j)/n
    (j = 1..4) with standard errors across probes, the broadened density on a grid and
    the flatness f̂_h(0) = (1/(h√(2π))) tr(exp(-H²/2h²))/n with its standard error."""
    m = min(steps, n)
    rules = slq_nodes(problem.operator(), n, probes, m, seed)
    nodes = [theta for theta, _ in rules]
    weights = [w for _, w in rules]
    moments = np.array([[float(w @ th**j) for j in range(1, 5)]
                        for th, w in zip(nodes, weights)])  # per probe
    flat = np.array([float(w @ np.exp(-th**2 / (2 * bandwidth**2)))
                     for th, w in zip(nodes, weights)]) / (bandwidth * math.sqrt(2 * math.pi))
    se = moments.std(axis=0, ddof=1) / math.sqrt(probes) if probes > 1 else np.full(4, np.inf)
    lo = min(float(min(th.min() for th in nodes)), 0.0)
    hi = float(max(th.max() for th in nodes))
    pad = 0.05 * max(hi - lo, lam_scale, 1e-12)
    grid = np.linspace(lo - pad, hi + pad, 800)
    sigma = max(bandwidth, 1e-12)
    dens = np.zeros_like(grid)
    for th, w in zip(nodes, weights):
        dens += (w[None, :] * np.exp(-(grid[:, None] - th[None, :]) ** 2 /
                                     (2 * sigma**2))).sum(axis=1)
    dens /= probes * sigma * math.sqrt(2 * math.pi)
    return {"moments": moments.mean(axis=0).tolist(), "moments_se": se.tolist(),
            "flatness": float(flat.mean()),
            "flatness_se": float(flat.std(ddof=1) / math.sqrt(probes)) if probes > 1 else math.inf,
            "grid": grid, "density": dens, "probes": probes, "steps": m,
            "hvps": probes * m}


def gauss_newton_top(problem, k: int, seed: int) -> np.ndarray:
    """Top eigenvalues of G = Σ_batches J_θᵀ H_ℓ J_θ / batches (H_ℓ the loss Hessian with
    respect to the outputs), by Lanczos on G-vector products (jvp, output HVP, vjp)."""
    import torch
    from torch.func import grad, jvp, vjp


    theta = problem.theta.detach()

    def gv(v_np: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.ravel(v_np), dtype=theta.dtype)
        total = torch.zeros_like(theta)
        for x, y in problem.batches:
            out, jv = jvp(lambda t: problem.forward(t, x), (theta,), (v,))
            # H_ℓ (J v) as vjp of grad (H_ℓ is symmetric; jvp of grad fails on
            # mean-reduced losses in current torch, docs/operators.md §6).
            _, hess_out = vjp(grad(lambda o: problem.loss_fn(o, y)), out)
            _, back = vjp(lambda t: problem.forward(t, x), theta)
            total = total + back(hess_out(jv)[0])[0]
        return (total / len(problem.batches)).detach().cpu().numpy()

    n = theta.numel()

    import scipy.sparse.linalg as spla

    def gm(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return gv(x) if x.ndim == 1 else np.stack([gv(x[:, j]) for j in range(x.shape[1])],
                                                  axis=1)

    g_op = spla.LinearOperator((n, n), matvec=gm, rmatvec=gm, matmat=gm, rmatmat=gm,
                               dtype=np.float64)
    return get_backend("lanczos").eigenvalues_symmetric(g_op, k, "largest", tol=1e-8,
                                                        seed=seed).values


def stability_index(jac: dict, ntk: dict, hess: dict) -> dict[str, Any]:
    """Seed 003's Global Matrix Stability Index, as far as its text gives it.

    The seed aggregates the spectral norms of four operators (input Jacobian, parameter
    Jacobian, NTK Gram, loss Hessian) "via supremum over data support" and suggests a
    95th percentile as the robust alternative; it does not give the combination. Our
    choices, stated: the profile is (sup_x ‖J_f(x)‖₂, sup_x ‖∇_θ f(x)‖₂, ‖K‖₂^½, ‖H‖₂)
    with the NTK square-rooted so that it is in the parameter Jacobian's units (‖K‖ =
    ‖J_θ‖² over the samples) and H the loss Hessian of the whole data set (per-sample
    Hessians are not formed); the index is the maximum of the profile. The p95 variant
    replaces the two suprema by 95th percentiles."""
    k_half = math.sqrt(max(ntk["lambda_max"], 0.0))
    h_norm = max(abs(hess["lambda_max"]), abs(hess["lambda_min"]))
    sup = [jac["jacobian_norm"]["max"], ntk["param_jacobian_norm"]["max"], k_half, h_norm]
    p95 = [jac["jacobian_norm"]["p95"], ntk["param_jacobian_norm"]["p95"], k_half, h_norm]
    names = ["input_jacobian", "param_jacobian", "ntk_sqrt", "hessian"]
    return {"profile_sup": dict(zip(names, sup)), "profile_p95": dict(zip(names, p95)),
            "index_sup": max(sup), "index_p95": max(p95),
            "formula": "S = max(sup_x ||J_f(x)||_2, sup_x ||grad_theta f(x)||_2, "
                       "||K||_2^(1/2), ||H||_2); S_p95 with 95th percentiles for the "
                       "per-sample terms"}


def analyze_model(problem, options: ModelOptions, lr: float | None = None,
                  backends=None) -> ModelReport:
    """Everything of ``spectrum model`` for one loaded model and its data."""
    import time

    t0 = time.perf_counter()
    xs, _ = sample_inputs(problem, options.samples)
    n_samples = int(xs.shape[0])
    sv_in, jac = input_jacobians(problem, xs)
    k = ntk_gram(problem, xs)
    ntk, ntk_lam = ntk_metrics(k, n_samples, backends)
    n = problem.n
    if n <= options.dense_max:
        lam = np.linalg.eigvalsh(problem.dense())
        hess = {"lambda_max": float(lam[-1]), "lambda_min": float(lam[0]), "kind": "exact",
                "method": "dense (double backward, eigh)"}
    else:
        lam = None

        lz = (backends or get_backend)("lanczos")
        op = problem.operator()
        top = lz.eigenvalues_symmetric(op, k=1, which="largest", tol=1e-8, seed=options.seed)
        bot = lz.eigenvalues_symmetric(op, k=1, which="smallest", tol=1e-8,
                                       seed=options.seed + 1)
        hess = {"lambda_max": float(top.values[0]), "lambda_min": float(bot.values[-1]),
                "lambda_max_bound": float(top.error_bounds[0]),
                "lambda_min_bound": float(bot.error_bounds[-1]), "kind": "bound",
                "method": "lanczos (matrix-free, both ends)"}
    scale = max(abs(hess["lambda_max"]), abs(hess["lambda_min"]), 1e-12)
    h = options.bandwidth if options.bandwidth else 0.01 * scale
    density = slq_density(problem, n, options.slq_probes, options.slq_steps, options.seed,
                          h, scale)
    if lam is not None:  # exact flatness and moments beside the estimates
        hess["flatness_exact"] = float(np.exp(-lam**2 / (2 * h**2)).mean() /
                                       (h * math.sqrt(2 * math.pi)))
        hess["moments_exact"] = [float(np.mean(lam**j)) for j in range(1, 5)]
    hess_top = (np.sort(lam)[::-1][:options.gn_top] if lam is not None else None)
    gn = gauss_newton_top(problem, options.gn_top, options.seed)
    hess.update({
        "density": {"method": "stochastic Lanczos quadrature (Rademacher probes, Gaussian "
                              "broadening)", "probes": density["probes"],
                    "steps": density["steps"], "bandwidth": h, "hvps": density["hvps"],
                    "moments": density["moments"], "moments_se": density["moments_se"],
                    "error": "moments are Hutchinson estimates with the standard errors "
                             "given; the broadened density has no pointwise error bound"},
        "flatness": {"value": density["flatness"], "se": density["flatness_se"],
                     "bandwidth": h, "kind": "estimate",
                     "formula": "f_h(0) = 1/(n h sqrt(2 pi)) sum_i exp(-lambda_i^2/(2h^2))"},
        "gauss_newton_top": gn.tolist(),
        "hessian_top": None if hess_top is None else hess_top.tolist(),
        "non_gauss_newton_fraction": (1 - float(gn[0]) / hess["lambda_max"])
        if hess["lambda_max"] > 0 else None,
    })
    index = stability_index(jac, ntk, hess)
    doc = {"samples": n_samples, "n_params": n, "lr": lr,
           "input_jacobian": {k2: v for k2, v in jac.items() if k2 != "per_sample"},
           "ntk": {k2: v for k2, v in ntk.items() if k2 != "per_sample"},
           "hessian": hess, "stability_index": index, "notes": list(problem.notes),
           "time_s": time.perf_counter() - t0}
    arrays = {"input_jacobian_singular_values": sv_in,
              **{f"per_sample_{k2}": v for k2, v in jac["per_sample"].items()},
              **{f"per_sample_{k2}": v for k2, v in ntk["per_sample"].items()},
              "ntk_eigenvalues": ntk_lam, "density_grid": density["grid"],
              "density": density["density"]}
    if lam is not None:
        arrays["hessian_eigenvalues"] = lam
    return ModelReport(doc, arrays)
