"""Optimizer-state analysis: the linearized update operator a saved optimizer implies.

Glue between the checkpoint (weights and optimizer state), the user's Hessian source
(``--model``, ``--data``, ``--loss``) and the exact block formulas of
:mod:`spectrum_cli.core.update_operators`. Dense float64 Hessians up to ``dense_max``
parameters; beyond, matrix-free Lanczos at both ends of H's spectrum through the backend
protocol, with every number labelled exact, bound or estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.core.metrics import OPERATOR_METRICS  # noqa: F401 (re-exported)
from spectrum_cli.core.selection import Selector
from spectrum_cli.core.update_operators import (
    OperatorAnalysis, adam_form, analyze_blocks, sgd_form,
)
from spectrum_cli.io import optimizer as opt_io

DEFAULT_DENSE_MAX = 2000


@dataclass(frozen=True)
class HessianSource:
    model: str
    data: str
    loss: str = "mse"


@dataclass(frozen=True)
class OperatorOptions:
    eps: tuple[float, ...] = ()
    power_max: int = 200
    dense_max: int = DEFAULT_DENSE_MAX
    params: tuple[str, ...] = ()
    coordinates: str = "stored"
    step_convention: str = "snapshot"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.coordinates not in ("stored", "scaled"):
            raise UsageError(f"coordinates: expected 'stored' or 'scaled', got "
                             f"{self.coordinates!r}")
        if self.step_convention not in ("snapshot", "next"):
            raise UsageError(f"step_convention: expected 'snapshot' or 'next', got "
                             f"{self.step_convention!r}")
        if not (isinstance(self.dense_max, int) and self.dense_max >= 1):
            raise UsageError(f"dense_max: expected a positive integer, got {self.dense_max!r}")


@dataclass
class OptimizerReport:
    """What goes into the report: the optimizer-only block and the operator entries."""

    optimizer: dict[str, Any]
    operators: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    arrays: list[dict[str, np.ndarray]] = field(default_factory=list)


def load_model(source: HessianSource, weights: Mapping[str, Any]) -> Any:
    """The user's model with the checkpoint's weights loaded (strict)."""
    import torch

    from spectrum_cli.io.usercode import load_callable

    model = load_callable(source.model, "--model")()
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"--model {source.model}: returned {type(model).__name__}, "
                         "expected a torch.nn.Module")
    state = {k: torch.as_tensor(v) for k, v in weights.items()}
    expected = set(model.state_dict())
    prefixes = {k.split(".", 1)[0] for k in state}
    if not set(state) & expected and len(prefixes) == 1 and all("." in k for k in state):
        # One common prefix the model lacks (Lightning's "model."): strip it.
        state = {k.split(".", 1)[1]: v for k, v in state.items()}
    try:
        result = model.load_state_dict({k: v for k, v in state.items() if k in expected},
                                       strict=False)
    except RuntimeError as exc:  # size mismatches
        detail = " ".join(str(exc).split())[:300]
        raise InputError(f"--model {source.model}: the checkpoint's weights do not fit this "
                         f"model ({detail})") from None
    if result.missing_keys:
        raise InputError(f"--model {source.model}: the checkpoint lacks "
                         f"{', '.join(result.missing_keys[:6])}"
                         + (" …" if len(result.missing_keys) > 6 else "")
                         + " (is this the model the checkpoint was trained with?)")
    return model


def _uniform(snapshot: opt_io.OptimizerSnapshot, params: list[opt_io.ParamState],
             keys: tuple[str, ...]) -> dict[str, Any]:
    """Hyper-parameters shared by every selected parameter's group (else an error)."""
    hypers = [opt_io.group_hyper(snapshot, p.group) for p in params]
    first = hypers[0]
    for key in keys:
        values = {h[key] for h in hypers}
        if len(values) > 1:
            raise UsageError(f"the selected parameters' groups differ in {key} "
                             f"({sorted(values)}): one linear operator needs one value; "
                             "restrict the analysis with --params")
    if any(h["maximize"] for h in hypers):
        raise UsageError("maximize=True optimizers are not supported")
    return first


