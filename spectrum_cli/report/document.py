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
from typing import Any, Mapping, Sequence

from spectrum_cli import __version__
from spectrum_cli.core.errors import InputError
from spectrum_cli.core.results import AnalysisResult, TensorResult
from spectrum_cli.core.selection import compile_pattern

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
                   violations: Sequence[Any] = (), optim: Any = None,
                   checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The document for ``result`` and the ``--fail-on`` outcome, with the optimizer
    report ``optim`` (:class:`~spectrum_cli.runs.optimizer.OptimizerReport`, or None:
    its metrics and notes, the operators, the conditions they could not check) and the
    checkpoint's scalars (step, loss)."""
    doc = _tensors_document(result, conditions, violations)
    doc["checkpoint"] = dict(checkpoint or {})
    if optim is not None:
        operators = optim.operators
        doc["optimizer"] = dict(optim.optimizer, notes=optim.notes)
        doc["operators"] = operators
        doc["fail_on"]["unchecked"] += unchecked(conditions,
                                                 [Checkable(o) for o in operators])
        doc["summary"]["operators"] = len(operators)
    return doc


class Checkable:
    """An operator entry seen as a tensor by ``--fail-on`` (name, metrics, unavailable)."""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.name = entry["name"]
        self.metrics = entry["metrics"]
        self.unavailable = entry.get("unavailable", {})


def _tensors_document(result: AnalysisResult, conditions: Sequence[Any],
                      violations: Sequence[Any]) -> dict[str, Any]:
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
    out = []
    for c in conditions:
        match = compile_pattern(c.scope) if c.scope else None
        for t in tensors:
            if c.metric in t.unavailable and (match is None or match(t.name)):
                out.append({"condition": str(c), "tensor": t.name,
                            "reason": t.unavailable[c.metric]})
    return out


