"""Alerts of a watched run (``spectrum watch --fail-on``): trajectory conditions, the
alert objects, and the ``--on-alert`` command.

``--fail-on`` takes ``analyze``'s conditions (checked on every tensor of each checkpoint
by the pipeline: :func:`checkpoint_alerts` turns its violations into alerts) and
*trajectory conditions* on the run's indicators (:func:`trajectory_alerts`), told apart
by their left-hand side:

- ``INDICATOR OP NUMBER``: an indicator of ``batch``'s trajectory, a dotted name
  (``tensors.max_kappa>1e4``, ``optimizer.eos_ratio_momentum>=1``), or ``loss``;
- ``INDICATOR>threshold``: against the scorecard's threshold for it
  (:func:`spectrum_cli.core.trajectory.threshold_for`): 1 for edge-of-stability ratios and
  spectral radii, otherwise the 95th percentile of the earlier stable checkpoints (all
  earlier ones when the run logs no loss), once there are at least ``spike_window`` of
  them. Causal: a checkpoint is not part of its own threshold, so the false-alarm rate
  of a stationary indicator is about 5% per checkpoint (Hyndman & Fan 1996 for the
  percentile: numpy's default, linear interpolation);
- ``spike``: a loss-spike onset under the spike rule (loss > factor x the minimum of the
  previous window, as ``batch`` defines it; see :mod:`spectrum_cli.core.trajectory`).

A metric or indicator that is undefined at a checkpoint never violates a condition.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.thresholds import OPS, TrajectoryCondition, condition_op
from spectrum_cli.core.trajectory import SpikeRule, detect_spikes, threshold_for
from spectrum_cli.report.document import as_number
from spectrum_cli.report.output import printable

#: Seconds an ``--on-alert`` command may run before it is stopped.
HOOK_TIMEOUT = 30.0
#: Bytes of an ``--on-alert`` command's output kept (its last ones); the rest is read
#: and dropped as it comes, so a command that floods its output costs no memory.
HOOK_OUTPUT_MAX = 64 * 1024



@dataclass(frozen=True)
class Alert:
    """A violated condition at one checkpoint. ``tensor``: the tensor (or operator) of
    a per-tensor condition with the most extreme value, ``count`` how many violate it;
    ``detail``: how a trajectory condition's threshold was set."""

    checkpoint: str
    step: int | None
    condition: str
    metric: str
    value: float
    kind: str = "checkpoint"   # or "trajectory"
    tensor: str | None = None
    count: int = 1
    detail: str = ""

    @property
    def message(self) -> str:
        where = f"step {self.step}" if self.step is not None else "checkpoint"
        text = (f"{where} ({self.checkpoint}): {self.metric} = {self.value:.6g} violates "
                f"{self.condition}")
        if self.tensor is not None:
            text += f" at {self.tensor}"
            if self.count > 1:
                text += f" (and {self.count - 1} more)"
        return text + (f"; {self.detail}" if self.detail else "")

    def environment(self) -> dict[str, str]:
        """The ``SPECTRUM_ALERT_*`` variables of an ``--on-alert`` command (control
        characters escaped, as on the terminal)."""
        env = {"CHECKPOINT": self.checkpoint, "STEP": "" if self.step is None
               else str(self.step), "METRIC": self.metric, "VALUE": repr(float(self.value)),
               "CONDITION": self.condition, "TENSOR": self.tensor or "",
               "COUNT": str(self.count), "KIND": self.kind, "MESSAGE": self.message}
        return {f"SPECTRUM_ALERT_{k}": printable(v) for k, v in env.items()}

    def as_violation(self) -> dict[str, Any]:
        """The alert as an entry of the trajectory's ``fail_on.violations``."""
        return {"condition": self.condition, "tensor": self.tensor or self.metric,
                "metric": self.metric, "value": self.value, "step": self.step,
                "path": self.checkpoint, "kind": self.kind, "detail": self.detail}


