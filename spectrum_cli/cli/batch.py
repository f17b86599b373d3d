"""``spectrum batch``: a directory of checkpoints as a trajectory, with a spike scorecard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from spectrum_cli import api
from spectrum_cli.cli.analyze import RUN_FLAGS
from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.options import (
    CacheDir,
    NoCache,
    SpikeFactor,
    SpikeWindow,
    with_settings,
)
from spectrum_cli.cli.summary import Row, fitted_table, fmt
from spectrum_cli.core.errors import ExitCode, UsageError
from spectrum_cli.report.document import from_json_value
from spectrum_cli.report.output import (
    atomic_path,
    check_folder_target,
    check_target,
    printable,
)
from spectrum_cli.report.plots import plot_trajectory
from spectrum_cli.report.tensorboard import TensorBoardWriter
from spectrum_cli.runs.cache import default_cache_dir
from spectrum_cli.runs.watch import tensorboard_payload
from spectrum_cli.settings import NUMERICS, OPTIM, OUTPUT, RUN, SAFETY, SELECT


@with_settings(SELECT, NUMERICS, OPTIM, OUTPUT, SAFETY, "executor", "scheduler", "scheduler_file",
               "max_memory", "tensorboard")
def batch(
    target: Annotated[str, typer.Argument(
        help="A directory of checkpoints (files and checkpoint-<step>/ folders), or a glob.",
        show_default=False)],
    report: Annotated[Optional[Path], typer.Option(
        help="Write the trajectory as HDF5 (atomically; see --force).",
        rich_help_panel=OUTPUT)] = None,
    plot: Annotated[Optional[Path], typer.Option(
        help="PNG of the trajectory: loss, κ(V), ρ(J), EoS ratios with spikes shaded, or "
        "the per-tensor indicators when the run has no loss or operator.",
        rich_help_panel=OUTPUT)] = None,
    top: Annotated[int, typer.Option(min=1, help="Scorecard rows shown.",
                                     rich_help_panel=OUTPUT)] = 12,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", min=1, help="Worker processes (each with --threads BLAS threads).",
        rich_help_panel=RUN)] = 1,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    spike_factor: SpikeFactor = 2.0,
    spike_window: SpikeWindow = 10,
    **settings: Any,
) -> None:
    """Analyse every checkpoint of a run: trajectory, loss spikes, indicator scorecard.

    Settings also come from SPECTRUM_* variables and the nearest spectrum.toml or
    \\[tool.spectrum] table (command line first)."""
    err = stderr_console()
    with exit_codes(err):
        code = _run(target, report, plot, top, jobs, cache_dir, no_cache, spike_factor,
                    spike_window, settings, err)
    raise typer.Exit(code)


def _run(target: str, report: Path | None, plot: Path | None, top: int, jobs: int,
         cache_dir: Path | None, no_cache: bool, spike_factor: float, spike_window: int,
         s: dict[str, Any], err) -> int:
    if plot is not None:  # a missing extra is said before anything is read
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'spectrum-cli[plot]'")
    candidates = api.candidates(target)
    inputs = [Path(target)] + [c.path for c in candidates]
    for out, kind in ((report, "report"), (plot, "plot")):
        if out is not None:  # before the run: it must not fail at its end
            check_target(out, kind=kind, inputs=inputs, force=s["force"])
    if s["tensorboard"] is not None:  # never into a checkpoint folder being read

        check_folder_target(s["tensorboard"], what="the TensorBoard log", inputs=inputs)
    cache = None if no_cache else str(cache_dir or default_cache_dir())

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(printable(message))}")

    settings = {k: v for k, v in s.items() if k not in RUN_FLAGS + ("tensorboard",)}
    board = None
    if s["tensorboard"] is not None:  # opened up front: a missing package is said now

        board = TensorBoardWriter(s["tensorboard"])
    with _Bar(err, len(candidates), enabled=not s["no_progress"]) as bar:
        run = api.trajectory(target, jobs=jobs, cache_dir=cache, spike_factor=spike_factor,
                             spike_window=spike_window, on_result=bar.advance,
                             on_warning=warn, **settings)
    doc = run.document
    if report is not None:
        run.write_report(report, force=s["force"])
        err.print(f"trajectory written to {printable(report)}", markup=False)
    if board is not None:
        _tensorboard(board, run.records)
        err.print(f"TensorBoard events written to {printable(s['tensorboard'])}",
                  markup=False)
    if s["json_out"]:
        print(json.dumps(doc, indent=2))
    else:
        render(doc, stdout_console(), top)
    if plot is not None:  # last: a failing plot must not cost the results above

        with atomic_path(plot, kind="plot", inputs=inputs, force=s["force"]) as tmp:
            plot_trajectory(tmp, run._raw)
        err.print(f"plot written to {printable(plot)}", markup=False)
    failed = [c for c in doc["checkpoints"] if c["status"] != "ok"]
    for c in failed:
        err.print(f"[bold red]error:[/] {escape(printable(c['path']))}: "
                  f"{escape(printable(c['error']))}")
    if not doc["summary"]["analysed"]:
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if failed:
        err.print(f"[bold red]error:[/] {len(failed)} of {len(run.records)} checkpoints "
                  "failed; the trajectory has the rest")
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if doc["fail_on"]["violations"] and not s["exit_zero"]:
        return int(ExitCode.THRESHOLD_VIOLATED)
    return int(ExitCode.OK)


def _tensorboard(writer: Any, records: list[dict[str, Any]]) -> None:
    """Every analysed checkpoint's indicators, loss and singular-value histogram."""
    with writer:
        for record in records:
            payload = tensorboard_payload(record)
            if payload is not None:
                writer.add(*payload)