def analyze_optimizer(state: Mapping, weights: Mapping[str, Any],
                      source: HessianSource | None, options: OperatorOptions,
                      backends: Callable[[str], Any] | None = None,
                      where: str = "the optimizer state") -> OptimizerReport:
    """Optimizer-only metrics, and with a Hessian source the update operators.
    ``where`` names the file (and key) the state came from, for messages."""
    model = None
    param_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}
    model_order = None
    if source is not None:
        model = load_model(source, weights)
        model_order = [n for n, p in model.named_parameters() if p.requires_grad]
        param_shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    snapshot = opt_io.parse(state, param_shapes, model_order if source else None)
    report = OptimizerReport(opt_io.optimizer_only_metrics(snapshot), notes=snapshot.notes)
    report.optimizer["named_by"] = snapshot.named_by
    before_first = _before_first_step(snapshot)
    if before_first and snapshot.kind != "sgd":
        report.notes.append(ADAM_BEFORE_FIRST_STEP)
    if source is None:
        report.notes.append("optimizer-only metrics: a Hessian source (--model, --data, "
                            "--loss) would add ρ(J), κ(V), pseudospectral radii, transient "
                            "growth, the Kreiss bound and edge-of-stability ratios")
        return report
    if before_first and snapshot.kind != "sgd":
        raise InputError(f"{where}: {ADAM_BEFORE_FIRST_STEP}; save the optimizer after at "
                         "least one step(), or analyse the weights without --model/--data")
    selector = Selector(options.params, ())
    tracked = [p for p in snapshot.params if p.moments]
    if before_first:  # SGD: buffers are state, not structure
        tracked = [p for p in snapshot.params if p.shape is not None]
        report.notes.append(SGD_WITHOUT_BUFFERS)
    chosen = [p for p in tracked if selector(p.name)]
    if not chosen:
        raise UsageError("no optimizer-tracked parameter matches --params "
                         f"{list(options.params)}")
    from spectrum_cli.core.hessian import build_problem
    from spectrum_cli.io.usercode import load_callable

    data = load_callable(source.data, "--data")()
    problem = build_problem(model, data, source.loss, [p.name for p in chosen])
    report.notes.extend(problem.notes)
    check = problem.check_against_double_backward(options.seed)
    if not check <= 1e-8:
        raise UsageError(f"Hessian-vector products disagree with double backward (relative "
                         f"{check:.2g}): the loss is not twice differentiable here?")
    report.optimizer["hvp_check_relative_difference"] = check
    if snapshot.kind == "sgd":
        _sgd_operators(report, snapshot, chosen, problem, options, backends)
    else:
        _adam_operators(report, snapshot, chosen, problem, options, backends)
    return report


ADAM_BEFORE_FIRST_STEP = ("Adam snapshot saved before its first step has no second-moment "
                          "estimate, so its preconditioner is undefined")
SGD_WITHOUT_BUFFERS = ("the SGD state holds no momentum buffers (saved before its first step, "
                       "or momentum = 0): the linearized operator needs only H, lr and the "
                       "hyper-parameters, so every parameter of the optimizer's groups is "
                       "analysed")


def _before_first_step(snapshot: opt_io.OptimizerSnapshot) -> bool:
    """True when no parameter has optimizer state at all: a snapshot saved before the
    first ``step()`` (or plain SGD without momentum, which never keeps buffers)."""
    return bool(snapshot.params) and not any(p.moments for p in snapshot.params)


def _wd_vector(snapshot, chosen) -> np.ndarray:
    return np.concatenate([np.full(math.prod(p.shape), opt_io.group_hyper(
        snapshot, p.group)["weight_decay"]) for p in chosen])


def _entry(analysis: OperatorAnalysis, extra_metrics: dict[str, Any], accuracy: dict,
           hessian: dict[str, Any]) -> dict[str, Any]:
    f = analysis.form
    metrics = dict(analysis.metrics)
    metrics.update(extra_metrics)
    return {"name": f"optimizer:{f.form}", "optimizer": f.optimizer, "form": f.form,
            "coordinates": f.coordinates, "n_params": analysis.n_params, "step": f.step,
            "settings": dict(f.settings), "metrics": metrics, "accuracy": accuracy,
            "unavailable": {}, "hessian": hessian, "details": analysis.details}


def _hessian_spectrum(problem, options, backends, shift: np.ndarray | None,
                      weight: np.ndarray | None = None) -> tuple[np.ndarray | None, dict]:
    """Eigenvalues of S = W (H + diag(shift)) W (W = diag(weight), e.g. P^-½) — dense
    when small, else the extremes by Lanczos (returned as None, with the info dict)."""
    n = problem.n
    w = np.ones(n) if weight is None else weight
    s = np.zeros(n) if shift is None else shift
    if n <= options.dense_max:
        h = problem.dense()
        mat = (w[:, None] * (h + np.diag(s))) * w[None, :]
        lam = np.linalg.eigvalsh((mat + mat.T) / 2)
        return lam, {"method": "dense (torch.func.hessian, eigh)", "kind": "exact",
                     "n_params": n, "hvps": problem.n_hvp, "dense_H": h}
    import scipy.sparse.linalg as spla

    hop = problem.operator()

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.ravel(x)
        return w * hop.matvec(w * x) + s * w * w * x

    op = spla.LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)
    lanczos = (backends or _registry)("lanczos")
    top = lanczos.eigenvalues_symmetric(op, k=1, which="largest", tol=1e-8,
                                        seed=options.seed)
    bottom = lanczos.eigenvalues_symmetric(op, k=1, which="smallest", tol=1e-8,
                                           seed=options.seed + 1)
    return None, {"method": "lanczos (matrix-free, both ends)", "kind": "bound",
                  "n_params": n, "hvps": problem.n_hvp,
                  "lambda_max": float(top.values[0]), "lambda_max_bound": float(
                      top.error_bounds[0]), "lambda_min": float(bottom.values[-1]),
                  "lambda_min_bound": float(bottom.error_bounds[-1]),
                  "converged": bool(top.converged and bottom.converged)}


