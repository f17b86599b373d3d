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
number"; the h5py documentation on strings). Temporary files of dead runs are swept on the next write.
Where a report may be written is decided by :mod:`spectrum_cli.report.output`.

Reading treats the file as untrusted input (:class:`SafeH5`): only hard links inside the
file are followed (no soft, external or user-defined links), datasets with external
storage, virtual datasets and filters other than HDF5's own and LZF are refused, and
every dataset's declared size is checked against limits (and, when stored without
compression, against the file's size) before anything is allocated. A missing or
ill-typed attribute, bad JSON or a document of the wrong shape is an
:class:`InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterable, Iterator

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.core.metrics import METRICS
from spectrum_cli.core.results import AnalysisResult
from spectrum_cli.report.document import ANALYSIS_SPEC, SCHEMA, json_safe, validate
from spectrum_cli.report.output import HDF5_MAGIC, atomic_path, check_target

SPECTRA = ("singular_values", "singular_values_smallest", "eigenvalues", "eig_conditions",
           "power_norms")
_TABLES = {"skipped": ("name", "shape", "dtype", "reason"), "errors": ("name", "message")}


def _h5():
    import h5py

    return h5py


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
def atomic_file(path: str, *, force: bool = False,
                inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Any]:
    """An ``h5py.File`` to fill; when the block succeeds its bytes go to a temporary name
    beside ``path``, moved into place with ``os.replace`` (removed on any failure; stale
    temporaries of dead runs are swept first).

    ``path`` is judged by :func:`spectrum_cli.report.output.check_target` (kind
    ``report``): never one of ``inputs``, a device, a FIFO or a directory, nor an existing
    file that is not a spectrum output unless ``force``. The file is built in memory
    (HDF5's core driver) and written with plain file I/O: HDF5 failing to write to a
    full disk raises RuntimeErrors and can crash the interpreter at exit, while a plain
    write fails with an ``OSError``, which becomes an :class:`InputError` naming
    ``path``."""
    h5py = _h5()

    check_target(path, kind="report", inputs=inputs, force=force)  # before the work
    name = f"spectrum-report-{os.getpid()}-{id(object())}"
    f = h5py.File(name, "w", driver="core", backing_store=False, track_order=True)
    try:
        yield f
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    with atomic_path(path, kind="report", inputs=inputs, force=force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())


def write_report(path: str, doc: dict[str, Any], result: AnalysisResult,
                 operator_arrays: Any = (), *, force: bool = False,
                 inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write ``doc`` (from :func:`build_document`) and ``result``'s spectra to ``path``;
    ``operator_arrays`` holds each operator's arrays (power norms, eigenvalues);
    ``force`` and ``inputs`` as in :func:`atomic_file`."""
    doc = json_safe(doc)
    with atomic_file(path, force=force, inputs=inputs) as f:
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
            g.attrs["metric_names"] = json.dumps(list(t.metrics))  # plugins' too, in order
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


# ---- reading an untrusted file ------------------------------------------------------

#: Elements one dataset may hold (2^25: 256 MiB of float64), and all datasets of one read.
MAX_DATASET_ELEMENTS = 1 << 25
MAX_READ_ELEMENTS = 1 << 27
#: Filters whose code ships with HDF5 or h5py (anything else would load a plugin).
SAFE_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
                6: "scaleoffset", 32000: "lzf"}


class SafeH5:
    """An HDF5 file open for reading as untrusted input; every refusal is an
    :class:`InputError` naming the file and the object."""

    def __init__(self, path: str) -> None:
        self.path = path
        _regular_hdf5(path)
        try:
            self.file = _h5().File(path, "r")
        except OSError as exc:
            raise InputError(f"{path}: not a readable HDF5 report ({exc})") from None
        self.size = os.path.getsize(path)
        self.budget = MAX_READ_ELEMENTS

    def __enter__(self) -> "SafeH5":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def _refuse(self, where: str, what: str) -> InputError:
        return InputError(f"{self.path}: {where}: {what}; refused (spectrum reads only "
                          "what is stored in the report itself)")

    def child(self, parent: Any, name: str) -> Any:
        """``parent[name]`` when it is a hard link in this file, else InputError."""
        h5py = _h5()
        where = f"{parent.name.rstrip('/')}/{name}"
        link = parent.get(name, getlink=True)
        if link is None:
            raise InputError(f"{self.path}: {where} is missing (a damaged report)")
        if not isinstance(link, h5py.HardLink):
            kind = {h5py.ExternalLink: "an external link",
                    h5py.SoftLink: "a soft link"}.get(type(link), "a user-defined link")
            raise self._refuse(where, kind)
        return parent[name]

    def group(self, parent: Any, name: str) -> Any:
        obj = self.child(parent, name)
        if not isinstance(obj, _h5().Group):
            raise InputError(f"{self.path}: {obj.name} is not a group (a damaged report)")
        return obj

    def members(self, grp: Any) -> list[tuple[str, Any]]:
        """(name, object) of each member of ``grp``, links checked, in stored order."""
        return [(name, self.child(grp, name)) for name in grp.keys()]

    def dataset(self, parent: Any, name: str) -> np.ndarray:
        """The dataset's values, after checking links, storage and declared size."""
        ds = self.child(parent, name)
        if not isinstance(ds, _h5().Dataset):
            raise InputError(f"{self.path}: {ds.name} is not a dataset (a damaged report)")
        if ds.is_virtual:
            raise self._refuse(ds.name, "a virtual dataset (data in other files)")
        if ds.external:
            raise self._refuse(ds.name, "a dataset stored in external files")
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        unknown = [f for f in filters if f not in SAFE_FILTERS]
        if unknown:
            raise self._refuse(ds.name, f"compressed with unknown filter {unknown[0]} "
                                        "(would load a plugin)")
        self._check_size(ds.name, ds.shape, ds.dtype, compressed=bool(filters))
        return ds[()]

    def _check_size(self, where: str, shape: Any, dtype: Any, compressed: bool) -> None:
        n = 1
        for d in shape or ():
            n *= int(d)
        nbytes = n * max(int(dtype.itemsize), 1)
        if n > MAX_DATASET_ELEMENTS or n > self.budget:
            raise InputError(f"{self.path}: {where} declares {n} elements (limit "
                             f"{min(MAX_DATASET_ELEMENTS, self.budget)}); refused before "
                             "allocating it")
        if not compressed and nbytes > self.size:
            raise InputError(f"{self.path}: {where} declares {nbytes} bytes of "
                             f"uncompressed data, more than the file's {self.size}; "
                             "a damaged or forged report")
        self.budget -= n

    def attr(self, obj: Any, name: str) -> Any:
        """Attribute ``name`` of ``obj`` (size-checked), or InputError if missing."""
        h5py = _h5()
        if name not in obj.attrs:
            raise InputError(f"{self.path}: attribute {name!r} of {obj.name} is missing "
                             "(a damaged report)")
        aid = h5py.h5a.open(obj.id, name.encode())
        self._check_size(f"attribute {name!r} of {obj.name}", aid.shape, aid.dtype,
                         compressed=False)
        return obj.attrs[name]

    def text(self, obj: Any, name: str) -> str:
        value = _scalar(self.attr(obj, name))
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise InputError(f"{self.path}: attribute {name!r} of {obj.name} is not text "
                             "(a damaged report)")
        return value

    def json(self, obj: Any, name: str) -> Any:
        text = self.text(obj, name)
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise InputError(f"{self.path}: attribute {name!r} of {obj.name} is not "
                             "valid JSON (or nested too deeply)") from None

    def number(self, obj: Any, name: str) -> Any:
        value = _scalar(self.attr(obj, name))
        if isinstance(value, (bool, int, float)):
            return value
        raise InputError(f"{self.path}: attribute {name!r} of {obj.name} is not a number "
                         "(a damaged report)")

    def ints(self, obj: Any, name: str) -> list[int]:
        value = np.asarray(self.attr(obj, name))
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise InputError(f"{self.path}: attribute {name!r} of {obj.name} is not a "
                             "list of integers (a damaged report)")
        return [int(x) for x in value]

    def strings(self, parent: Any, name: str) -> list[str]:
        values = np.atleast_1d(self.dataset(parent, name))
        return [_str(v) for v in values.tolist()]


def _regular_hdf5(path: str) -> None:
    """Refuse what is not a regular file (a FIFO would hang the reader) or not HDF5."""
    import stat

    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (a directory, device or FIFO); "
                         "a report is an HDF5 file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if head != HDF5_MAGIC:
        raise InputError(f"{path}: not a readable HDF5 report (no HDF5 signature)")


def _vector(r: SafeH5, g: Any, name: str) -> np.ndarray:
    """A stored spectrum: a 1-D array of numbers, or InputError."""
    arr = np.asarray(r.dataset(g, name))
    if arr.ndim != 1 or arr.dtype.kind not in "fiuc":
        raise InputError(f"{r.path}: {g.name}/{name} is not a 1-D array of numbers "
                         "(a damaged report)")
    return arr


def _str(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value
    return value.item() if hasattr(value, "item") else value


#: What a damaged file can raise while being read, besides our own InputError.
DAMAGE = (KeyError, ValueError, TypeError, AttributeError, IndexError, OSError,
          RuntimeError, RecursionError)


def read_report(path: str, spectra: bool = False) -> dict[str, Any]:
    """The document stored in a report; with ``spectra`` also each tensor's
    ``singular_values`` and ``eigenvalues`` arrays (under ``"spectra"``)."""
    with SafeH5(path) as r:
        check_schema(r, SCHEMA, "report")
        try:
            doc = _read_document(r, spectra)
        except DAMAGE as exc:
            raise InputError(f"{path}: a damaged spectrum report ({type(exc).__name__}: "
                             f"{exc})") from None
    validate(doc, ANALYSIS_SPEC, path)
    return doc


def check_schema(r: SafeH5, schema: str, what: str) -> str:
    """The file's schema version after checking the schema name and major version 1."""
    found = r.text(r.file, "schema") if "schema" in r.file.attrs else "(none)"
    if found != schema:
        raise InputError(f"{r.path}: not a spectrum {what} (schema {found!r}, expected "
                         f"{schema!r})")
    version = r.text(r.file, "schema_version")
    if version.split(".")[0] != "1":
        raise InputError(f"{r.path}: {what} schema version {version} is not supported "
                         "by this spectrum (reads 1.x)")
    return version


#: Attributes of a tensor group that are not metrics (no metric may take these names).
RESERVED_ATTRS = frozenset({"name", "dtype", "kind", "status", "shape", "matrix_shape",
                            "time_s", "notes", "method", "accuracy", "unavailable",
                            "nonnormal", "converged", "undefined_metrics", "metric_names"})


def _read_document(r: SafeH5, spectra: bool) -> dict[str, Any]:
    f = r.file
    doc: dict[str, Any] = {
        "schema": SCHEMA, "schema_version": r.text(f, "schema_version"),
        "tool": {"name": r.text(f, "tool_name"), "version": r.text(f, "tool_version")},
        "created": r.text(f, "created"),
        "source": {"path": r.text(f, "source_path"), "format": r.text(f, "source_format"),
                   "files": r.json(f, "source_files"),
                   "size_bytes": r.number(f, "source_size_bytes"),
                   "sha256": r.text(f, "source_sha256") or None,
                   "notes": r.json(f, "source_notes")},
    }
    for key in ("settings", "fail_on", "summary"):
        doc[key] = r.json(f, key)
    doc["tensors"] = []
    for _, g in r.members(r.group(f, "tensors")):
        undefined = r.json(g, "undefined_metrics")
        names = r.json(g, "metric_names") if "metric_names" in g.attrs else list(METRICS)
        names = [m for m in names if isinstance(m, str) and m not in RESERVED_ATTRS]
        metrics = {m: r.number(g, m) for m in names if m in g.attrs}
        metrics.update({m: None for m in undefined if isinstance(m, str)})
        entry = {"name": r.text(g, "name"), "shape": r.ints(g, "shape"),
                 "matrix_shape": r.ints(g, "matrix_shape"),
                 "dtype": r.text(g, "dtype"), "kind": r.text(g, "kind"),
                 "status": r.text(g, "status"),
                 "metrics": {m: metrics[m] for m in names if m in metrics},
                 "accuracy": r.json(g, "accuracy"), "unavailable": r.json(g, "unavailable"),
                 "converged": bool(r.number(g, "converged")),
                 "nonnormal": r.json(g, "nonnormal"), "method": r.json(g, "method"),
                 "notes": r.json(g, "notes"), "time_s": r.number(g, "time_s")}
        if spectra:
            entry["spectra"] = {k: _vector(r, g, k) for k in SPECTRA if k in g}
        doc["tensors"].append(entry)
    if "checkpoint" in f.attrs:
        doc["checkpoint"] = r.json(f, "checkpoint")
    if "optimizer" in f.attrs:
        doc["optimizer"] = r.json(f, "optimizer")
        doc["operators"] = [r.json(g, "entry") for _, g in r.members(r.group(f, "operators"))]
    for table, columns in _TABLES.items():
        grp = r.group(f, table)
        cols = [r.strings(grp, c) for c in columns]
        if len({len(c) for c in cols}) > 1:
            raise InputError(f"{r.path}: the columns of /{table} differ in length "
                             "(a damaged report)")
        rows = [dict(zip(columns, vals)) for vals in zip(*cols)]
        for row in rows:
            if "shape" in row:
                row["shape"] = json.loads(row["shape"])
        doc[table] = rows
    return doc
