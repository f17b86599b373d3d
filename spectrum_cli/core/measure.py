"""Measure one matrix with one backend: every metric it can honestly provide.

A backend with the full spectrum (``"all"`` in its singular-value capabilities) gives
every metric exactly. A backend of extremes gives σ_max (and σ_min if it can reach the
bottom) with error bounds, the metrics that follow from them by interval arithmetic
(κ, spectral gap, stable rank; ‖W‖_F is exact from the entries) and, if it estimates
trace functions, the spectral entropy with an error bar. What it cannot give is listed
in ``unavailable`` with the reason: never silently a different number.
"""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

import numpy as np

from spectrum_cli.core import metrics as M
from spectrum_cli.core.results import Eigenvalues, TensorResult
from spectrum_cli.core.scaling import ldexp, scale_exponent, scaled_result



def _interval(value: float, lo: float, hi: float) -> float:
    """Half-width that covers [lo, hi] around value."""
    return max(abs(hi - value), abs(value - lo))


def analyze_matrix(planned: Any, a: np.ndarray, options: Any, backend: Any,
                   metrics: Any = None) -> TensorResult:
    """All metrics of one float64 matrix ``a`` (already reshaped) with ``backend``:
    ``metrics`` are the registered :class:`~spectrum_cli.core.metrics.Metric` objects
    (the built-in ones by default); a metric this backend cannot serve is listed in
    ``unavailable`` with the reason."""
    registered = M.BUILTIN if metrics is None else tuple(
        m for m in M.ordered(metrics)
        if not m.opt_in or getattr(options, m.opt_in, False))  # costly ones when asked
    t0 = time.perf_counter()
    base = dict(name=planned.name, shape=tuple(planned.shape),
                matrix_shape=tuple(planned.matrix_shape), dtype=planned.dtype,
                kind=planned.kind)
    # Row norms first: any NaN/Inf entry makes ‖A‖_F² non-finite, so that one pass also
    # screens the entries (a finite matrix whose squares overflowed gets the full check).
    with np.errstate(over="ignore", invalid="ignore"):
        entries = M.entry_metrics(a)
    if not math.isfinite(entries["frobenius_norm"]) and not np.isfinite(a).all():
        n_nan = int(np.count_nonzero(np.isnan(a)))
        n_inf = int(np.count_nonzero(np.isinf(a)))
        return TensorResult(**base, status="nonfinite",
                            metrics={"nonfinite_count": n_nan + n_inf},
                            notes=(f"{n_nan} NaN and {n_inf} Inf entries: spectra not computed",),
                            time_s=time.perf_counter() - t0)
    caps = backend.capabilities
    common = {"dtype": options.dtype, "device": options.device}
    extra: dict[str, Any] = {}
    # Entries near the float64 limits: every backend (plugins too) sees 2^-e·A (exact),
    # and the absolute quantities are scaled back; ratios need nothing.
    e = scale_exponent(a, entries["frobenius_norm"], options.dtype)
    b, fro_b = a, entries["frobenius_norm"]
    if e:
        b = ldexp(a, -e)
        fro_b = math.sqrt(float(np.einsum("ij,ij->", b, b)))
    reasons: dict[str, str] = {}
    if "all" in caps.singular_values:
        sv = backend.singular_values(b, which="all", route=options.svd_route,
                                     frobenius_norm=fro_b, **common)
        failed = extra.setdefault("unavailable", {})
        builtin = {m.name for m in M.BUILTIN}
        # Built-ins are ratios or are scaled back below; other metrics get the spectrum
        # of A itself (absolute scales: log norms, xmin, the MP edge).
        values = M.singular_value_metrics(
            sv.values, a.shape, options.effective_rank_tau,
            [m for m in registered if m.name in builtin], failed=failed)
        values.update(M.singular_value_metrics(
            ldexp(sv.values, e) if e else sv.values, a.shape, options.effective_rank_tau,
            [m for m in registered if m.name not in builtin], failed=failed,
            seed=options.seed, reasons=reasons))
    else:
        sv, extra = _extremes(b, options, backend, fro_b ** 2, common, planned.name)
        values = extra.pop("metrics")
        for m in registered:  # what needs the whole spectrum, a backend of extremes lacks
            if m.needs == "singular_values" and m.name not in values:
                extra["unavailable"].setdefault(
                    m.name, f"needs the full spectrum; backend {backend.name!r} computes "
                    "extremes")
    metrics = values
    if e:
        sv = _scale_back(sv, metrics, extra, e)
    metrics.update(entries)
    unavailable: dict[str, str] = extra.get("unavailable", {})
    eig = nonnormal = None
    if planned.wants_eigen(options):
        if "all" in caps.eigenvalues:
            from spectrum_cli.core.nonnormal import analyze_square

            t_eig = time.perf_counter()
            nonnormal = analyze_square(a, options.eps, options.eps_relative,
                                       options.power_max, metrics.get("sigma_max"))
            eig = Eigenvalues(nonnormal.eigen.eigenvalues, "dense", "geev (with vectors)",
                              "exact", time.perf_counter() - t_eig)
            metrics.update(nonnormal.metrics())
            extra.setdefault("notes", []).extend(nonnormal.notes)
        else:
            why = (f"backend {backend.name!r} computes no eigenvalues of non-symmetric "
                   "matrices")
            unavailable.update({k: why for k in ("spectral_radius", *M.NONNORMAL_METRICS)})
    full = sv.values if sv.which == "all" else None
    _plugin_metrics(registered, a, eig, metrics, unavailable, reasons,
                    M.SpectrumContext(tuple(a.shape), options.effective_rank_tau,
                                      options.seed, full))
    metrics["nonfinite_count"] = 0
    converged = sv.converged and extra.get("converged", True)
    notes = list(sv.notes) + extra.get("notes", []) + [
        f"{name} undefined: {why}" for name, why in reasons.items()]
    return TensorResult(**base, status="ok", metrics=metrics, singular_values=sv,
                        eigenvalues=eig, notes=tuple(notes),
                        time_s=time.perf_counter() - t0,
                        accuracy=extra.get("accuracy", {}), unavailable=unavailable,
                        converged=converged, smallest=extra.get("smallest"),
                        nonnormal=nonnormal)


