"""The scalar indicators of a checkpoint's document (a trajectory's series), and the
histogram of its singular values."""

from __future__ import annotations

import math
from typing import Any

from spectrum_cli.core.metrics import CORE_METRICS
from spectrum_cli.report.document import as_number

#: Operator metrics that describe the Hessian or the optimizer, not one operator form
#: (and every edge-of-stability ratio, ``eos_ratio_*``, whichever rule reports it).
SHARED = frozenset({"hessian_lambda_max", "hessian_lambda_min", "commutator_norm_relative",
                    "preconditioner_spread"})


def _shared(key: str) -> bool:
    return key in SHARED or key.startswith("eos_ratio_")


#: Per-tensor κ indicators (weights-only checkpoints): at most this many tensors, the
#: largest by element count (a fixed choice along a run, so the series are aligned).
PER_TENSOR_MAX = 64



def _numel(shape: Any) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        return 0
    return math.prod(shape)


def indicators(doc: dict[str, Any]) -> dict[str, float]:
    """The scalar indicators of one checkpoint's document.

    ``tensors.*``: max κ, max σ_max, min stable rank, mean entropies over the tensors;
    ``<form>.*`` and ``optimizer.*``: the update operators' metrics. A checkpoint with
    neither an optimizer operator nor a loss (weights only) also gets
    ``tensor.kappa[<name>]`` for its :data:`PER_TENSOR_MAX` largest tensors.
    """
    out: dict[str, float] = {}
    ok = [t for t in doc.get("tensors", []) if t["status"] == "ok"]

    def collect(metric: str) -> list[float]:
        vals = [as_number(t["metrics"].get(metric)) for t in ok]
        return [v for v in vals if v is not None and not math.isnan(v)]

    for metric, how in (("kappa", max), ("sigma_max", max), ("stable_rank", min),
                        ("spectral_entropy", "mean"), ("spectral_entropy_normalized", "mean"),
                        ("kappa_V", max), ("spectral_radius", max),
                        # WeightWatcher's model-level averages
                        ("alpha", "mean"), ("alpha_weighted", "mean"),
                        ("log_alpha_norm", "mean"), ("rand_distance", "mean")):
        vals = collect(metric)
        if vals:
            name = f"tensors.{'mean' if how == 'mean' else how.__name__}_{metric}"
            out[name] = float(sum(vals) / len(vals)) if how == "mean" else float(how(vals))
    for metric in sorted({k for t in ok for k in t["metrics"]} - set(CORE_METRICS)):
        vals = collect(metric)  # a metric plugin's values: their largest over the tensors
        if vals:
            out[f"tensors.max_{indicator_name(metric)}"] = float(max(vals))
    operators = doc.get("operators", [])
    for op in operators:
        for key, value in op["metrics"].items():
            v = as_number(value)
            if v is not None:
                # Hessian-level metrics are the same for every operator of a checkpoint.
                prefix = "optimizer" if _shared(key) else op["form"]
                out[f"{prefix}.{key}"] = v
        for p in op.get("details", {}).get("pseudospectral_radius", []):
            v = as_number(p["value"])
            if v is not None:
                out[f"{op['form']}.rho_eps[{float(p['eps']):g}]"] = v
    spread = as_number(doc.get("optimizer", {}).get("preconditioner_spread"))
    if spread is not None:
        out["optimizer.preconditioner_spread"] = spread
    if not operators and doc.get("checkpoint", {}).get("loss") is None:
        out.update(per_tensor_kappa(ok))
    return out


def per_tensor_kappa(tensors: list[dict[str, Any]]) -> dict[str, float]:
    """``tensor.kappa[<name>]`` of the largest tensors (by element count, then name);
    the name as :func:`indicator_name` writes it."""
    chosen = sorted((t for t in tensors if as_number(t["metrics"].get("kappa")) is not None),
                    key=lambda t: (-_numel(t.get("shape")), str(t.get("name"))))
    out: dict[str, float] = {}
    for t in chosen[:PER_TENSOR_MAX]:
        out[f"tensor.kappa[{indicator_name(str(t.get('name')))}]"] = float(
            as_number(t["metrics"]["kappa"]))  # type: ignore[arg-type]
    return out


_UNSAFE = frozenset("%/|[]") | {chr(c) for c in (*range(32), 127)}


def indicator_name(name: str) -> str:
    """A tensor name as part of an indicator name: ``%``, ``/``, ``|``, brackets and
    control characters percent-encoded (``a/b`` is ``a%2Fb``), so distinct tensors
    keep distinct names in every form of the trajectory (HDF5 paths included)."""
    return "".join(f"%{ord(c):02X}" if c in _UNSAFE else c for c in name)


#: Bins of :func:`sv_histogram`: log10 σ from LO to HI in BINS equal bins.
SV_HIST_LO, SV_HIST_HI, SV_HIST_BINS = -8.0, 4.0, 240


def sv_histogram(result: Any) -> dict[str, Any]:
    """The distribution of the singular values computed for a checkpoint (every
    analysed matrix together; all of them with the dense backend, the extremes with an
    iterative one): counts of log10 σ in fixed bins, so that checkpoints compare (for
    TensorBoard's histograms); σ below the range (zeros included) and above it are
    counted in ``below`` and ``above``."""
    import numpy as np

    parts = [np.asarray(t.singular_values.values, dtype=np.float64)
             for t in getattr(result, "tensors", ())
             if getattr(t, "singular_values", None) is not None]
    sv = np.concatenate(parts) if parts else np.zeros(0)
    sv = sv[np.isfinite(sv)]
    with np.errstate(divide="ignore"):
        x = np.log10(np.abs(sv))
    inside = (x >= SV_HIST_LO) & (x <= SV_HIST_HI)
    counts, _ = np.histogram(x[inside], bins=SV_HIST_BINS, range=(SV_HIST_LO, SV_HIST_HI))
    return {"lo": SV_HIST_LO, "hi": SV_HIST_HI, "counts": [int(c) for c in counts],
            "below": int((x < SV_HIST_LO).sum()), "above": int((x > SV_HIST_HI).sum())}