def _registry(name: str) -> Any:
    from spectrum_cli.plugins import get_backend

    return get_backend(name)


def _ends(lam: np.ndarray | None, info: dict) -> tuple[float, float]:
    if lam is not None:
        return float(lam[-1]), float(lam[0])
    return info["lambda_max"], info["lambda_min"]


def _sgd_operators(report, snapshot, chosen, problem, options, backends) -> None:
    hyper = _uniform(snapshot, chosen, ("lr", "momentum", "dampening", "nesterov"))
    wd = _wd_vector(snapshot, chosen)
    lam, info = _hessian_spectrum(problem, options, backends, wd)
    lmax, lmin = _ends(lam, info)
    lr, mu, d = hyper["lr"], hyper["momentum"], hyper["dampening"]
    form = sgd_form(lr, mu, d, hyper["nesterov"], options.coordinates)
    if hyper["nesterov"]:
        eos_m = lr * lmax * (1 + 2 * mu) / (2 * (1 + mu))
    else:
        eos_m = lr * (1 - d) * lmax / (2 * (1 + mu))
    extra = {"hessian_lambda_max": lmax, "hessian_lambda_min": lmin,
             "eos_ratio_gd": lr * lmax / 2, "eos_ratio_momentum": eos_m}
    hess = {k: v for k, v in info.items() if k != "dense_H"}
    form = _with_step(form, snapshot.step)
    if lam is not None:
        analysis = analyze_blocks(form, lam, options.eps, options.power_max)
        acc = {}
        report.operators.append(_entry(analysis, extra, acc, hess))
        report.arrays.append({"power_norms": analysis.power_norms,
                              "eigenvalues": analysis.eigenvalues,
                              "hessian_eigenvalues": lam})
    else:
        report.operators.append(_extremes_entry(form, lmin, lmax, extra, info, options))
        report.arrays.append({})


def _with_step(form, step):
    from dataclasses import replace

    return replace(form, step=step)


def _adam_operators(report, snapshot, chosen, problem, options, backends) -> None:
    hyper = _uniform(snapshot, chosen, ("lr", "beta1", "beta2", "eps", "amsgrad")
                     + (("weight_decay",) if snapshot.kind == "adamw" else ()))
    steps = {p.step for p in chosen}
    if len(steps) != 1 or None in steps:
        raise InputError(f"the selected parameters have different or missing steps "
                         f"({sorted(s for s in steps if s is not None)}): the bias "
                         "correction needs one t")
    t = steps.pop() + (1 if options.step_convention == "next" else 0)
    pvec = np.concatenate([opt_io.adam_denominator(p, hyper, t).ravel() for p in chosen])
    l2 = _wd_vector(snapshot, chosen) if snapshot.kind == "adam" else None
    decoupled = hyper["weight_decay"] if snapshot.kind == "adamw" else 0.0
    w = 1.0 / np.sqrt(pvec)
    lam_k, info = _hessian_spectrum(problem, options, backends, l2, w)
    kmax, kmin = _ends(lam_k, info)
    c = hyper["lr"] / (1 - hyper["beta1"] ** t)
    extra: dict[str, Any] = {"eos_ratio_adam": c * (1 - hyper["beta1"]) * kmax /
                             (2 * (1 + hyper["beta1"])),
                             "preconditioner_spread": math.sqrt(pvec.max() / pvec.min())}
    hess = {k: v for k, v in info.items() if k != "dense_H"}
    hess["matrix"] = "K = P^-1/2 (H + L2) P^-1/2"
    hess["step_used"] = t
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
    for reduced in (False, True):
        form = adam_form(hyper["lr"], hyper["beta1"], t, decoupled, reduced, snapshot.kind)
        if lam_k is not None:
            analysis = analyze_blocks(form, lam_k, options.eps, options.power_max)
            metrics = dict(extra)
            if not reduced and dense_h is not None and problem.n <= 1500:
                metrics["kappa_V_euclidean"] = _adam_euclidean_kappa(
                    form, dense_h, l2, pvec)
            entry = _entry(analysis, metrics, {}, hess)
            entry["details"]["norm"] = ("P-weighted: D = diag(P^½, P^-½); in the Euclidean "
                                        "norm of (θ, m), ‖J^k‖ <= κ(D)·(the value here)")
            entry["details"]["kappa_D"] = _kappa_d(pvec)
            report.operators.append(entry)
            report.arrays.append({"power_norms": analysis.power_norms,
                                  "eigenvalues": analysis.eigenvalues,
                                  "hessian_eigenvalues": lam_k})
        else:
            entry = _extremes_entry(form, kmin, kmax, extra, info, options)
            entry["accuracy"].update(comm_accuracy)
            entry["unavailable"].pop("commutator_norm_relative", None)
            report.operators.append(entry)
            report.arrays.append({})


