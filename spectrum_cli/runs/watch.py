"""``spectrum watch``: follow a run's checkpoint folder while training writes it.

The checkpoints are the ones ``spectrum batch`` reads, directly under the watched
folder: files whose names end with a suffix an installed reader declares (``.pt .pth
.ckpt .bin .npz .npy .safetensors``, a plugin's), and folders a reader's marker takes
(HF ``checkpoint-<step>/``, ``torch.distributed.checkpoint`` (DCP) folders); what a
folder holds and when a checkpoint folder is complete is decided in
:mod:`spectrum_cli.io.layout`. One is read only once it is complete and has *settled*,
so that a checkpoint still being written is never read half-way:

- every file of it (one file, or each file under a folder) has the same size,
  modification time and inode at two polls in a row, and at least ``settle`` seconds
  have passed since its last change (its modification time, or the poll that saw the
  change, whichever is later);
- an HF folder also holds its weights (``model.safetensors``, or the index and every
  shard it names; ``pytorch_model.bin`` likewise) and ``trainer_state.json``, which the
  Trainer writes after them; a DCP folder holds ``.metadata``, which DCP writes last.

A checkpoint that changes after it was read (``last.ckpt`` rewritten) is read again.
Each is analysed through the functions ``batch`` uses (same cache key, same cache
folder, same record), and the trajectory report is rewritten atomically.

Alerts (``--fail-on``, trajectory conditions, ``--on-alert``): :mod:`spectrum_cli.runs.alerts`.

Nothing here imports typer or rich; the command line (:mod:`spectrum_cli.cli.watch`)
shows what the callbacks of :meth:`Watch.run` report.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.core.thresholds import TrajectoryCondition, split_conditions
from spectrum_cli.core.trajectory import SpikeRule
from spectrum_cli.io import storage
from spectrum_cli.io.layout import (
    MAX_FOLDER_FILES,
    folder_markers,
    is_checkpoint_file,
    last_number,
    local_checkpoint_folder,
    refusal,
    remote_checkpoint_folder,
    suffixes,
)
from spectrum_cli.report import trajectory as T
from spectrum_cli.report.document import as_number
from spectrum_cli.report.tensorboard import TensorBoardWriter
from spectrum_cli.runs.alerts import (
    Alert,
    checkpoint_alerts,
    loss_of,
    trajectory_alerts,
)
from spectrum_cli.runs.batch import compute_record
from spectrum_cli.runs.cache import ResultCache, cache_key, cacheable
from spectrum_cli.runs.indicators import indicators
from spectrum_cli.runs.job import Job, load_policy, resolve_config

DEFAULT_POLL = 2.0
DEFAULT_SETTLE = 2.0
#: While a backlog is worked through, the report is rewritten at most this often (it
#: is always rewritten at the end of a poll, at an alert and when the watch ends).
REPORT_EVERY = 5.0
#: Entries of the watched folder looked at per poll (files per checkpoint folder:
#: :data:`spectrum_cli.io.layout.MAX_FOLDER_FILES`).
MAX_ENTRIES = 100_000


# --------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class Item:
    """One checkpoint seen in the folder at one poll."""

    path: str                 # as the user names it: the folder joined with the name
    name: str
    kind: str                 # "file", or its folder marker's: "hf", "dcp", a plugin's
    signature: tuple          # (relative name, size, mtime_ns, inode) of every file
    newest_mtime: float       # seconds since the epoch
    missing: str | None = None  # what it still lacks to be complete (None: complete)

    @property
    def name_step(self) -> int | None:
        return last_number(self.name)


class LocalFolder:
    """The checkpoints directly under a local folder, with what tells when each is
    complete and settled. The only place ``watch`` lists and stats: an object store is
    another class with the same :meth:`scan`."""

    def __init__(self, root: str, warn: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.warn = warn or (lambda message: None)
        #: Whether the folder existed at the last scan (a watch may start before the
        #: run creates it: until then a scan finds nothing).
        self.present = True
        self._told: set[str] = set()

    def scan(self) -> list[Item]:
        try:
            with os.scandir(self.root) as it:
                entries = sorted((e for _, e in zip(range(MAX_ENTRIES), it)),
                                 key=lambda e: e.name)
        except FileNotFoundError:
            self.present = False
            return []
        except OSError as exc:
            if isinstance(exc, NotADirectoryError):
                raise InputError(f"{self.root}: not a folder (watch follows the folder a "
                                 "run writes its checkpoints to)") from None
            raise InputError(f"{self.root}: cannot list the folder "
                             f"({exc.strerror or exc})") from None
        self.present = True
        endings, markers = suffixes(), folder_markers()
        items = []
        for e in entries:
            path = os.path.join(self.root, e.name)
            try:
                if is_checkpoint_file(e.name, endings) and not e.is_dir():
                    # Follows a symlink, as batch's discovery does, but never out of the
                    # folder, and never to what is not a regular file (a FIFO, a device,
                    # /proc's files): those are named once and not read.
                    problem = _refusal(path, self.root) if e.is_symlink() or \
                        not e.is_file() else None
                    if problem is not None:
                        self._tell(path, problem)
                        continue
                    st = e.stat()
                    items.append(Item(path, e.name, "file", (_stat_row("", st),),
                                      st.st_mtime))
                elif e.is_dir():
                    found = local_checkpoint_folder(path, e.name, MAX_FOLDER_FILES, markers)
                    if found is not None:
                        items.append(Item(
                            path, e.name, found.kind,
                            tuple(_stat_row(k, st) for k, st in sorted(found.files.items())),
                            max((st.st_mtime for st in found.files.values()), default=0.0),
                            found.missing))
            except OSError:  # gone or changed under us: the next poll sees it again
                continue
        return items

    def _tell(self, path: str, problem: str) -> None:
        if path not in self._told:
            self._told.add(path)
            self.warn(f"{path}: {problem}")


def _refusal(path: str, root: str) -> str | None:
    """Why the checkpoint ``path`` is not read (see :func:`spectrum_cli.io.layout.refusal`),
    None for a dangling link (the next poll may find its target)."""
    if os.path.islink(path) and not os.path.exists(path):
        real, folder = os.path.realpath(path), os.path.realpath(root)
        if real == folder or real.startswith(folder.rstrip(os.sep) + os.sep):
            return None
    return refusal(path, root)


class RemoteFolder:
    """The checkpoints directly under a folder of an object store (an fsspec URL): the
    same items as :class:`LocalFolder`, with each object's size and content tag (ETag)
    as its signature and the store's modification time. An object store shows an object
    only once its upload is complete, so a file is never half-written there; a folder
    can still be half-uploaded, which the settling rule covers as on a disk."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def scan(self) -> list[Item]:
        endings, markers = suffixes(), folder_markers()
        items = []
        for url, is_dir, meta in storage.entries(self.root)[:MAX_ENTRIES]:
            name = storage.basename(url)
            if not is_dir:
                if is_checkpoint_file(name, endings):  # the listing has size and tag
                    items.append(Item(url, name, "file", (("", *storage.signature(meta)),),
                                      storage.modified(meta)))
                continue
            found = remote_checkpoint_folder(url, name, MAX_FOLDER_FILES, markers)
            if found is None:
                continue
            files = found.files
            signature = tuple((k, *storage.signature(m)) for k, m in files.items())
            newest = max((storage.modified(m) for m in files.values()), default=0.0)
            items.append(Item(url, name, found.kind, signature, newest, found.missing))
        return items