def text_safe(text: str) -> str:
    """``text`` as a string that encodes to UTF-8: a file name that is not UTF-8 reaches
    Python with its bytes as lone surrogates (``\\udcff``), which neither HDF5 nor a
    UTF-8 stream accepts; each such byte is written ``\\xff`` instead (other lone
    surrogates, say from JSON, as ``\\ud800``)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats by strings, recursively (numpy scalars become Python),
    and make every string encodable as UTF-8 (:func:`text_safe`)."""
    if isinstance(obj, str):
        return text_safe(obj)
    if isinstance(obj, dict):
        return {text_safe(str(k)): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
        if isinstance(obj, str):
            return text_safe(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def from_json_value(value: Any) -> Any:
    """Inverse of :func:`json_safe` for one metric value."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def as_number(value: Any) -> float | None:
    """A number of a document as a float (``"inf"``, ``"-inf"``, ``"nan"`` as
    :func:`json_safe` writes them), or None for anything else (None, booleans, text)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return float(value) if value in ("inf", "-inf", "nan") else None
    return float(value) if isinstance(value, (int, float)) else None


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(json_safe(doc), indent=2, allow_nan=False)


# ---- the shape of a document read back from a file ----------------------------------
#
# A spec is a type (or tuple of types), a predicate, a dict of required keys ("?key":
# optional; other keys are allowed) or a one-item list (every item). Only what the
# renderers and ``diff`` rely on is checked.


def _number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or \
        v in ("inf", "-inf", "nan")


def is_metric_value(v: Any) -> bool:
    return v is None or isinstance(v, bool) or _number(v)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_NONE = type(None)
_PSEUDO = [{"eps": _number, "value": _number, "kind": str}]
_ENTRY = {"metrics": {"*": is_metric_value}, "?accuracy": {"*": dict}, "?unavailable": dict}
TENSOR_SPEC = dict(_ENTRY, **{
    "name": str, "shape": [int], "matrix_shape": [int], "dtype": str, "kind": str,
    "status": str, "accuracy": {"*": dict}, "unavailable": dict, "converged": bool,
    "nonnormal": (dict, _NONE), "method": {"?backend": (str, _NONE), "?route": (str, _NONE)},
    "notes": [str], "time_s": _real})
_NONNORMAL = {"pseudospectral_radius": _PSEUDO, "max_power_norm_exact": bool}
ANALYSIS_SPEC = {
    "schema": str, "schema_version": str, "tool": {"name": str, "version": str},
    "created": str,
    "source": {"path": str, "format": str, "files": list, "size_bytes": _real,
               "sha256": (str, _NONE), "notes": [str]},
    "settings": dict,
    "tensors": [TENSOR_SPEC],
    "skipped": [{"name": str, "shape": list, "dtype": str, "reason": str}],
    "errors": [{"name": str, "message": str}],
    "fail_on": {"conditions": list, "?unchecked": list,
                "violations": [{"condition": str, "tensor": str, "value": is_metric_value}]},
    "summary": {"analysed": int, "skipped": int, "errors": int, "time_s": _real},
    "?checkpoint": (dict, _NONE),
    "?optimizer": {"optimizer": str, "?groups": [dict], "?tensors": list, "?notes": [str],
                   "?preconditioner_spread": is_metric_value},
    "?operators": [dict(_ENTRY, **{
        "form": str, "coordinates": str, "n_params": object,
        "?details": {"?pseudospectral_radius": _PSEUDO, "?rho_note": (str, _NONE)}})],
}
TRAJECTORY_SPEC = {
    "schema": str, "schema_version": str, "created": str, "source": str,
    "tool": {"version": str}, "settings": dict, "indicators": [str],
    "checkpoints": [{"path": str, "status": str, "indicators": {"*": _real}}],
    "spikes": {"rule": str, "onsets": list, "unstable": list, "defined": list,
               "windows": list},
    "scorecard": [{"indicator": str, "auc": is_metric_value, "threshold": is_metric_value,
                   "threshold_kind": str, "onsets": _real, "warned": _real,
                   "median_lead": is_metric_value, "censored": [(bool, int)]}],
    "fail_on": {"conditions": list, "violations": [
        {"condition": str, "tensor": str, "value": is_metric_value}]},
    "summary": {"checkpoints": int, "analysed": int, "failed": int, "from_cache": int},
}


def validate(doc: Any, spec: Any, path: str) -> None:
    """Raise :class:`InputError` naming ``path`` and the first field of ``doc`` that does
    not fit ``spec`` (documents read from files are untrusted)."""
    where = mismatch(doc, spec, "")
    if where is not None:
        raise InputError(f"{path}: a damaged spectrum document: {where or 'the root'} "
                         "is missing or has the wrong type")
    if spec is ANALYSIS_SPEC:
        for t in doc["tensors"]:
            if t["nonnormal"] is not None and \
                    mismatch(t["nonnormal"], _NONNORMAL, "") is not None:
                raise InputError(f"{path}: a damaged spectrum document: the nonnormal "
                                 f"entry of tensor {t['name']!r} has the wrong shape")


def mismatch(value: Any, spec: Any, where: str) -> str | None:
    """The path of the first mismatch of ``value`` against ``spec``, or None."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return where
        for key, sub in spec.items():
            if key == "*":
                bad = next((w for k, v in value.items()
                            if (w := mismatch(v, sub, f"{where}.{k}")) is not None), None)
                if bad is not None:
                    return bad
                continue
            name = key.lstrip("?")
            if name not in value:
                if key.startswith("?"):
                    continue
                return f"{where}.{name}"
            bad = mismatch(value[name], sub, f"{where}.{name}")
            if bad is not None:
                return bad
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return where
        for i, item in enumerate(value):
            bad = mismatch(item, spec[0], f"{where}[{i}]")
            if bad is not None:
                return bad
        return None
    if isinstance(spec, (type, tuple)):
        return None if isinstance(value, spec) else where
    return None if spec(value) else where


def fmt(x: Any, digits: int = 3) -> str:
    """Compact number: 3 significant digits (or ``digits``), exponent unpadded (8.18e4)."""
    x = from_json_value(x)
    if digits != 3 and isinstance(x, float) and math.isfinite(x) and 1e-2 <= abs(x) < 1e3:
        return f"{x:.{digits}g}"
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e3:
        return f"{x:.3g}"
    if 1e3 <= abs(x) < 1e5:
        return f"{x:.0f}"
    mant, exp = f"{x:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