def checkpoint_alerts(record: Mapping[str, Any]) -> list[Alert]:
    """One alert per per-tensor condition a checkpoint's analysis violates, naming the
    tensor with the most extreme value (the largest for ``>``/``>=``, the smallest for
    ``<``/``<=``, the first otherwise) and how many tensors violate it."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for v in record.get("violations", []):
        groups.setdefault(str(v.get("condition")), []).append(v)
    out = []
    for cond, found in groups.items():
        op = condition_op(cond)
        valued = [(x, v) for v in found if (x := as_number(v.get("value"))) is not None]
        if not valued:
            valued = [(math.nan, found[0])]
        if op in (">", ">="):
            value, pick = max(valued, key=lambda xv: xv[0])
        elif op in ("<", "<="):
            value, pick = min(valued, key=lambda xv: xv[0])
        else:
            value, pick = valued[0]
        out.append(Alert(record["path"], record.get("step"), cond, str(pick.get("metric")),
                         value, "checkpoint", str(pick.get("tensor")), len(found)))
    return out


def loss_of(record: Mapping[str, Any]) -> float:
    """A record's loss, NaN when it has none (as the trajectory's spike rule takes it)."""
    value = as_number(record.get("loss"))
    return math.nan if value is None else value


def trajectory_alerts(conditions: Sequence[TrajectoryCondition],
                      ok: Sequence[Mapping[str, Any]], i: int, rule: SpikeRule
                      ) -> list[Alert]:
    """Alerts of checkpoint ``ok[i]`` given the analysed checkpoints before it (``ok``
    in step order)."""
    r = ok[i]
    out = []
    for c in conditions:
        if c.indicator == "spike":
            if r.get("loss") is None:
                continue
            loss = [loss_of(x) for x in ok[:i + 1]]
            spikes = detect_spikes(loss, rule)
            if spikes.unstable[i] and (i == 0 or not spikes.unstable[i - 1]):
                past = [x for x in loss[i - rule.window:i] if math.isfinite(x)]
                out.append(Alert(r["path"], r.get("step"), "spike", "loss", loss[i],
                                 "trajectory", detail=f"loss > {rule.factor:g} x min("
                                 f"previous {rule.window} checkpoints) = "
                                 f"{rule.factor * min(past):.6g}"))
            continue
        value = loss_of(r) if c.indicator == "loss" else as_number(
            r["indicators"].get(c.indicator))
        if value is None or math.isnan(value):
            continue
        detail = ""
        threshold = c.value
        if threshold is None:
            found = _threshold(c.indicator, ok[:i], rule)
            if found is None:
                continue
            threshold, detail = found
        if OPS[c.op](value, threshold):
            out.append(Alert(r["path"], r.get("step"), str(c), c.indicator, value,
                             "trajectory", detail=detail))
    return out


def _threshold(name: str, earlier: Sequence[Mapping[str, Any]], rule: SpikeRule
               ) -> tuple[float, str] | None:
    """The scorecard's threshold of ``name`` from the checkpoints before this one."""
    import numpy as np

    def value(r: Mapping[str, Any]) -> float:
        x = loss_of(r) if name == "loss" else as_number(r["indicators"].get(name))
        return math.nan if x is None else x

    values = np.array([value(r) for r in earlier], dtype=np.float64)
    loss = [loss_of(r) for r in earlier]
    if any(math.isfinite(x) for x in loss):
        spikes = detect_spikes(loss, rule)
        stable, what = spikes.defined & ~spikes.unstable, "stable"
    else:
        stable, what = np.ones(len(earlier), dtype=bool), "(no loss logged)"
    threshold, kind = threshold_for(name, values, stable)
    if kind == "natural":
        return threshold, "natural threshold"
    n = int((stable & np.isfinite(values)).sum()) if len(earlier) else 0
    if n < rule.window or not math.isfinite(threshold):
        return None
    return threshold, f"threshold {threshold:.6g} = p95 of {n} earlier {what} checkpoints"


# --------------------------------------------------------------------------- --on-alert


@dataclass(frozen=True)
class HookResult:
    returncode: int | None
    output: str
    problem: str | None  # None: it ran and exited 0


class AlertCommand:
    """``--on-alert CMD``: split like a shell would (``shlex``) but run without one, the
    alert in ``SPECTRUM_ALERT_*`` variables, stopped after ``timeout`` seconds (with its
    process group). A failure is reported, never fatal."""

    def __init__(self, command: str, timeout: float = HOOK_TIMEOUT,
                 report: str | None = None) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"--on-alert: cannot split {command!r}: {exc}") from None
        if not self.argv:
            raise UsageError("--on-alert: the command is empty")
        if shutil.which(self.argv[0]) is None:
            raise UsageError(f"--on-alert: {self.argv[0]!r} is not an executable (not "
                             "found on PATH, or not executable)")
        self.timeout, self.report = timeout, report

    def __call__(self, alert: Alert) -> HookResult:
        env = {**os.environ, **alert.environment()}
        if self.report:
            env["SPECTRUM_ALERT_REPORT"] = printable(os.path.abspath(self.report))
        name = self.argv[0]
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        except OSError as exc:
            return HookResult(None, "", f"could not run {name}: {exc.strerror or exc}")
        tail = _Tail(HOOK_OUTPUT_MAX)
        try:
            finished = _drain(proc, tail, time.monotonic() + self.timeout)
        finally:
            _stop(proc)  # its process group: whatever it left behind goes with it
        text = tail.text()
        if not finished:
            return HookResult(None, text, f"{name} did not finish within "
                                          f"{self.timeout:g} s; stopped")
        problem = None if proc.returncode == 0 else f"{name} exited with {proc.returncode}"
        return HookResult(proc.returncode, text, problem)


class _Tail:
    """The last ``limit`` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self.limit, self.buf, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > self.limit:
            cut = len(self.buf) - self.limit
            del self.buf[:cut]
            self.dropped += cut

    def text(self) -> str:
        text = self.buf.decode("utf-8", "replace")
        if self.dropped:
            text = f"[{self.dropped} earlier bytes of output not shown]\n" + \
                text.split("\n", 1)[-1]
        return text


def _drain(proc: subprocess.Popen, tail: _Tail, deadline: float) -> bool:
    """Read the command's output into ``tail`` until it exits (True) or the deadline
    passes (False). Once the command has exited, output still coming from what it left
    running is read for a moment at most, not waited for."""
    import selectors

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    exited_at: float | None = None
    eof = False
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and (eof or now - exited_at > 0.2 or now >= deadline):
                return True
            if now >= deadline:
                return False
            wait = min(deadline - now, 0.05 if exited_at is not None or eof else 0.1)
            if eof:
                time.sleep(wait)
                continue
            if not sel.select(wait):
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if chunk:
                tail.add(chunk)
            else:  # every writer is gone; the command may still run
                eof = True
                sel.unregister(fd)


def _stop(proc: subprocess.Popen) -> None:
    """Kill the command's process group (its own: ``start_new_session``), then reap it."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
    with contextlib.suppress(Exception):
        if proc.stdout is not None:
            proc.stdout.close()
