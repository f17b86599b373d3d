"""``spectrum batch``: a directory of checkpoints as a trajectory, with a spike scorecard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spectrum_cli.cli import analyze as _analyze
from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console


def batch(
    target: Annotated[str, typer.Argument(help="A directory of checkpoints, or a glob.")],
    report: Annotated[Optional[Path], typer.Option(help="Write the trajectory as HDF5.")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="The trajectory as JSON on "
                                           "stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="PNG: loss, κ(V), ρ(J), EoS ratios "
                                                 "with spikes shaded.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Worker processes.")] = 1,
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="Where per-checkpoint results are cached (by content hash and settings). "
        "\\[default: $SPECTRUM_CACHE_DIR or ~/.cache/spectrum/batch]")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute everything.")]
    = False,
    spike_factor: Annotated[float, typer.Option(
        help="Unstable when loss > FACTOR x min of the previous WINDOW checkpoints.")] = 2.0,
    spike_window: Annotated[int, typer.Option(help="See --spike-factor.")] = 10,
    top: Annotated[int, typer.Option(help="Scorecard rows shown.")] = 12,
    fail_on: Annotated[Optional[list[str]], typer.Option(
        "--fail-on", metavar="COND", help="As in analyze, applied to every checkpoint.")]
    = None,
    exit_zero: Annotated[bool, typer.Option("--exit-zero")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
    model: Annotated[Optional[str], typer.Option(metavar="MODULE:FACTORY")] = None,
    data: Annotated[Optional[str], typer.Option(metavar="MODULE:FN")] = None,
    loss: Annotated[Optional[str], typer.Option()] = None,
    eps: Annotated[Optional[list[str]], typer.Option(metavar="EPS[,EPS...]")] = None,
    include: Annotated[Optional[list[str]], typer.Option(metavar="GLOB")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(metavar="GLOB")] = None,
    square: Annotated[Optional[str], typer.Option()] = None,
    dense_max: Annotated[Optional[int], typer.Option()] = None,
    params: Annotated[Optional[list[str]], typer.Option(metavar="GLOB")] = None,
    allow_global: Annotated[Optional[list[str]], typer.Option(metavar="MODULE.NAME")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint")] = False,
) -> None:
    """Analyse every checkpoint of a run: trajectory, loss spikes, indicator scorecard.
    The other `analyze` settings come from spectrum.toml / \\[tool.spectrum] / SPECTRUM_*."""
    err = stderr_console()
    with exit_codes(err):
        code = _run(**locals())
    raise typer.Exit(code)


def _run(*, target, report, json_out, plot, jobs, cache_dir, no_cache, spike_factor,
         spike_window, top, fail_on, exit_zero, no_progress, model, data, loss, eps, include,
         exclude, square, dense_max, params, allow_global, trust_checkpoint, err) -> int:
    from spectrum_cli import batch as B
    from spectrum_cli.core.errors import ExitCode, UsageError
    from spectrum_cli.core.trajectory import SpikeRule
    from spectrum_cli.io import LoadPolicy
    from spectrum_cli.pipeline import Job, config_values
    from spectrum_cli.report import trajectory as T

    given = dict(fail_on=fail_on, model=model, data=data, loss=loss, eps=eps,
                 include=include, exclude=exclude, square=square, dense_max=dense_max,
                 params=params)
    cli = {k: given.get(k) for k in _analyze.VALUE_PARAMS}
    tpath = Path(target)
    values, cfg = config_values(cli, near=tpath.resolve() if tpath.is_dir() else None)
    job = Job.from_values(values, LoadPolicy(tuple(allow_global or ()), trust_checkpoint))
    try:
        rule = SpikeRule(spike_factor, spike_window)
    except ValueError as exc:
        raise UsageError(f"--spike-{exc}") from None
    if plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # fail before the long run
            raise UsageError("--plot needs matplotlib: pip install 'spectrum-cli[plot]'")
    candidates = B.discover(target)
    cache = None if no_cache else str(cache_dir or B.default_cache_dir())
    with _Bar(err, len(candidates), enabled=not no_progress) as bar:
        records = B.run(candidates, job, jobs, cache, on_result=bar.advance)
    doc = T.build(records, target, {"analysis": job.options.as_dict(), "operator": job.values,
                                    "jobs": jobs, "config_file": cfg.file}, rule, job.fail_on)
    if report is not None:
        T.write(str(report), doc, records)
        err.print(f"trajectory written to {report}", markup=False)
    if json_out:
        from spectrum_cli.report.document import dumps

        print(dumps(doc))
    else:
        render(doc, stdout_console(), top)
    if plot is not None:  # last: a failing plot must not cost the results above
        from spectrum_cli.report.plots import plot_trajectory

        plot_trajectory(str(plot), doc)
        err.print(f"plot written to {plot}", markup=False)
    failed = [c for c in doc["checkpoints"] if c["status"] != "ok"]
    for c in failed:
        err.print(f"[bold red]error:[/] {escape(c['path'])}: {escape(str(c['error']))}")
    if not doc["summary"]["analysed"]:
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if failed:
        err.print(f"[bold red]error:[/] {len(failed)} of {len(records)} checkpoints failed; "
                  "the trajectory has the rest")
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if doc["fail_on"]["violations"] and not exit_zero:
        return int(ExitCode.THRESHOLD_VIOLATED)
    return int(ExitCode.OK)


def render(doc: dict, console, top: int = 12) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from spectrum_cli.cli.summary import fmt

    s = doc["summary"]
    console.print(Text.assemble(("spectrum batch ", "bold"), f"{doc['source']}: "
                                f"{s['analysed']} checkpoints analysed ({s['from_cache']} from "
                                f"cache), {s['failed']} failed"), soft_wrap=True)
    sp = doc["spikes"]
    console.print(Text(f"spikes: {len(sp['onsets'])} onsets ({sp['rule']}) at steps "
                       f"{', '.join(str(x) for x in sp['onsets'][:12])}"
                       + (" …" if len(sp["onsets"]) > 12 else "")))
    rows = doc["scorecard"][:top]
    if rows:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), show_edge=False,
                      collapse_padding=True, title="scorecard (sorted by |AUC - 0.5|)",
                      title_justify="left")
        for col in ("indicator", "AUC", "threshold", "warned", "med. lead"):
            table.add_column(col, justify="left" if col == "indicator" else "right",
                             no_wrap=True, overflow="ellipsis", max_width=40)
        for r in rows:
            cens = sum(r["censored"])
            warned = f"{r['warned']}/{r['onsets']}" + (f" ({cens}≥)" if cens else "")
            lead = "-" if r["median_lead"] is None else fmt(r["median_lead"])
            thr = fmt(r["threshold"]) + ("" if r["threshold_kind"] == "natural" else "*")
            table.add_row(Text(r["indicator"]), fmt(r["auc"]), thr, warned, lead)
        console.print(table)
        console.print(Text("AUC: unstable vs stable checkpoints (0.5 = chance, < 0.5 = "
                           "inverse); * threshold = 95th percentile of stable checkpoints "
                           "(in-sample); lead in steps before each onset; (n≥): n onsets "
                           "where the indicator was already above its threshold when the "
                           "previous window ended (censored, not a specific warning)",
                           style="dim"))
    v = doc["fail_on"]["violations"]
    for x in v[:10]:
        console.print(Text(f"✗ step {x['step']}: {x['condition']}: {x['tensor']} = "
                           f"{fmt(x['value'])}", style="bold red"))


class _Bar:
    def __init__(self, console, total: int, enabled: bool) -> None:
        self.enabled = enabled and console.is_terminal
        self.console, self.total = console, total

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

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