#: Run-level indicators shown when the run has no loss to score them against.
_OVERVIEW = ("tensors.max_kappa", "tensors.max_sigma_max", "tensors.min_stable_rank",
             "tensors.mean_spectral_entropy_normalized")


def render(doc: dict, console, top: int = 12, command: str = "batch") -> None:
    """The batch summary: the scorecard when the run logged a loss, else how the
    indicators moved over the run (first, last, min, max)."""
    from rich.text import Text


    s = doc["summary"]
    console.print(Text.assemble((f"spectrum {command} ", "bold"), printable(
        f"{doc['source']}: {s['analysed']} checkpoints analysed ({s['from_cache']} from "
        f"cache), {s['failed']} failed")), soft_wrap=True)
    ok = [c for c in doc["checkpoints"] if c["status"] == "ok"]
    if not any(c.get("loss") is not None for c in ok):
        console.print(Text("no loss recorded: no spikes to score; the indicators over the "
                           "run (first, last, min, max):"))
        _overview(doc, ok, console, top)
    elif not doc["spikes"]["onsets"]:
        # Nothing to separate or anticipate: every AUC would be NaN, every lead empty.
        sp = doc["spikes"]
        console.print(Text(printable(f"spikes: none ({sp['rule']}): no spike to score; the "
                                     "indicators over the run (first, last, min, max):")))
        _overview(doc, ok, console, top, every=True)
    else:
        sp = doc["spikes"]
        console.print(Text(f"spikes: {len(sp['onsets'])} onsets ({sp['rule']}) at steps "
                           f"{', '.join(str(x) for x in sp['onsets'][:12])}"
                           + (" …" if len(sp["onsets"]) > 12 else "")))
    rows = doc["scorecard"][:top] if doc["spikes"]["onsets"] else []
    if rows:
        columns = [("indicator", "left", False), ("AUC", "right", False),
                   ("threshold", "right", False), ("warned", "right", True),
                   ("med. lead", "right", True)]
        table_rows = []
        for r in rows:
            cens = sum(r["censored"])
            warned = f"{r['warned']}/{r['onsets']}" + (f" ({cens}≥)" if cens else "")
            lead = "-" if r["median_lead"] is None else fmt(r["median_lead"])
            thr = fmt(r["threshold"]) + ("" if r["threshold_kind"] == "natural" else "*")
            table_rows.append(Row([Text(printable(r["indicator"])), fmt(r["auc"]), thr,
                                    warned, lead]))
        table, _ = fitted_table(columns, table_rows, console.width,
                                title="scorecard (sorted by |AUC - 0.5|)", title_justify="left")
        console.print(table)
        console.print(Text("AUC: unstable vs stable checkpoints (0.5 = chance, < 0.5 = "
                           "inverse); * threshold = 95th percentile of stable checkpoints "
                           "(in-sample); lead in steps before each onset; (n≥): n onsets "
                           "where the indicator was already above its threshold when the "
                           "previous window ended (censored, not a specific warning)",
                           style="dim"))
    v = doc["fail_on"]["violations"]
    for x in v[:10]:
        console.print(Text(printable(f"✗ step {x['step']}: {x['condition']}: {x['tensor']} = "
                                     f"{fmt(x['value'])}"), style="bold red"))


def _overview(doc: dict, ok: list[dict], console, top: int, every: bool = False) -> None:
    """First, last, min and max of the run-level indicators and of the per-tensor κ of
    the tensors whose last κ is largest (``every``: then the run's other indicators, the
    optimizer's included, up to ``top`` rows)."""
    import math

    from rich.text import Text


    def series(name: str) -> list[float]:
        vals = [from_json_value(c["indicators"].get(name)) for c in ok]
        return [v for v in vals if isinstance(v, (int, float)) and not math.isnan(v)]

    per_tensor = sorted((n for n in doc["indicators"] if n.startswith("tensor.kappa[")),
                        key=lambda n: -(series(n) or [-math.inf])[-1])
    names = [n for n in _OVERVIEW if n in doc["indicators"]] + per_tensor[:max(0, top - 4)]
    if every:
        names += [n for n in sorted(doc["indicators"])
                  if n not in names and not n.startswith("tensor.kappa[")]
        names = names[:top]
    rows = []
    for name in names:
        v = series(name)
        if v:
            rows.append(Row([Text(printable(name)), fmt(v[0]), fmt(v[-1]), fmt(min(v)),
                              fmt(max(v))]))
    if rows:
        columns = [("indicator", "left", False), ("first", "right", False),
                   ("last", "right", False), ("min", "right", True), ("max", "right", True)]
        table, _ = fitted_table(columns, rows, console.width)
        console.print(table)


class _Bar:
    def __init__(self, console, total: int, enabled: bool) -> None:
        self.enabled = enabled and console.is_terminal
        self.console, self.total = console, total

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
            )

            self.bar = Progress(TextColumn("checkpoints"), BarColumn(), MofNCompleteColumn(),
                                console=self.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=self.total)
        return self

    def advance(self, _record) -> None:
        if self.enabled:
            self.bar.advance(self.task)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
