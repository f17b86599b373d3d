"""The trajectory document of ``spectrum batch`` (schema ``spectrum.trajectory`` v1) and
its HDF5 form.

Document: ``schema``, ``schema_version``, ``tool``, ``created``, ``source``, ``settings``
(the analysis settings and the spike rule), ``checkpoints`` [{path, step, loss, status,
error, cached, indicators}], ``indicators`` (names), ``spikes`` {rule, unstable,
defined, onsets (steps), windows ([first, last] steps)}, ``scorecard`` [{indicator, auc,
threshold, threshold_kind, onsets, warned, median_lead, leads, censored}], ``fail_on``
{conditions, violations [{step, path, condition, tensor, metric, value}]}, ``summary``.

HDF5: root attributes for the scalars and JSON of the small tables; ``/steps``,
``/loss``, ``/unstable`` and ``/indicators/<name>`` datasets aligned by checkpoint (NaN
where an indicator is missing); ``/checkpoints/documents``: every checkpoint's full
analysis document as a JSON string. Written to a temporary file and moved into place.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from spectrum_cli import __version__
from spectrum_cli.core.errors import InputError
from spectrum_cli.core.trajectory import SpikeRule, detect_spikes, score
from spectrum_cli.report.document import TRAJECTORY_SPEC, json_safe, validate
from spectrum_cli.report.hdf5 import DAMAGE, SafeH5, atomic_file, check_schema

SCHEMA = "spectrum.trajectory"
SCHEMA_VERSION = "1.0.0"


def build(records: Sequence[dict[str, Any]], source: str, settings: dict[str, Any],
          rule: SpikeRule, conditions: Sequence[str] = ()) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == "ok"]
    names = sorted({k for r in ok for k in r["indicators"]})
    steps = [r.get("step") for r in ok]
    loss = [r.get("loss") if r.get("loss") is not None else math.nan for r in ok]
    spikes = detect_spikes(loss, rule)
    onset_steps = [steps[i] for i in spikes.onsets]
    scorecard = []
    if any(math.isfinite(x) for x in loss):
        for name in names:
            values = [r["indicators"].get(name, math.nan) for r in ok]
            s = score(name, values, [st if st is not None else i for i, st in enumerate(steps)],
                      spikes)
            scorecard.append({"indicator": name, "auc": s.auc, "threshold": s.threshold,
                              "threshold_kind": s.threshold_kind,
                              "onsets": len(spikes.onsets), "warned": s.warned,
                              "median_lead": s.median_lead, "leads": s.leads,
                              "censored": s.censored})
    scorecard.sort(key=lambda row: -abs((row["auc"] if row["auc"] == row["auc"] else 0.5)
                                        - 0.5))
    violations = [dict(v, step=r.get("step"), path=r["path"])
                  for r in ok for v in r.get("violations", [])]
    failed = [r for r in records if r["status"] != "ok"]
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "tool": {"name": "spectrum", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "settings": dict(settings, spike_rule={"factor": rule.factor, "window": rule.window}),
        "checkpoints": [{"path": r["path"], "step": r.get("step"), "loss": r.get("loss"),
                         "status": r["status"], "error": r.get("error"),
                         "cached": r.get("cached", False),
                         "indicators": r.get("indicators", {})} for r in records],
        "indicators": names,
        "spikes": {"rule": f"loss > {rule.factor:g} x min(previous {rule.window} checkpoints)",
                   "unstable": spikes.unstable.tolist(), "defined": spikes.defined.tolist(),
                   "onsets": onset_steps,
                   "windows": [[steps[a], steps[b]] for a, b in spikes.windows]},
        "scorecard": scorecard,
        "fail_on": {"conditions": list(conditions), "violations": violations},
        "summary": {"checkpoints": len(records), "analysed": len(ok), "failed": len(failed),
                    "from_cache": sum(1 for r in ok if r.get("cached")),
                    "spike_onsets": len(spikes.onsets), "violations": len(violations)},
    }


def write(path: str, doc: dict[str, Any], records: Sequence[dict[str, Any]], *,
          force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write the trajectory ``doc`` and its series to ``path`` atomically; ``force`` and
    ``inputs`` as in :func:`spectrum_cli.report.hdf5.atomic_file` (never over a
    checkpoint, a device or a file that is not a spectrum report)."""
    import h5py


    doc = json_safe(doc)
    ok = [r for r in records if r["status"] == "ok"]
    with atomic_file(path, force=force, inputs=inputs) as f:
        for key in ("schema", "schema_version", "created", "source"):
            f.attrs[key] = doc[key]
        f.attrs["tool_version"] = doc["tool"]["version"]
        for key in ("settings", "spikes", "scorecard", "fail_on", "summary", "indicators"):
            f.attrs[key] = json.dumps(doc[key])
        f.attrs["checkpoints"] = json.dumps([{k: v for k, v in c.items() if k != "indicators"}
                                             for c in doc["checkpoints"]])
        f["steps"] = np.array([_step(r.get("step")) for r in ok], dtype=np.int64)
        f["loss"] = np.array([r.get("loss") if r.get("loss") is not None else math.nan
                              for r in ok], dtype=np.float64)
        f["unstable"] = np.array(doc["spikes"]["unstable"], dtype=bool)
        g = f.create_group("indicators", track_order=True)
        for name in doc["indicators"]:
            g.create_dataset(name.replace("/", "|"), data=np.array(
                [_float(r["indicators"].get(name)) for r in ok], dtype=np.float64))
        docs = [json.dumps(r.get("document", {})) for r in ok]
        f.create_group("checkpoints").create_dataset(
            "documents", data=np.array(docs, dtype=object), dtype=h5py.string_dtype())


