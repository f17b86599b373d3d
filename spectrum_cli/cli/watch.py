"""``spectrum watch``: follow a training run's checkpoint folder while it is written.

The follower itself is :mod:`spectrum_cli.runs.watch` (no typer, no rich); this module
resolves the options, shows the live table (a terminal) or one line per checkpoint
(anything else) on stderr, and maps how the watch ended to the exit code.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from spectrum_cli.cli.batch import render
from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.options import (
    CacheDir,
    NoCache,
    SpikeFactor,
    SpikeWindow,
    with_settings,
)
from spectrum_cli.cli.summary import Row, fitted_table, fmt
from spectrum_cli.core.errors import ExitCode, InputError, UsageError
from spectrum_cli.core.trajectory import SpikeRule
from spectrum_cli.io.layout import check_folder, inside_checkpoint
from spectrum_cli.report.document import as_number, dumps
from spectrum_cli.report.output import check_folder_target, check_target, printable
from spectrum_cli.runs import watch as W
from spectrum_cli.runs.alerts import AlertCommand
from spectrum_cli.runs.cache import default_cache_dir
from spectrum_cli.runs.plan import plan
from spectrum_cli.runs.threads import threads_limited
from spectrum_cli.settings import BY_NAME, OUTPUT, SETTINGS

#: The schema's settings whose ``commands`` name watch.
WATCH_SETTINGS = tuple(s.name for s in SETTINGS if "watch" in s.commands)


@with_settings(*WATCH_SETTINGS)
def watch(
    target: Annotated[str, typer.Argument(
        help="The folder a run writes its checkpoints to (files, checkpoint-<step>/ and "
        "DCP folders).", show_default=False)],
    report: Annotated[Optional[Path], typer.Option(
        help="Keep the trajectory here as HDF5, rewritten atomically as checkpoints are "
        "analysed and when the watch ends (see --force).", rich_help_panel=OUTPUT)] = None,
    top: Annotated[int, typer.Option(min=1, help="Indicators shown in the live table.",
                                     rich_help_panel=OUTPUT)] = 12,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    spike_factor: SpikeFactor = 2.0,
    spike_window: SpikeWindow = 10,
    **settings: Any,
) -> None:
    """Follow a run's checkpoint folder: analyse each checkpoint once it is written
    whole, keep the trajectory report, alert on --fail-on.

    --fail-on takes analyze's conditions and trajectory conditions on batch's
    indicators: INDICATOR OP NUMBER (tensors.max_kappa>1e4,
    optimizer.eos_ratio_momentum>=1, loss>10), INDICATOR>threshold (the scorecard's
    threshold, from the earlier checkpoints) and 'spike' (a loss-spike onset).

    Exit codes: 0 the idle timeout passed and all is well; 1 a violation (at the first
    one, or at the end with --keep-going); 2 bad input, or a checkpoint that could not
    be read; 130 Ctrl-C (the report is written first)."""
    err = stderr_console()
    with exit_codes(err):
        code = _run(target, report, top, cache_dir, no_cache, spike_factor, spike_window,
                    settings, err)
    raise typer.Exit(code)


# typer keeps the docstring's line breaks: one line per paragraph, wrapped by rich.
watch.__doc__ = "\n\n".join(" ".join(p.split()) for p in (watch.__doc__ or "").split("\n\n"))


def _run(target: str, report: Path | None, top: int, cache_dir: Path | None,
         no_cache: bool, spike_factor: float, spike_window: int, s: dict[str, Any],
         err: Any) -> int:
    job, cfg, conditions = W.resolve(target, s)  # first: it sets the storage options
    check_folder(target)

    def value(name: str) -> Any:
        return cfg.values.get(name, BY_NAME[name].default)

    poll, settle, idle = value("poll"), value("settle"), value("idle_timeout")
    try:
        rule = SpikeRule(spike_factor, spike_window)
    except ValueError as exc:
        raise UsageError(f"--spike-{exc}") from None
    for out, flag in ((report, "--report"), (s["tensorboard"], "--tensorboard")):
        if out is not None and inside_checkpoint(target, str(out),
                                                 folder=flag == "--tensorboard"):
            raise UsageError(f"{flag} {printable(out)}: inside a checkpoint folder being "
                             "watched (writing there would change it); choose another path")
    if report is not None:  # before the watch: it must not fail at its first checkpoint
        check_target(report, kind="report", listed=[target], force=s["force"])
    if s["tensorboard"] is not None:
        check_folder_target(s["tensorboard"], what="the TensorBoard log", listed=[target])
    hook = AlertCommand(s["on_alert"], report=None if report is None else str(report)) \
        if s["on_alert"] else None
    chosen = plan(1, cfg.values.get("threads"), 1)
    settings = {"analysis": job.options.as_dict(), "operator": job.values, "jobs": 1,
                "config_file": cfg.file, "executor": "serial", **chosen.as_settings(),
                "watch": {"poll": poll, "settle": settle, "idle_timeout": idle,
                          "trajectory_conditions": [str(c) for c in conditions]}}

    def warn(message: str) -> None:
        view.say(f"[yellow]warning:[/] {escape(printable(message))}")

    def say(message: str) -> None:
        view.say(escape(printable(message)))

    view = _View(err, top, live=not s["no_progress"] and err.is_terminal)
    w = W.Watch(target, job, cache_dir=None if no_cache else str(cache_dir or
                                                                    default_cache_dir()),
                rule=rule, conditions=conditions, settle=settle, settings=settings,
                report=None if report is None else str(report), force=s["force"],
                tensorboard=s["tensorboard"], warn=warn, say=say)
    view.watch = w

    def alert(a: Any) -> None:
        view.say(f"[bold red]alert:[/] {escape(printable(a.message))}")
        if hook is not None:
            result = hook(a)
            for line in result.output.splitlines()[-20:]:  # its last lines, each cut short
                line = line if len(line) <= 500 else line[:500] + " …"
                view.say(f"[dim]  on-alert: {escape(printable(line))}[/]")
            if result.problem:
                warn(f"--on-alert: {result.problem}")

    reason = "interrupted"
    try:
        with threads_limited(chosen.threads), view:
            view.say(f"watching {escape(printable(target))} (every {poll:g} s; a checkpoint "
                     f"is read once unchanged for {settle:g} s"
                     + (f"; ends after {idle:g} s without a new one" if idle is not None
                        else "; Ctrl-C ends") + ")")
            reason = w.run(poll=poll, idle_timeout=idle, keep_going=s["keep_going"],
                           on_update=view.update, on_alert=alert, on_poll=view.refresh)
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        with _sigint_deferred():  # a second Ctrl-C cannot cut the report short
            w.close()
    if report is not None and w.records:
        err.print(f"trajectory written to {printable(report)}", markup=False)
    settling = [p for p in w.pending if p.item.missing is None]
    for p in w.pending:
        if p.item.missing is not None:
            warn(f"{p.item.path}: not read ({p.reason})")
    if settling:
        warn(f"{len(settling)} checkpoint(s) still settling when the watch ended were not "
             f"read: {', '.join(p.item.path for p in settling[:3])}"
             + (" ..." if len(settling) > 3 else ""))
    if reason == "interrupted":
        err.print("[red]interrupted[/]")
        return 130
    if not w.records and not w.appeared:
        raise InputError(f"{target}: no such folder: it did not appear within the idle "
                         f"timeout ({idle:g} s)")
    if not w.records:
        raise InputError(f"{target}: no complete checkpoint came within the idle timeout "
                         f"({idle:g} s)")
    doc = w.document()
    if s["json_out"]:
        print(dumps(doc))
    else:
        render(doc, stdout_console(), top, command="watch")
    failed = [r for r in w.records if r["status"] != "ok"]
    if reason == "alert":
        return int(ExitCode.OK if s["exit_zero"] else ExitCode.THRESHOLD_VIOLATED)
    if failed:
        err.print(f"[bold red]error:[/] {len(failed)} of {len(w.records)} checkpoints "
                  "could not be read; the trajectory has the rest")
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if w.alerts and not s["exit_zero"]:
        return int(ExitCode.THRESHOLD_VIOLATED)
    return int(ExitCode.OK)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """SIGINT ignored for the block (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- the view

#: Indicators shown first when present (after those named by trajectory conditions).
_FIRST = ("loss", "optimizer.eos_ratio_", ".spectral_radius", ".kappa_V",
          "optimizer.hessian_lambda_max", "tensors.max_kappa", "tensors.max_sigma_max",
          "tensors.min_stable_rank", "tensors.mean_spectral_entropy_normalized")
_SPARK = "▁▂▃▄▅▆▇█"


class _View:
    """A live table of the latest indicators on a terminal; one line per checkpoint
    otherwise. Every name from the folder or a checkpoint is shown escaped."""

    def __init__(self, console: Any, top: int, live: bool) -> None:
        self.console, self.top, self.enabled = console, top, live
        self.watch: Any = None
        self.live: Any = None

    def __enter__(self) -> "_View":
        if self.enabled:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=4,
                             transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)
            self.live = None

    def say(self, markup: str) -> None:
        self.console.print(markup, highlight=False)  # above the live table, if any

    def update(self, u: Any) -> None:
        r = u.record
        if r["status"] != "ok":
            self.say(f"[bold red]error:[/] {escape(printable(r['path']))}: "
                     f"{escape(printable(r.get('error')))} (the watch goes on)")
        elif self.live is None:
            from rich.text import Text

            line = Text(printable(f"step {r.get('step')} {r['path']}"
                                  + (" (from cache)" if r.get("cached") else "") + ": "))
            parts = []
            for name in self._names()[:4]:
                series = self._series(name)
                at = next((i for i, (x, _) in enumerate(series) if x is r), None)
                if at is not None:  # against the checkpoint before it (it may come late)
                    upto = series[:at + 1]
                    parts.append(printable(f"{name} {_fmt(upto[-1][1])} "
                                           f"{_change(upto)}".rstrip()))
            line.append(", ".join(parts))
            self.console.print(line, soft_wrap=True)
        self.refresh()

    def refresh(self, _watch: Any = None) -> None:
        if self.live is not None:
            self.live.update(self._table())

    # ---- the table

    def _ok(self) -> list[dict[str, Any]]:
        return [r for r in (self.watch.records if self.watch else []) if r["status"] == "ok"]

    def _series(self, name: str) -> list[tuple[dict[str, Any], float]]:
        out = []
        for r in self._ok():
            v = r.get("loss") if name == "loss" else r["indicators"].get(name)
            x = _num(v)
            if x is not None:
                out.append((r, x))
        return out

    def _names(self) -> list[str]:
        ok = self._ok()
        if not ok:
            return []
        latest = ok[-1]
        have = list(latest["indicators"]) + (["loss"] if _num(latest.get("loss"))
                                             is not None else [])
        named = [c.indicator for c in self.watch.conditions if c.indicator in have]
        first = [n for key in _FIRST for n in sorted(have)
                 if (n == key or (key.endswith("_") and n.startswith(key))
                     or (key.startswith(".") and n.endswith(key)))]
        per_tensor = sorted((n for n in have if n.startswith("tensor.kappa[")),
                            key=lambda n: -(_num(latest["indicators"][n]) or -math.inf))
        rest = sorted(n for n in have if not n.startswith("tensor.kappa["))
        return list(dict.fromkeys(named + first + per_tensor + rest))

    def _table(self) -> Any:
        from rich.console import Group
        from rich.text import Text


        w = self.watch
        ok = self._ok()
        failed = len(w.records) - len(ok) if w else 0
        head = Text(printable(
            f"watching {w.target}: {len(ok)} analysed"
            + (f" (last step {ok[-1].get('step')})" if ok else "")
            + f", {failed} failed, {len(w.pending)} pending, {len(w.alerts)} alerts")
            if w else "watching")
        rows = []
        for name in self._names()[:self.top]:
            series = self._series(name)
            if series:
                values = [x for _, x in series]
                finite = [x for x in values if math.isfinite(x)] or values
                rows.append([Text(printable(name)), _fmt(values[-1]), _change(series), values,
                             _fmt(min(finite)), _fmt(max(finite))])
        columns = [("indicator", "left", False), ("value", "right", False),
                   ("change", "right", False), ("trend", "left", True),
                   ("min", "right", True), ("max", "right", True)]
        used = sum(max([len(columns[i][0])] + [len(r[i]) for r in rows]) + 2
                   for i in (1, 2, 4, 5))
        names = max([len(columns[0][0])] + [r[0].cell_len for r in rows])
        spark = max(8, min(24, self.console.width - used - 2 - names))
        for r in rows:
            r[3] = _spark(r[3][-spark:]).ljust(spark)
        table, _ = fitted_table(columns, [Row(r) for r in rows], self.console.width)
        return Group(head, table)


def _num(value: Any) -> float | None:
    return as_number(value)


def _fmt(x: float) -> str:
    return fmt(x)


def _change(series: list[tuple[dict[str, Any], float]]) -> str:
    """The last value against the one before it: an arrow and the relative change."""
    if len(series) < 2:
        return ""
    a, b = series[-2][1], series[-1][1]
    if not (math.isfinite(a) and math.isfinite(b)):
        return "" if a == b or (math.isnan(a) and math.isnan(b)) else "↑" if b > a else "↓"
    rel = (b - a) / abs(a) if a != 0 else (0.0 if b == 0 else math.inf)
    if abs(rel) < 5e-4:  # 0.0% once rounded
        return "→"
    arrow = "↑" if b > a else "↓"
    return f"{arrow} {rel:+.1%}" if math.isfinite(rel) else arrow


def _spark(values: list[float]) -> str:
    finite = [x for x in values if math.isfinite(x)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    out = []
    for x in values:
        if not math.isfinite(x):
            out.append("!" if not math.isnan(x) else " ")
        else:
            level = 0 if hi == lo else int((x - lo) / (hi - lo) * (len(_SPARK) - 1) + 0.5)
            out.append(_SPARK[level])
    return "".join(out)