def folder_for(target: str, warn: Callable[[str], None] | None = None
               ) -> "LocalFolder | RemoteFolder":
    """The lister of the folder ``target`` (a local path or a URL)."""
    return RemoteFolder(target) if storage.is_url(target) else LocalFolder(target, warn)


def _stat_row(name: str, st: os.stat_result) -> tuple:
    return (name, st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class _State:
    signature: tuple
    changed: float       # monotonic time of the last change known
    unchanged_polls: int = 0
    done: bool = False


@dataclass(frozen=True)
class Pending:
    """A checkpoint seen but not read yet, and why."""

    item: Item
    reason: str


class Follower:
    """Which checkpoints of a folder are complete and settled (see the module)."""

    def __init__(self, folder: Any, settle: float = DEFAULT_SETTLE,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if not settle >= 0:
            raise UsageError(f"--settle: expected a number >= 0, got {settle!r}")
        self.folder, self.settle, self.clock, self.wall = folder, settle, clock, wall
        self._states: dict[str, _State] = {}
        #: Whether the last poll saw a new checkpoint or a change to one.
        self.active = False

    def poll(self) -> tuple[list[Item], list[Pending]]:
        """One look: the checkpoints that became ready (each once, until it changes
        again) and those still pending."""
        items = self.folder.scan()
        now, wall = self.clock(), self.wall()
        ready: list[Item] = []
        pending: list[Pending] = []
        self.active = False
        for it in items:
            st = self._states.get(it.path)
            if st is None:
                # Its modification time says how long it has been still already.
                st = self._states[it.path] = _State(
                    it.signature, now - min(max(0.0, wall - it.newest_mtime), 1e9))
                self.active = True
            elif st.signature != it.signature:
                st.signature, st.changed, st.unchanged_polls, st.done = \
                    it.signature, now, 0, False
                self.active = True
            else:
                st.unchanged_polls += 1
            if st.done:
                continue
            quiet = now - st.changed
            if it.missing is not None:
                pending.append(Pending(it, f"waiting for {it.missing}"))
            elif st.unchanged_polls < 1:
                pending.append(Pending(it, "new or changed since the last poll"))
            elif quiet < self.settle:
                pending.append(Pending(it, f"settling (unchanged for {quiet:.1f} of "
                                           f"{self.settle:g} s)"))
            else:
                st.done = True
                ready.append(it)
        seen = {it.path for it in items}
        for gone in [p for p in self._states if p not in seen]:
            del self._states[gone]
        return ready, pending


# --------------------------------------------------------------------------- the watch


@dataclass(frozen=True)
class Update:
    """One checkpoint analysed: its record (``status`` "ok" or "error") and alerts."""

    record: dict[str, Any]
    alerts: list[Alert] = field(default_factory=list)


class Watch:
    """Follow ``target`` and analyse each checkpoint as it settles (see the module).

    ``report``: the HDF5 trajectory, rewritten atomically as checkpoints are analysed;
    ``tensorboard``: a log folder for the indicators and singular-value histograms."""

    def __init__(self, target: str, job: Any, *, cache_dir: str | None = None,
                 rule: SpikeRule = SpikeRule(), conditions: Sequence[TrajectoryCondition] = (),
                 settle: float = DEFAULT_SETTLE, settings: Mapping[str, Any] | None = None,
                 report: str | None = None, force: bool = False,
                 tensorboard: str | None = None, warn: Callable[[str], None] | None = None,
                 folder: Any = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 say: Callable[[str], None] | None = None) -> None:
        self.target, self.job, self.rule = str(target), job, rule
        self.conditions = list(conditions)
        self.settings = dict(settings or {})
        self.report, self.force, self.clock = report, force, clock
        self.warn = warn or (lambda message: None)
        #: Where news that is no warning goes (the folder appeared, or went away).
        self.say = say or (lambda message: None)
        self.cache = ResultCache(cache_dir, self.warn)
        self.follower = Follower(folder or folder_for(self.target, self.warn), settle,
                                 clock, wall)
        #: Whether the folder was there at the last poll (None before the first), and
        #: whether it ever was.
        self.present: bool | None = None
        self.appeared = False
        self.records: list[dict[str, Any]] = []
        self.alerts: list[Alert] = []
        self.pending: list[Pending] = []
        self._tensorboard = None
        if tensorboard is not None:  # opened now: a missing package is said up front

            self._tensorboard = TensorBoardWriter(tensorboard)
        self._dirty, self._written = False, -math.inf
        self._checked_names = False

    # ---- one poll, one checkpoint

    def poll(self) -> list[Item]:
        """Look once: the checkpoints ready to be read, in the order of their names'
        steps (:attr:`pending` holds the others)."""
        ready, self.pending = self.follower.poll()
        present = bool(getattr(self.follower.folder, "present", True))
        if present != self.present:
            if not present:  # said once, until it comes (or comes back)
                self.say(f"waiting for {self.target} to appear" if self.present is None
                         else f"{self.target} is gone; waiting for it to appear again")
            elif self.present is False:
                self.say(f"{self.target} appeared")
            self.present = present
        self.appeared = self.appeared or present
        return sorted(ready, key=lambda it: (it.name_step is None, it.name_step or 0,
                                             it.path))

    def analyse(self, item: Item) -> Update:
        """Analyse one checkpoint (from the cache when its content and settings match
        an entry), add its record and return it with the alerts it raises."""
        record = self._record(item.path)
        if record.get("step") is None:
            record["step"] = item.name_step
        self._insert(record)
        alerts: list[Alert] = []
        if record["status"] == "ok":
            ok = [r for r in self.records if r["status"] == "ok"]
            alerts = checkpoint_alerts(record) + trajectory_alerts(
                self.conditions, ok, next(i for i, r in enumerate(ok) if r is record),
                self.rule)
            self._check_names(record)
            self._to_tensorboard(record)
        self.alerts.extend(alerts)
        self._dirty = True
        return Update(record, alerts)

    def _record(self, path: str) -> dict[str, Any]:
        if not storage.is_url(path):
            problem = refusal(path, self.target)  # before anything is opened
            if problem is not None:
                return {"path": path, "status": "error", "error": problem}
        try:
            key = cache_key(path, self.job)
        except (OSError, InputError) as exc:
            return {"path": path, "status": "error", "error": f"cannot read: {exc}"}
        record = self.cache.get(key)
        if record is not None:
            record.pop("cache_format", None)
            record.update(path=path, cached=True, indicators=indicators(record["document"]))
            return record
        record = compute_record(path, self.job, key)
        if cacheable(record):
            self.cache.put(key, record)
        return record

    def _insert(self, record: dict[str, Any]) -> None:
        """Keep the records in step order; a checkpoint read again replaces its record
        of the same step, and its earlier failures (read half-written, say) once it
        has been measured: their errors no longer stand."""
        same = [r for r in self.records if r["path"] == record["path"] and (
            r.get("step") == record.get("step")
            or (record["status"] == "ok" and r["status"] != "ok"))]
        for r in same:
            self.records.remove(r)
            self.alerts = [a for a in self.alerts
                           if not (a.checkpoint == r["path"] and a.step == r.get("step"))]
        key = (record.get("step") is None, record.get("step") or 0)
        at = next((i for i, r in enumerate(self.records)
                   if (r.get("step") is None, r.get("step") or 0) > key), len(self.records))
        self.records.insert(at, record)

    def _check_names(self, record: Mapping[str, Any]) -> None:
        """At the first analysed checkpoint, say which trajectory conditions name an
        indicator it does not have (a typo would otherwise never fire)."""
        if self._checked_names:
            return
        self._checked_names = True
        have = set(record["indicators"])
        for c in self.conditions:
            if c.indicator == "spike" or c.indicator == "loss":
                if record.get("loss") is None:
                    self.warn(f"--fail-on {c}: {record['path']} logs no loss")
            elif c.indicator not in have:
                known = ", ".join(sorted(have)[:12]) + (" ..." if len(have) > 12 else "")
                self.warn(f"--fail-on {c}: {record['path']} has no indicator "
                          f"{c.indicator!r} (it has: {known or 'none'})")

    # ---- outputs

    def document(self) -> dict[str, Any]:
        """The trajectory document of the checkpoints so far (``spectrum batch``'s
        schema; trajectory alerts are listed with the violations, ``kind``
        "trajectory")."""
        doc = T.build(self.records, self.target, self.settings, self.rule,
                      self.job.fail_on)
        doc["fail_on"]["conditions"] = list(doc["fail_on"]["conditions"]) + [
            str(c) for c in self.conditions]
        extra = [a.as_violation() for a in self.alerts if a.kind == "trajectory"]
        merged = doc["fail_on"]["violations"] + extra
        merged.sort(key=lambda v: (v.get("step") is None, v.get("step") or 0))
        doc["fail_on"]["violations"] = merged
        doc["summary"]["violations"] = len(merged)
        return doc

    def write_report(self) -> None:
        """Rewrite the report (atomically) if there is one and anything to write."""
        if self.report is None or not self.records:
            return
        # The folder with its checkpoints: it holds them, so a report may be written
        # beside them, never inside one (see spectrum_cli.report.output).
        T.write(self.report, self.document(), self.records, force=self.force,
                inputs=(self.target, *(r["path"] for r in self.records)))
        self._dirty, self._written = False, self.clock()

    def flush(self, due_only: bool = False) -> None:
        """Write the report when something changed (``due_only``: and the last write
        is :data:`REPORT_EVERY` seconds old)."""
        if self._dirty and (not due_only or self.clock() - self._written >= REPORT_EVERY):
            self.write_report()

    def _to_tensorboard(self, record: Mapping[str, Any]) -> None:
        payload = tensorboard_payload(record)
        if self._tensorboard is not None and payload is not None:
            self._tensorboard.add(*payload)

    def close(self) -> None:
        """Write the report and close the TensorBoard log (at the end of a watch)."""
        try:
            if self._dirty:
                self.write_report()
        finally:
            if self._tensorboard is not None:
                tb, self._tensorboard = self._tensorboard, None
                tb.close()

    # ---- the loop

    def run(self, *, poll: float = DEFAULT_POLL, idle_timeout: float | None = None,
            keep_going: bool = False, on_update: Callable[[Update], None] | None = None,
            on_alert: Callable[[Alert], None] | None = None,
            on_poll: Callable[["Watch"], None] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> str:
        """Poll every ``poll`` seconds until ``idle_timeout`` seconds pass without a new
        or changing checkpoint while none is settling (returns "idle"), or, unless
        ``keep_going``, until a checkpoint raises an alert (returns "alert", the report
        written first). Runs until interrupted when ``idle_timeout`` is None. Does not
        :meth:`close`."""
        if not poll > 0:
            raise UsageError(f"--poll: expected a number > 0, got {poll!r}")
        last = self.clock()
        while True:
            ready = self.poll()
            if self.follower.active:
                last = self.clock()
            for item in ready:
                update = self.analyse(item)
                last = self.clock()
                if update.alerts:
                    self.flush()  # the report holds the checkpoint before anyone is told
                if on_update is not None:
                    on_update(update)
                for alert in update.alerts:
                    if on_alert is not None:
                        on_alert(alert)
                if update.alerts and not keep_going:
                    return "alert"
                self.flush(due_only=True)
            self.flush()
            if on_poll is not None:
                on_poll(self)
            # A complete checkpoint still settling came just now: never idle over it.
            settling = any(p.item.missing is None for p in self.pending)
            if idle_timeout is not None and not settling \
                    and self.clock() - last >= idle_timeout:
                return "idle"
            sleep(poll)


# --------------------------------------------------------------------------- helpers

def tensorboard_payload(record: Mapping[str, Any]) -> tuple[int, dict, dict | None] | None:
    """What ``--tensorboard`` writes for one checkpoint's record (of ``watch`` or
    ``batch``): its step, the indicators and loss as scalars, the singular values' log10
    histogram; None for a record without a step or without results."""
    if record.get("step") is None or record.get("status", "ok") != "ok":
        return None
    scalars = {k: v for k, v in record.get("indicators", {}).items()
               if as_number(v) is not None}
    if as_number(record.get("loss")) is not None:
        scalars["loss"] = loss_of(record)
    hist = sv_values(record.get("sv_histogram"))
    return (int(record["step"]), scalars,
            {"singular_values/log10": hist} if hist is not None else None)


def sv_values(hist: Any) -> Any:
    """Values whose histogram is the record's: each bin's centre repeated by its count
    (values outside the range at its ends); None when the record has none."""
    import numpy as np

    if not isinstance(hist, dict):
        return None
    try:
        lo, hi, counts = float(hist["lo"]), float(hist["hi"]), list(hist["counts"])
        below, above = int(hist.get("below", 0)), int(hist.get("above", 0))
        if not counts or not all(isinstance(c, int) and c >= 0 for c in counts) \
                or not hi > lo or below < 0 or above < 0:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    width = (hi - lo) / len(counts)
    centres = lo + width * (np.arange(len(counts)) + 0.5)
    values = np.concatenate([np.full(below, lo), np.repeat(centres, counts),
                             np.full(above, hi)])
    return values if values.size else None


def resolve(target: str, settings: Mapping[str, Any], use_config: bool = True
            ) -> tuple[Any, Any, list[TrajectoryCondition]]:
    """The job (settings > ``SPECTRUM_*`` > the nearest configuration file, as batch's),
    the configuration, and the trajectory conditions split off ``fail_on`` (which
    ``analyze`` would not accept)."""
    cfg = resolve_config(target, settings, use_config)
    values = dict(cfg.values)
    per_tensor, conditions = split_conditions(values.pop("fail_on", None) or [])
    if per_tensor:
        values["fail_on"] = per_tensor
    policy = load_policy(settings, values.get("weights_key"))
    return Job.from_values(values, policy), cfg, conditions
