"""HDF5 reports, schema ``spectrum.analysis`` v1, written atomically.

Layout::

    /                      attrs: schema, schema_version, tool_name, tool_version, created,
                                  source_path, source_format, source_sha256,
                                  source_size_bytes, source_files, source_notes (JSON),
                                  settings, fail_on, summary (JSON)
    /tensors/<name>        one group per matrix, in analysis order; '/' in a tensor name
                           becomes '|' (the original is the ``name`` attribute)
        attrs              name, shape, matrix_shape, dtype, kind, status, time_s,
                           converged, notes, method, accuracy, unavailable and
                           nonnormal (JSON: pseudospectral radii, clusters, Kreiss),
                           one attribute per defined metric, undefined_metrics (names
                           whose value is null)
        singular_values    float64, descending; attribute ``which``: all | largest
        singular_values_smallest   float64 (backends of extremes only)
        eigenvalues        complex128, by decreasing modulus (square matrices)
        eig_conditions     float64, 1/|y_iᴴx_i| in the order of eigenvalues
        power_norms        float64, ‖A^k‖₂ for k = 1..power_max (the transient curve)
    /skipped/{name,shape,dtype,reason}    one row per skipped tensor (strings)
    /errors/{name,message}                one row per failed tensor (strings)
    /operators/<NN name>   one group per update operator (with an optimizer state):
        attrs              entry (JSON: optimizer, form, coordinates, metrics, ...)
        power_norms, eigenvalues, hessian_eigenvalues   (dense runs)
    root attr ``optimizer`` (JSON): optimizer-only metrics, hyper-parameters, notes
    root attr ``checkpoint`` (JSON): step and loss the checkpoint itself stores

The file is written to a temporary name in the target's directory and moved into place
with ``os.replace``: a killed run leaves the previous report intact (a direct write
killed mid-way leaves a file that opens but raises "bad object header version
number"; docs/ecosystem.md). Temporary files of dead runs are swept on the next write.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
from typing import Any, Iterator

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.core.results import AnalysisResult
from spectrum_cli.report.document import SCHEMA, json_safe

SPECTRA = ("singular_values", "singular_values_smallest", "eigenvalues", "eig_conditions",
           "power_norms")
_TABLES = {"skipped": ("name", "shape", "dtype", "reason"), "errors": ("name", "message")}


def _h5():
    import h5py

    return h5py


def _tmp_pattern(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.tmp-")


def _sweep_stale(path: str) -> None:
    for tmp in glob.glob(glob.escape(_tmp_pattern(path)) + "*"):
        try:
            pid = int(tmp.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.remove(tmp)
            except OSError:
                pass
        except (ValueError, OSError):
            continue


def _group_name(name: str, taken: set[str]) -> str:
    g = name.replace("/", "|") or "(unnamed)"
    if g == ".":
        g = "(dot)"
    base, i = g, 2
    while g in taken:
        g, i = f"{base}#{i}", i + 1
    taken.add(g)
    return g


def _write_table(parent, name: str, rows: list[dict], columns: tuple[str, ...]) -> None:
    h5py = _h5()
    grp = parent.create_group(name, track_order=True)
    for col in columns:
        values = [r[col] if isinstance(r[col], str) else json.dumps(r[col]) for r in rows]
        grp.create_dataset(col, data=np.array(values, dtype=object),
                           dtype=h5py.string_dtype())


def _spectrum_dataset(grp, name: str, data: np.ndarray) -> None:
    kwargs: dict[str, Any] = {}
    if data.size > 1024:
        kwargs = {"chunks": True, "compression": "gzip", "shuffle": True}
    grp.create_dataset(name, data=data, **kwargs)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[Any]:
    """An ``h5py.File`` open for writing at a temporary name beside ``path``, moved into
    place with ``os.replace`` when the block succeeds and removed when it fails; stale
    temporaries of dead runs are swept first."""
    h5py = _h5()
    _sweep_stale(path)
    tmp = f"{_tmp_pattern(path)}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write_report(path: str, doc: dict[str, Any], result: AnalysisResult,
                 operator_arrays: Any = ()) -> None:
    """Write ``doc`` (from :func:`build_document`) and ``result``'s spectra to ``path``;
    ``operator_arrays`` holds each operator's arrays (power norms, eigenvalues)."""
    doc = json_safe(doc)
    with atomic_file(path) as f:
        f.attrs["schema"] = doc["schema"]
        f.attrs["schema_version"] = doc["schema_version"]
        f.attrs["tool_name"] = doc["tool"]["name"]
        f.attrs["tool_version"] = doc["tool"]["version"]
        f.attrs["created"] = doc["created"]
        src = doc["source"]
        f.attrs["source_path"] = src["path"]
        f.attrs["source_format"] = src["format"]
        f.attrs["source_sha256"] = src["sha256"] or ""
        f.attrs["source_size_bytes"] = src["size_bytes"]
        f.attrs["source_files"] = json.dumps(src["files"])
        f.attrs["source_notes"] = json.dumps(src["notes"])
        for key in ("settings", "fail_on", "summary"):
            f.attrs[key] = json.dumps(doc[key])
        tgroup = f.create_group("tensors", track_order=True)
        taken: set[str] = set()
        for entry, t in zip(doc["tensors"], result.tensors):
            g = tgroup.create_group(_group_name(entry["name"], taken), track_order=True)
            for key in ("name", "dtype", "kind", "status"):
                g.attrs[key] = entry[key]
            g.attrs["shape"] = np.array(entry["shape"], dtype=np.int64)
            g.attrs["matrix_shape"] = np.array(entry["matrix_shape"], dtype=np.int64)
            g.attrs["time_s"] = entry["time_s"]
            for key in ("notes", "method", "accuracy", "unavailable", "nonnormal"):
                g.attrs[key] = json.dumps(entry[key])
            g.attrs["converged"] = entry["converged"]
            undefined = []
            for metric, value in t.metrics.items():
                if value is None:
                    undefined.append(metric)
                else:
                    g.attrs[metric] = value
            g.attrs["undefined_metrics"] = json.dumps(undefined)
            if t.singular_values is not None:
                _spectrum_dataset(g, "singular_values", t.singular_values.values)
                g["singular_values"].attrs["which"] = t.singular_values.which
            if t.smallest is not None:
                _spectrum_dataset(g, "singular_values_smallest", t.smallest.values)
            if t.eigenvalues is not None:
                _spectrum_dataset(g, "eigenvalues", t.eigenvalues.values)
            if t.nonnormal is not None:
                _spectrum_dataset(g, "eig_conditions", t.nonnormal.eigen.eig_conditions)
                _spectrum_dataset(g, "power_norms", t.nonnormal.powers.norms)
        for table, columns in _TABLES.items():
            _write_table(f, table, doc[table], columns)
        if "checkpoint" in doc:
            f.attrs["checkpoint"] = json.dumps(doc["checkpoint"])
        if "optimizer" in doc:
            f.attrs["optimizer"] = json.dumps(doc["optimizer"])
            ogroup = f.create_group("operators", track_order=True)
            arrays = list(operator_arrays) or [{}] * len(doc["operators"])
            for i, (entry, arr) in enumerate(zip(doc["operators"], arrays)):
                g = ogroup.create_group(f"{i:02d} {entry['name']}", track_order=True)
                g.attrs["entry"] = json.dumps(entry)
                for key, value in arr.items():
                    _spectrum_dataset(g, key, np.asarray(value))


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def read_report(path: str, spectra: bool = False) -> dict[str, Any]:
    """The document stored in a report; with ``spectra`` also each tensor's
    ``singular_values`` and ``eigenvalues`` arrays (under ``"spectra"``)."""
    h5py = _h5()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 report ({exc})") from None
    with f:
        a = f.attrs
        if _str(a.get("schema", "")) != SCHEMA:
            raise InputError(f"{path}: not a spectrum report (schema "
                             f"{_str(a.get('schema', '(none)'))!r})")
        version = _str(a["schema_version"])
        if version.split(".")[0] != "1":
            raise InputError(f"{path}: report schema version {version} is not supported "
                             "by this spectrum (reads 1.x)")
        doc: dict[str, Any] = {
            "schema": SCHEMA, "schema_version": version,
            "tool": {"name": _str(a["tool_name"]), "version": _str(a["tool_version"])},
            "created": _str(a["created"]),
            "source": {"path": _str(a["source_path"]), "format": _str(a["source_format"]),
                       "files": json.loads(a["source_files"]),
                       "size_bytes": int(a["source_size_bytes"]),
                       "sha256": _str(a["source_sha256"]) or None,
                       "notes": json.loads(a["source_notes"])},
        }
        for key in ("settings", "fail_on", "summary"):
            doc[key] = json.loads(a[key])
        from spectrum_cli.core.metrics import METRICS

        doc["tensors"] = []
        for g in f["tensors"].values():
            undefined = json.loads(g.attrs["undefined_metrics"])
            metrics = {m: _scalar(g.attrs[m]) for m in METRICS if m in g.attrs}
            metrics.update({m: None for m in undefined})
            entry = {"name": _str(g.attrs["name"]),
                     "shape": [int(x) for x in g.attrs["shape"]],
                     "matrix_shape": [int(x) for x in g.attrs["matrix_shape"]],
                     "dtype": _str(g.attrs["dtype"]), "kind": _str(g.attrs["kind"]),
                     "status": _str(g.attrs["status"]),
                     "metrics": {m: metrics[m] for m in METRICS if m in metrics},
                     "accuracy": json.loads(g.attrs["accuracy"]),
                     "unavailable": json.loads(g.attrs["unavailable"]),
                     "converged": bool(g.attrs["converged"]),
                     "nonnormal": json.loads(g.attrs["nonnormal"]),
                     "method": json.loads(g.attrs["method"]),
                     "notes": json.loads(g.attrs["notes"]),
                     "time_s": float(g.attrs["time_s"])}
            if spectra:
                entry["spectra"] = {k: g[k][()] for k in SPECTRA if k in g}
            doc["tensors"].append(entry)
        if "checkpoint" in a:
            doc["checkpoint"] = json.loads(a["checkpoint"])
        if "optimizer" in a:
            doc["optimizer"] = json.loads(a["optimizer"])
            doc["operators"] = [json.loads(g.attrs["entry"]) for g in f["operators"].values()]
        for table, columns in _TABLES.items():
            grp = f[table]
            cols = {c: [_str(v) for v in grp[c][()]] for c in columns}
            rows = [dict(zip(columns, vals)) for vals in zip(*(cols[c] for c in columns))]
            for r in rows:
                if "shape" in r:
                    r["shape"] = json.loads(r["shape"])
            doc[table] = rows
    return doc
