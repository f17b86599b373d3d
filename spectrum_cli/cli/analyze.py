"""``spectrum analyze``: spectra of every weight matrix in one checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from spectrum_cli import api
from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.options import with_settings
from spectrum_cli.cli.summary import render
from spectrum_cli.core.errors import ExitCode, UsageError
from spectrum_cli.report.output import check_target, printable
from spectrum_cli.runs.cache import default_cache_dir
from spectrum_cli.runs.dispatch import RESUME_MIN_BYTES
from spectrum_cli.settings import NUMERICS, OPTIM, OUTPUT, RUN, SAFETY, SELECT


@with_settings(SELECT, NUMERICS, OPTIM, OUTPUT, SAFETY, RUN)
def analyze(
    path: Annotated[str, typer.Argument(
        help="A checkpoint: torch.save file (.pt/.pth/.bin/.ckpt), .safetensors, "
             "*.index.json shards, .npy/.npz, or an HF model folder.", show_default=False)],
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write an HDF5 report here (atomically; see --force).",
        rich_help_panel=OUTPUT)] = None,
    top: Annotated[Optional[int], typer.Option(
        min=1, help="Show only the N largest κ in the table.", rich_help_panel=OUTPUT)]
    = None,
    **settings: Any,
) -> None:
    """Spectra of every weight matrix in a checkpoint: κ, entropy, ranks, norms.

    Settings also come from SPECTRUM_* variables and the nearest spectrum.toml or
    \\[tool.spectrum] table (command line first)."""
    err = stderr_console()
    with exit_codes(err):
        code = _run(path, report, top, settings, err)
    raise typer.Exit(code)


def _run(path: str, report: Path | None, top: int | None, s: dict[str, Any], err) -> int:
    if report is not None:  # before the work: a long run must not fail at its end
        check_target(report, kind="report", inputs=[path], force=s["force"])
    if s["trust_checkpoint"]:
        err.print("[yellow]warning:[/] --trust-checkpoint: unpickling with "
                  "weights_only=False runs code from the file")
    settings = {k: v for k, v in s.items() if k not in RUN_FLAGS + _CACHE_FLAGS}
    cache_dir, cache_min = tensor_cache(s)

    def note(text: str) -> None:
        err.print(f"note: {printable(text)}", markup=False)

    with analysis_progress(err, enabled=not s["no_progress"]) as progress:
        out = api.analyze(path, digest=bool(report or s["json_out"]),
                          on_progress=progress and progress.update,
                          on_tick=progress and progress.tick,
                          cache_dir=cache_dir, cache_min_bytes=cache_min, on_note=note,
                          **settings)
    for warning in out.warnings:
        err.print(f"[yellow]warning:[/] {escape(printable(warning))}")
    if report is not None:
        out.write_report(report, force=s["force"])
        err.print(f"report written to {printable(report)}", markup=False)
    if s["json_out"]:
        print(json.dumps(out.document, indent=2))
    else:
        render(out.document, stdout_console(), top=top)
    problems = _warn_unfinished(out.document, err)
    result = out.result
    if not result.tensors and not result.errors:
        err.print("[bold red]error:[/] no matrix matched (nothing to analyse: see 'skipped')")
        return int(ExitCode.NOTHING_MATCHED)
    if result.errors:
        err.print(f"[bold red]error:[/] {len(result.errors)} tensor(s) could not be read "
                  "or analysed: " + escape(printable("; ".join(
                      f"{e.name}: {e.message}" for e in result.errors))))
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if problems and s["strict"]:
        err.print("[bold red]error:[/] --strict: unconverged results or unchecked conditions")
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if out.violations and not s["exit_zero"]:
        return int(ExitCode.THRESHOLD_VIOLATED)
    return int(ExitCode.OK)


#: Options of the command line itself, not settings of the analysis.
RUN_FLAGS = ("json_out", "force", "no_progress", "strict", "exit_zero")
_CACHE_FLAGS = ("cache_dir", "no_cache")


def tensor_cache(s: dict[str, Any]) -> tuple[str | None, int]:
    """The per-tensor cache folder and the smallest checkpoint it serves: the folder
    given (every checkpoint), else batch's default folder for big checkpoints; none
    with --no-cache."""
    if s.get("no_cache"):
        if s.get("cache_dir"):
            raise UsageError("--cache-dir and --no-cache contradict each other")
        return None, 0
    if s.get("cache_dir"):
        return str(s["cache_dir"]), 0
    return str(default_cache_dir()), RESUME_MIN_BYTES


def _warn_unfinished(doc: dict, err) -> int:
    """Warn about non-convergence and conditions no backend could check; count them."""
    late = [t["name"] for t in doc["tensors"] if not t.get("converged", True)]
    if late:
        err.print(f"[yellow]warning:[/] {len(late)} tensor(s) did not converge (their error "
                  f"bars say how far): {escape(printable(', '.join(late[:5])))}"
                  + (" …" if len(late) > 5 else ""))
    unchecked = doc["fail_on"]["unchecked"]
    for u in unchecked[:5]:
        err.print("[yellow]warning:[/] " + escape(printable(
            f"{u['condition']} not checked on {u['tensor']}: {u['reason']}")))
    if len(unchecked) > 5:
        err.print(f"[yellow]warning:[/] … and {len(unchecked) - 5} more unchecked conditions")
    return len(late) + len(unchecked)


class analysis_progress:
    """A rich progress bar on stderr, only when stderr is a terminal: matrices done,
    bytes measured (those taken from the cache aside) and the time left."""

    def __init__(self, console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.bar = None
        self.task = None
        self.bytes = False

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.fields[tensors]}"), DownloadColumn(),
                            TimeRemainingColumn(), console=self.console, transient=True)
        self.bar.__enter__()
        return self

    def __call__(self, done: int, total: int, name: str) -> None:
        self.update(done, total, name)

    def update(self, done: int, total: int, name: str) -> None:
        """Matrices done of all (``on_progress``); the bar follows the count until
        bytes arrive."""
        self._show(f"{done}/{total} tensors", name, None if self.bytes else (done, total))

    def tick(self, tick) -> None:
        """One :class:`~spectrum_cli.runs.dispatch.Tick` (``on_tick``): the bar and the ETA
        follow the bytes measured in this run (cached ones are not a speed)."""
        self.bytes = True
        self._show(f"{tick.tensors_done}/{tick.tensors_total} tensors", tick.name,
                   (tick.bytes_done - tick.cached_bytes,
                    max(1, tick.bytes_total - tick.cached_bytes)))

    def _show(self, tensors: str, name: str, progress: tuple[int, int] | None) -> None:
        if self.task is None:
            self.task = self.bar.add_task("analysing", total=None, tensors=tensors)
        extra = {} if progress is None else {"completed": progress[0], "total": progress[1]}
        self.bar.update(self.task, tensors=tensors,
                        description=escape(printable(name))[-30:] or "done", **extra)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