def commutator_estimate(problem, pinv: np.ndarray, l2: np.ndarray | None, probes: int = 16,
                        seed: int = 0) -> dict[str, float]:
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


def _kappa_d(p: np.ndarray) -> float:
    """κ of D = diag(P^½, P^-½): the factor between the P-weighted and Euclidean norms."""
    s = np.sqrt(p)
    big = max(s.max(), 1 / s.min())
    small = min(s.min(), 1 / s.max())
    return float(big / small)


def _adam_euclidean_kappa(form, h: np.ndarray, l2: np.ndarray | None,
                          p: np.ndarray) -> float:
    """κ(V) of J in the optimizer's own (θ, m) coordinates: V_J = D⁻¹ (Q ⊕ Q) V_blocks
    (operators.md §2), columns renormalized; one SVD of the 2n x 2n matrix."""
    from spectrum_cli.core.update_operators import block_eigenvalues, block_eigvectors

    w = 1 / np.sqrt(p)
    h_eff = h + (np.diag(l2) if l2 is not None else 0.0)
    k_mat = (w[:, None] * h_eff) * w[None, :]
    kvals, q = np.linalg.eigh((k_mat + k_mat.T) / 2)
    b = form.blocks(kvals)
    vb = block_eigvectors(b, block_eigenvalues(b))
    top = (np.sqrt(1 / p))[:, None] * q   # D⁻¹ acting on the θ half: P^-½ Q
    bottom = np.sqrt(p)[:, None] * q      # and on the m half: P^½ Q
    x = np.concatenate([np.concatenate([top * vb[:, 0, j][None, :],
                                        bottom * vb[:, 1, j][None, :]]) for j in range(2)],
                       axis=1)
    x = x / np.linalg.norm(x, axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    return math.inf if s[-1] == 0 else float(s[0] / s[-1])


def _extremes_entry(form, hmin: float, hmax: float, extra: dict, info: dict,
                    options: OperatorOptions) -> dict[str, Any]:
    """Matrix-free: only the two ends of H's (or K's) spectrum are known. A block's
    determinant is linear in h, so the complex band's |λ| = sqrt(det) peaks at an end,
    and outside the band ρ(J_i) is monotone in h (operators.md §6): ρ(J) is the larger
    of the two end blocks' (bounded by the Lanczos bounds on the ends). Transient growth
    and ρ_ε of the end blocks are lower bounds; κ(V) needs interior eigenvalues near the
    exceptional points and is unavailable at scale."""
    analysis = analyze_blocks(form, np.array([hmin, hmax]), options.eps, options.power_max)
    metrics = {"spectral_radius": analysis.metrics["spectral_radius"], **extra,
               "max_power_norm": analysis.metrics["max_power_norm"],
               "argmax_power": analysis.metrics["argmax_power"]}
    metrics.setdefault("hessian_lambda_max", hmax)
    metrics.setdefault("hessian_lambda_min", hmin)
    accuracy = {"spectral_radius": {"accuracy": "bound",
                                    "method": "end blocks of the lanczos extremes"},
                "max_power_norm": {"accuracy": "lower_bound",
                                   "method": "the two end blocks only"},
                "argmax_power": {"accuracy": "lower_bound",
                                 "method": "the two end blocks only"},
                "hessian_lambda_max": {"accuracy": "bound",
                                       "error_bar": info["lambda_max_bound"]},
                "hessian_lambda_min": {"accuracy": "bound",
                                       "error_bar": info["lambda_min_bound"]}}
    why = "needs the whole spectrum of H (matrix-free run: only its two ends were computed)"
    return {"name": f"optimizer:{form.form}", "optimizer": form.optimizer, "form": form.form,
            "coordinates": form.coordinates, "n_params": info["n_params"], "step": form.step,
            "settings": dict(form.settings), "metrics": metrics, "accuracy": accuracy,
            "unavailable": {k: why for k in ("kappa_V", "transient_window",
                                             "kreiss_lower_bound", "commutator_norm_relative",
                                             "power_above_one_until")},
            "hessian": info, "details": {"pseudospectral_radius": [
                dict(p, kind="lower_bound") for p in
                analysis.details["pseudospectral_radius"]]}}
