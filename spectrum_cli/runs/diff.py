"""``spectrum diff A B``: how two reports or two checkpoints differ, tensor by tensor.

Per matrix present in both: every metric's delta (A - B) and relative error |A - B|/|B|,
the relative distance of the singular spectra ‖σ_A - σ_B‖₂/‖σ_B‖₂, and, when both inputs
are checkpoints, the weights' own ‖W_A - W_B‖_F/‖W_B‖_F (and overall, over every common
matrix). These are the components of seed 001's decomposition: row/column norms,
singular values, κ, effective rank, spectral gap, Frobenius norm.

A tensor present in both whose shape changed is listed under ``shape_changed``
({name, a, b}) and its row carries ``shape_changed``: its spectra and weights are not
compared (their lengths differ), its metrics still are.
Names in the Markdown output are inert text (:func:`spectrum_cli.report.output.markdown_text`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.io import open_source, storage
from spectrum_cli.report.document import fmt, from_json_value, json_safe
from spectrum_cli.report.hdf5 import read_report
from spectrum_cli.report.output import HDF5_MAGIC
from spectrum_cli.report.output import markdown_text as md
from spectrum_cli.runs.document import analyze_checkpoint

SCHEMA = "spectrum.diff"
SCHEMA_VERSION = "1.0.0"


def _load(path: str, job: Any) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    """(document, name -> singular values, source or None) for a report or checkpoint."""
    if _is_report(path):
        doc = read_report(path, spectra=True)
        spectra = {t["name"]: np.asarray(t["spectra"]["singular_values"])
                   for t in doc["tensors"] if "singular_values" in t.get("spectra", {})}
        return doc, spectra, None

    out = analyze_checkpoint(path, job, digest=True)
    spectra = {t.name: t.singular_values.values for t in out.result.tensors
               if t.singular_values is not None and t.singular_values.which == "all"}
    return json_safe(out.doc), spectra, path


def _is_report(path: str) -> bool:
    """Whether ``path`` is an HDF5 file (then it must be a spectrum report); a FIFO,
    device or socket is refused here, before anything opens it (it could block)."""
    import stat


    if storage.is_url(path):
        return False  # reports are local files; a URL names a checkpoint
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file or folder (a device, FIFO or socket)")
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_MAGIC
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def _shapes(doc: dict[str, Any]) -> dict[str, list]:
    """Each tensor's stored shape, analysed or skipped (a matrix that became a vector
    is skipped on one side)."""
    out = {r["name"]: list(r["shape"]) for r in doc.get("skipped", [])}
    out.update({t["name"]: list(t["shape"]) for t in doc["tensors"]})
    return out


def _relative(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if b == 0 or not math.isfinite(b):
        return math.inf
    return abs(a - b) / abs(b)


def compare(path_a: str, path_b: str, job: Any) -> dict[str, Any]:
    doc_a, sv_a, src_a = _load(path_a, job)
    doc_b, sv_b, src_b = _load(path_b, job)
    ta = {t["name"]: t for t in doc_a["tensors"] if t["status"] == "ok"}
    tb = {t["name"]: t for t in doc_b["tensors"] if t["status"] == "ok"}
    common = [n for n in ta if n in tb]
    shapes_a, shapes_b = _shapes(doc_a), _shapes(doc_b)
    changed = {n: {"name": n, "a": shapes_a[n], "b": shapes_b[n]}
               for n in shapes_a if n in shapes_b and shapes_a[n] != shapes_b[n]}
    weights = _weight_diffs(src_a, src_b, common, job) if src_a and src_b else {}
    rows = []
    for name in common:
        metrics = {}
        for key, va in ta[name]["metrics"].items():
            a, b = from_json_value(va), from_json_value(tb[name]["metrics"].get(key))
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
                    not isinstance(a, bool) and not isinstance(b, bool):
                metrics[key] = {"a": a, "b": b, "delta": a - b, "relative": _relative(a, b)}
        row: dict[str, Any] = {"name": name, "shape": ta[name]["matrix_shape"],
                               "metrics": metrics}
        if name in changed:
            row["shape_changed"] = {"a": changed[name]["a"], "b": changed[name]["b"]}
        sa, sb = sv_a.get(name), sv_b.get(name)
        if sa is not None and sb is not None and sa.shape == sb.shape:
            row["singular_values_relative"] = float(np.linalg.norm(sa - sb) /
                                                    max(np.linalg.norm(sb), 1e-300))
        if name in weights:
            row["weights_relative"] = weights[name]["relative"]
        rows.append(row)
    rows.sort(key=lambda r: -_key(r))
    overall = None
    if weights:
        num = math.sqrt(sum(w["diff_sq"] for w in weights.values()))
        den = math.sqrt(sum(w["ref_sq"] for w in weights.values()))
        overall = num / den if den > 0 else math.inf
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "a": {"path": path_a, "kind": "checkpoint" if src_a else "report"},
            "b": {"path": path_b, "kind": "checkpoint" if src_b else "report"},
            "tensors": rows,
            "only_in_a": [n for n in ta if n not in tb],
            "only_in_b": [n for n in tb if n not in ta],
            "shape_changed": list(changed.values()),
            "weights_relative_overall": overall}


def _key(row: dict[str, Any]) -> float:
    k = row["metrics"].get("kappa", {}).get("relative", 0.0)
    return k if math.isfinite(k) else 1e300


def _weight_diffs(path_a: str, path_b: str, names: list[str], job: Any) -> dict[str, Any]:
    """‖W_A - W_B‖_F and ‖W_B‖_F per common matrix, reading one pair at a time."""
    out = {}
    sa, sb = open_source(path_a, job.policy), open_source(path_b, job.policy)
    try:
        base = {n.split("[")[0] for n in names}
        for name in base:
            try:
                wa, wb = sa.read(name), sb.read(name)
            except Exception:  # a tensor the reader cannot give back as is: skip it
                continue
            if wa.shape != wb.shape:
                continue
            d2, r2 = float(np.sum((wa - wb) ** 2)), float(np.sum(wb**2))
            out[name] = {"diff_sq": d2, "ref_sq": r2,
                         "relative": math.sqrt(d2 / r2) if r2 > 0 else math.inf}
    finally:
        sa.close()
        sb.close()
    return out


def shape_text(shape: list) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def markdown(doc: dict[str, Any], top: int = 20) -> str:
    """A Markdown table for CI comments; names and paths are inert text."""
    lines = [f"**spectrum diff** {md(doc['a']['path'])} vs {md(doc['b']['path'])}", ""]
    if doc["weights_relative_overall"] is not None:
        lines.append(f"Overall ‖W_A − W_B‖_F / ‖W_B‖_F = {fmt(doc['weights_relative_overall'])}")
        lines.append("")
    lines += ["| tensor | κ A | κ B | Δκ rel | σ rel | ‖ΔW‖/‖W‖ | eff. rank A/B |",
              "|---|---|---|---|---|---|---|"]
    for r in doc["tensors"][:top]:
        k = r["metrics"].get("kappa", {})
        er = r["metrics"].get("effective_rank", {})
        lines.append(f"| {md(r['name'])} | {fmt(k.get('a'))} | {fmt(k.get('b'))} | "
                     f"{fmt(k.get('relative'))} | {fmt(r.get('singular_values_relative'))} | "
                     f"{fmt(r.get('weights_relative'))} | {fmt(er.get('a'))}/{fmt(er.get('b'))} |")
    changed = doc.get("shape_changed", [])
    if changed:
        lines += ["", f"Shape changed ({len(changed)}; spectra and weights not compared):", ""]
        lines += [f"- {md(c['name'])}: shape changed {shape_text(c['a'])} -> "
                  f"{shape_text(c['b'])}"
                  for c in changed[:top]]
        if len(changed) > top:
            lines.append(f"- … and {len(changed) - top} more")
    if doc["only_in_a"] or doc["only_in_b"]:
        lines += ["", f"Only in A: {len(doc['only_in_a'])}; only in B: {len(doc['only_in_b'])}"]
    return "\n".join(lines) + "\n"
