"""Indicators as TensorBoard event files (``--tensorboard LOGDIR`` of ``watch`` and
``batch``).

:class:`TensorBoardWriter` appends one event per :meth:`~TensorBoardWriter.add` to a new
event file in ``LOGDIR``: every scalar as a ``simple_value`` (what TensorBoard's scalar
dashboard and :class:`tensorboard.backend.event_processing.event_accumulator.EventAccumulator`
read; TensorBoard stores it as float32, so about 7 significant digits, and a value
beyond 3.4e38 reads back as inf), every array as a ``HistogramProto`` (the histogram and
distribution dashboards). The records use TensorFlow's TFRecord framing (length, masked
CRC-32C of the length, data, masked CRC-32C of the data), written by the ``tensorboard``
package's own :class:`~tensorboard.summary.writer.record_writer.RecordWriter`; neither
TensorFlow nor torch is imported.

Files: the logdir is created when missing; an existing path that is not a folder is a
:class:`~spectrum_cli.core.errors.UsageError`. The event file's name is TensorBoard's
pattern ``events.out.tfevents.<time>.<host>.<pid>.<counter>.spectrum`` and it is created
with ``O_CREAT | O_EXCL`` (and without following a symlink), so an existing file is
never replaced or appended to: a name that exists is an error, never a target. Event
files are appended while a run goes on, so, unlike reports, they are not written
atomically; TensorBoard reads a file that is being written.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import socket
import time
from typing import Any, Mapping

import numpy as np

from spectrum_cli.core.errors import UsageError
from spectrum_cli.report.document import text_safe

INSTALL_HINT = "pip install 'spectrum-cli[tensorboard]'"
#: Steps an event can hold (TensorBoard's step is an int64; negative ones are not steps).
MAX_STEP = 2**63 - 1
#: Buckets of a histogram at most (numpy.histogram's equal-width bins over [min, max]).
HISTOGRAM_BUCKETS = 64
_COUNTER = itertools.count()


def _tensorboard() -> tuple[Any, Any, Any]:
    """(event_pb2, summary_pb2, RecordWriter), or UsageError naming the extra."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: "
                         f"{INSTALL_HINT}") from None
    return event_pb2, summary_pb2, RecordWriter


def _prepare(logdir: str) -> str:
    """Create ``logdir`` if missing; UsageError when it is something else."""
    if os.path.lexists(logdir) and not os.path.isdir(logdir):
        raise UsageError(f"{logdir}: exists and is not a folder (the TensorBoard log "
                         "folder must be one)")
    try:
        os.makedirs(logdir, exist_ok=True)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"{logdir}: cannot create the TensorBoard log folder ({why})") \
            from None
    return logdir


def _event_path(logdir: str) -> str:
    return os.path.join(logdir, "events.out.tfevents.%010d.%s.%d.%d.spectrum" % (
        int(time.time()), socket.gethostname(), os.getpid(), next(_COUNTER)))


class TensorBoardWriter:
    """Scalars and histograms per step into a new event file of ``logdir``.

    >>> with TensorBoardWriter("runs/tb") as tb:                    # doctest: +SKIP
    ...     tb.add(100, {"tensors.max_kappa": 12.5}, {"fc.weight": sigma})
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        self._event_pb2, self._summary_pb2, record_writer = _tensorboard()
        self.logdir = _prepare(os.fspath(logdir))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
            | getattr(os, "O_CLOEXEC", 0)
        self.path = _event_path(self.logdir)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            raise UsageError(f"{self.path}: exists already; refusing to write over it") \
                from None
        except OSError as exc:
            raise UsageError(f"{self.logdir}: cannot write an event file there "
                             f"({exc.strerror or exc})") from None
        #: Steps given to :meth:`add` that an event cannot hold (negative, or beyond
        #: int64: read from a checkpoint or its name), whose events were not written.
        self.dropped: list[int] = []
        self._file = os.fdopen(fd, "wb")
        self._records = record_writer(self._file)
        self._write(self._event_pb2.Event(wall_time=time.time(),
                                          file_version="brain.Event:2"))

    def add(self, step: int, scalars: Mapping[str, float],
            histograms: Mapping[str, np.ndarray] | None = None) -> bool:
        """One event at ``step``: each scalar under its name as the tag, each array's
        histogram likewise (non-finite entries are left out of a histogram). An empty
        array is left out. A ``step`` that is not an integer is a ValueError; an integer
        an event cannot hold (negative, or beyond int64: steps come from checkpoints,
        which are data) is not written but kept in :attr:`dropped`, and False returned."""
        if self._file.closed:
            raise ValueError("TensorBoardWriter: add() after close()")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise ValueError(f"step: expected a non-negative integer, got {step!r}")
        if not 0 <= step <= MAX_STEP:
            self.dropped.append(int(step))
            return False
        s = self._summary_pb2
        values = []
        for tag, value in scalars.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"scalars[{tag!r}]: expected a number, got {value!r}")
            try:
                number = float(value)
            except OverflowError:  # an int beyond float: as TensorBoard reads 3.4e38+
                number = math.inf if value > 0 else -math.inf
            values.append(s.Summary.Value(tag=_tag(tag), simple_value=number))
        for tag, data in (histograms or {}).items():
            histo = histogram(np.asarray(data, dtype=np.float64), s.HistogramProto)
            if histo is not None:
                values.append(s.Summary.Value(tag=_tag(tag), histo=histo))
        if values:
            self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                              summary=s.Summary(value=values)))
        return True

    def _write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if not self._file.closed:
            self._records.close()

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _tag(tag: Any) -> str:
    """A tag protobuf can store (a string field must be valid UTF-8: a name from a file
    that is not is written with its bytes escaped)."""
    return text_safe(str(tag))


def histogram(data: np.ndarray, proto: Any) -> Any:
    """TensorBoard's ``HistogramProto`` of the finite entries of ``data`` (None when
    there are none): min, max, count, sum, sum of squares, and up to
    :data:`HISTOGRAM_BUCKETS` equal-width buckets, each given by its right edge
    (``bucket_limit``) and count; all entries equal make one bucket."""
    x = data[np.isfinite(data)].ravel()
    if x.size == 0:
        return None
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        counts, limits = np.array([x.size]), np.array([hi])
    else:
        counts, edges = np.histogram(x, bins=min(HISTOGRAM_BUCKETS, max(1, x.size)),
                                     range=(lo, hi))
        limits = edges[1:]
    return proto(min=lo, max=hi, num=float(x.size), sum=float(x.sum()),
                 sum_squares=float(np.dot(x, x)), bucket_limit=limits.tolist(),
                 bucket=counts.astype(np.float64).tolist())


__all__ = ["INSTALL_HINT", "TensorBoardWriter", "histogram"]
