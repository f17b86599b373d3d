"""The report document: one plain, JSON-ready dict built from an analysis.

The JSON output, the HDF5 report's attributes and the terminal summary are all views of
this document, so they cannot disagree. Schema (``spectrum.analysis`` v1, semver):

``schema``, ``schema_version``, ``tool`` {name, version}, ``created`` (ISO 8601, UTC),
``source`` {path, format, files, size_bytes, sha256, notes}, ``settings``,
``tensors`` [{name, shape, matrix_shape, dtype, kind, status, metrics, accuracy,
unavailable, converged, nonnormal, method, notes, time_s}], ``skipped`` [{name, shape, dtype, reason}], ``errors`` [{name, message}],
``fail_on`` {conditions, violations [{condition, tensor, metric, value}]},
``summary`` {analysed, skipped, errors, violations, time_s}.

JSON has no infinities or NaN: such floats are written as the strings ``"inf"``,
``"-inf"`` and ``"nan"``; ``null`` means a metric is undefined for that matrix.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from typing import Any, Sequence

from spectrum_cli import __version__
from spectrum_cli.core.results import AnalysisResult, TensorResult

SCHEMA = "spectrum.analysis"
SCHEMA_VERSION = "1.0.0"


def _run(sv: Any) -> dict[str, Any]:
    out = {"backend": sv.backend, "route": sv.route, "accuracy": sv.accuracy,
           "which": sv.which, "error_estimate": sv.error_estimate, "converged": sv.converged,
           "n_matvec": sv.n_matvec, "time_s": sv.time_s}
    if sv.settings:
        out["settings"] = dict(sv.settings)
    return out


def _method(t: TensorResult) -> dict[str, Any]:
    if t.singular_values is None:
        return {}
    out = _run(t.singular_values)
    if t.smallest is not None:
        out["smallest"] = _run(t.smallest)
    if t.eigenvalues is not None:
        out["eigenvalues_route"] = t.eigenvalues.route
    return out


def tensor_entry(t: TensorResult) -> dict[str, Any]:
    return {
        "name": t.name, "shape": list(t.shape), "matrix_shape": list(t.matrix_shape),
        "dtype": t.dtype, "kind": t.kind, "status": t.status, "metrics": dict(t.metrics),
        "accuracy": {k: dict(v) for k, v in t.accuracy.items()},
        "unavailable": dict(t.unavailable), "converged": t.converged,
        "nonnormal": t.nonnormal.details() if t.nonnormal is not None else None,
        "method": _method(t), "notes": list(t.notes), "time_s": t.time_s,
    }


def build_document(result: AnalysisResult, conditions: Sequence[Any] = (),
                   violations: Sequence[Any] = ()) -> dict[str, Any]:
    """The document for ``result`` and the ``--fail-on`` outcome."""
    src = result.source
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "spectrum", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": src.path, "format": src.format, "files": list(src.files),
                   "size_bytes": src.size_bytes, "sha256": src.sha256,
                   "notes": list(src.notes)},
        "settings": dict(result.settings),
        "tensors": [tensor_entry(t) for t in result.tensors],
        "skipped": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype,
                     "reason": s.reason} for s in result.skipped],
        "errors": [{"name": e.name, "message": e.message} for e in result.errors],
        "fail_on": {
            "conditions": [str(c) for c in conditions],
            "violations": [{"condition": str(v.condition), "tensor": v.tensor,
                            "metric": v.condition.metric, "value": v.value}
                           for v in violations],
            "unchecked": unchecked(conditions, result.tensors),
        },
        "summary": {"analysed": len(result.tensors), "skipped": len(result.skipped),
                    "errors": len(result.errors), "violations": len(violations),
                    "not_converged": sum(1 for t in result.tensors if not t.converged),
                    "time_s": result.time_s},
    }


def unchecked(conditions: Sequence[Any], tensors: Sequence[TensorResult]) -> list[dict]:
    """Conditions that could not be checked on a tensor because its backend could not
    compute the metric (an unavailable metric never passes silently)."""
    from spectrum_cli.core.selection import compile_pattern

    out = []
    for c in conditions:
        match = compile_pattern(c.scope) if c.scope else None
        for t in tensors:
            if c.metric in t.unavailable and (match is None or match(t.name)):
                out.append({"condition": str(c), "tensor": t.name,
                            "reason": t.unavailable[c.metric]})
    return out


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats by strings, recursively (numpy scalars become Python)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def from_json_value(value: Any) -> Any:
    """Inverse of :func:`json_safe` for one metric value."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(json_safe(doc), indent=2, allow_nan=False)