def _plugin_metrics(registered: Any, a: np.ndarray, eig: Any, metrics: dict[str, Any],
                    unavailable: dict[str, str], reasons: dict[str, str],
                    ctx: M.SpectrumContext) -> None:
    """Registered metrics of the eigenvalues or of the matrix itself; a metric that
    fails is unavailable with its error, never a crash and never silently absent."""
    for m in registered:
        if m.needs == "singular_values" or m.name in metrics:
            continue
        if m.needs == "eigenvalues" and eig is None:
            unavailable[m.name] = ("needs eigenvalues: square matrices eigen-analysed under "
                                   "--square")
            continue
        arg = eig.values if m.needs == "eigenvalues" else a
        try:
            metrics[m.name] = m(arg, ctx)
        except Exception as exc:  # noqa: BLE001 - a plugin's failure is reported, not fatal
            unavailable[m.name] = M.failure(exc)
            continue
        if metrics[m.name] is None and (why := m.reason(arg, ctx)):
            reasons[m.name] = why


def _scale_back(sv: Any, metrics: dict[str, Any], extra: dict[str, Any], e: int) -> Any:
    """Turn results computed on ``2^-e·A`` into those of ``A``: singular values, σ_max,
    σ_min and their error bars times ``2^e`` (inf past 1.8e308, said so in the notes);
    κ, entropies, ranks, stable rank and spectral gap are ratios and stay as they are."""
    for key in ("sigma_max", "sigma_min"):
        if metrics.get(key) is not None:
            metrics[key] = ldexp(float(metrics[key]), e)
        bar = extra.get("accuracy", {}).get(key)
        if bar is not None and bar.get("error_bar") is not None:
            bar["error_bar"] = ldexp(float(bar["error_bar"]), e)
    if extra.get("smallest") is not None:
        extra["smallest"] = scaled_result(extra["smallest"], e)
    return scaled_result(sv, e)