def _step(value: Any) -> int:
    """A checkpoint's step for the int64 ``/steps`` dataset: -1 when it has none or one
    that int64 cannot hold (the ``checkpoints`` attribute keeps it as it was)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)):
        return -1
    if isinstance(value, float) and not math.isfinite(value):
        return -1
    value = int(value)
    return value if -2**63 <= value < 2**63 else -1


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        return float(value)
    return float(value)


def read(path: str) -> dict[str, Any]:
    """The trajectory document stored by :func:`write` (the file is untrusted input:
    see :class:`spectrum_cli.report.hdf5.SafeH5`)."""
    with SafeH5(path) as r:
        check_schema(r, SCHEMA, "trajectory")
        try:
            doc = _read(r)
        except DAMAGE as exc:
            raise InputError(f"{path}: a damaged spectrum trajectory "
                             f"({type(exc).__name__}: {exc})") from None
    validate(doc, TRAJECTORY_SPEC, path)
    return doc


def _read(r: Any) -> dict[str, Any]:
    f = r.file
    doc: dict[str, Any] = {k: r.text(f, k)
                           for k in ("schema", "schema_version", "created", "source")}
    doc["tool"] = {"name": "spectrum", "version": r.text(f, "tool_version")}
    for key in ("settings", "spikes", "scorecard", "fail_on", "summary", "indicators"):
        doc[key] = r.json(f, key)
    checkpoints = r.json(f, "checkpoints")
    validate({"indicators": doc["indicators"], "checkpoints": checkpoints},
             {"indicators": [str], "checkpoints": [{"status": str}]}, r.path)
    ok = [c for c in checkpoints if c["status"] == "ok"]
    group = r.group(f, "indicators")
    series = {n: np.atleast_1d(r.dataset(group, n.replace("/", "|")))
              for n in doc["indicators"]}
    for name, values in series.items():
        if values.ndim != 1 or len(values) != len(ok) or values.dtype.kind not in "fiu":
            raise InputError(f"{r.path}: indicator {name!r} does not hold one number per "
                             "analysed checkpoint (a damaged trajectory)")
    for i, c in enumerate(ok):
        c["indicators"] = {n: float(v[i]) for n, v in series.items()
                           if not math.isnan(float(v[i]))}
    for c in checkpoints:
        c.setdefault("indicators", {})
    doc["checkpoints"] = checkpoints
    return doc


def is_trajectory(path: str) -> bool:
    """Whether ``path`` is a regular HDF5 file whose schema is a trajectory's."""
    try:
        with SafeH5(path) as r:
            return "schema" in r.file.attrs and r.text(r.file, "schema") == SCHEMA
    except (InputError, OSError, ImportError):
        return False