def _extremes(a: np.ndarray, options: Any, backend: Any, fro_sq: float,
              common: dict[str, Any], name: str = "") -> tuple[Any, dict[str, Any]]:
    """Metrics from the extreme singular values (and trace estimates) of ``a``."""
    caps = backend.capabilities
    kmin = min(a.shape)
    # Independent random draws per tensor, reproducible from (seed, tensor name).
    seed = zlib.crc32(name.encode(), options.seed) if name else options.seed
    notes: list[str] = []
    try:
        top = backend.singular_values(a, k=min(max(options.top_k, 2), kmin),
                                      which="largest", seed=seed, **common)
    except NotImplementedError as exc:  # a backend that only gives σ_max
        top = backend.singular_values(a, k=1, which="largest", seed=seed, **common)
        notes.append(f"only σ_max: {exc}")
    s = top.values
    e = top.error_bounds if top.error_bounds is not None else np.full(s.size,
                                                                      top.error_estimate)
    s1, e1 = float(s[0]), float(e[0])
    metrics: dict[str, Any] = {"sigma_max": s1}
    accuracy = {"sigma_max": {"accuracy": top.accuracy, "error_bar": e1, "method": top.route}}
    unavailable: dict[str, str] = {}
    converged = top.converged
    if s1 > 0:
        sr = fro_sq / s1**2
        metrics["stable_rank"] = sr
        lo_s1 = max(s1 - e1, 1e-300)
        accuracy["stable_rank"] = {"accuracy": "bound", "method": "interval",
                                   "error_bar": _interval(sr, fro_sq / (s1 + e1) ** 2,
                                                          fro_sq / lo_s1**2)}
    else:
        metrics["stable_rank"] = None
    if s.size >= 2 and s1 > 0:
        s2, e2 = float(s[1]), float(e[1])
        gap = (s1 - s2) / s1
        metrics["spectral_gap"] = gap
        lo = 1 - (s2 + e2) / max(s1 - e1, 1e-300)
        hi = 1 - max(s2 - e2, 0.0) / (s1 + e1)
        accuracy["spectral_gap"] = {"accuracy": "bound", "method": "interval",
                                    "error_bar": _interval(gap, lo, hi)}
    elif kmin < 2:
        metrics["spectral_gap"] = None  # one singular value: undefined
    else:
        unavailable["spectral_gap"] = f"backend {backend.name!r} computed only σ_max"
    smallest = None
    if "smallest" in caps.singular_values:
        smallest = backend.singular_values(a, k=1, which="smallest", seed=seed, **common)
        converged = converged and smallest.converged
        sn, en = float(smallest.values[-1]), float(smallest.error_bounds[-1])
        metrics["sigma_min"] = sn
        accuracy["sigma_min"] = {"accuracy": "bound", "error_bar": en,
                                 "method": smallest.route}
        kappa = s1 / sn if sn > 0 else math.inf
        metrics["kappa"] = kappa
        hi = (s1 + e1) / (sn - en) if sn > en else math.inf
        lo = max(s1 - e1, 0.0) / (sn + en) if sn + en > 0 else math.inf
        accuracy["kappa"] = {"accuracy": "bound", "method": "interval",
                             "error_bar": _interval(kappa, lo, hi) if math.isfinite(kappa)
                             else math.inf}
    else:
        why = f"backend {backend.name!r} cannot compute the smallest singular values"
        unavailable.update(sigma_min=why, kappa=why)
    if caps.trace_functions and hasattr(backend, "spectral_entropy") and fro_sq > 0:
        est = backend.spectral_entropy(a, fro_sq, seed=seed)
        h, bar = est.value, est.error_bar
        metrics["spectral_entropy"] = h
        metrics["entropy_effective_rank"] = math.exp(h)
        for name, value, half in (("spectral_entropy", h, bar),
                                  ("entropy_effective_rank", math.exp(h),
                                   _interval(math.exp(h), math.exp(h - bar), math.exp(h + bar)))):
            accuracy[name] = {"accuracy": "estimate", "error_bar": half,
                              "confidence": est.confidence, "method": est.method,
                              "settings": est.settings, "n_matvec": est.n_matvec}
    else:
        why = f"backend {backend.name!r} does not estimate trace functions"
        unavailable.update(spectral_entropy=why, entropy_effective_rank=why)
    if not converged:
        notes.append("did not converge: see error bars")
    return top, {"metrics": metrics, "accuracy": accuracy, "unavailable": unavailable,
                 "smallest": smallest, "converged": converged, "notes": notes}
