"""``spectrum analyze``: spectra of every weight matrix in one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console

_SAFETY = "Loading safety (command line only)"
_SELECT = "Selection"
_OUTPUT = "Output and CI"
_NUMERICS = "Numerics"
_OPTIM = "Optimizer state and Hessian"


def analyze(
    path: Annotated[Path, typer.Argument(
        help="A checkpoint: torch.save file (.pt/.pth/.bin/.ckpt), .safetensors, "
             "*.index.json shards, .npy/.npz, or an HF model folder.", show_default=False)],
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write an HDF5 report here (atomically).",
        rich_help_panel=_OUTPUT)] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print one JSON document on stdout instead of the table.",
        rich_help_panel=_OUTPUT)] = False,
    fail_on: Annotated[Optional[list[str]], typer.Option(
        "--fail-on", metavar="COND", help="Exit 1 if any tensor violates METRIC OP NUMBER"
        "\\[@GLOB], e.g. 'kappa>1e4' or 'kappa>1e4@*.attention.*'. Repeatable.",
        rich_help_panel=_OUTPUT)] = None,
    exit_zero: Annotated[bool, typer.Option(
        "--exit-zero", help="Exit 0 even when a --fail-on threshold is violated.",
        rich_help_panel=_OUTPUT)] = False,
    top: Annotated[Optional[int], typer.Option(
        min=1, help="Show only the N largest κ in the table.", rich_help_panel=_OUTPUT)]
    = None,
    no_progress: Annotated[bool, typer.Option(
        "--no-progress", help="No progress bar (it only shows on a terminal anyway).",
        rich_help_panel=_OUTPUT)] = False,
    include: Annotated[Optional[list[str]], typer.Option(
        metavar="GLOB", help="Analyse only tensors matching this glob ('*' crosses dots) "
        "or 're:REGEX'. Repeatable.", rich_help_panel=_SELECT)] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        metavar="GLOB", help="Skip tensors matching this glob or 're:REGEX'. Repeatable.",
        rich_help_panel=_SELECT)] = None,
    weights_key: Annotated[Optional[str], typer.Option(
        help="Dotted key of the weights inside a training checkpoint (default: the first "
        "of state_dict, model_state_dict, model, module, net, network; '' = everything).",
        rich_help_panel=_SELECT)] = None,
    conv: Annotated[Optional[str], typer.Option(
        help="k-D kernels: 'reshape' to (out, in·k1·k2…) or 'skip'. \\[default: reshape]",
        rich_help_panel=_SELECT)] = None,
    square: Annotated[Optional[str], typer.Option(
        help="Eigen and non-normal analysis of square matrices: 'auto' (recurrent gate "
        "blocks and squares up to --square-max-dim), 'recurrent', 'all', 'none'. "
        "\\[default: auto]", rich_help_panel=_NUMERICS)] = None,
    square_max_dim: Annotated[Optional[int], typer.Option(
        help="Largest square matrix eigen-analysed under --square auto. \\[default: 256]",
        rich_help_panel=_NUMERICS)] = None,
    eps: Annotated[Optional[list[str]], typer.Option(
        metavar="EPS[,EPS...]", help="Pseudospectral radius ρ_ε for these ε (absolute; "
        "see --eps-relative). Repeatable or comma-separated.", rich_help_panel=_NUMERICS)]
    = None,
    eps_relative: Annotated[bool, typer.Option(
        "--eps-relative", help="Scale each --eps by ‖A‖₂.", rich_help_panel=_NUMERICS)]
    = False,
    power_max: Annotated[Optional[int], typer.Option(
        help="Transient growth: ‖A^k‖₂ for k = 1..N. \\[default: 200]",
        rich_help_panel=_NUMERICS)] = None,
    effective_rank_tau: Annotated[Optional[float], typer.Option(
        help="effective_rank counts singular values above tau·σ_max. \\[default: 0.01]",
        rich_help_panel=_NUMERICS)] = None,
    svd_route: Annotated[Optional[str], typer.Option(
        help="dense backend: 'auto', 'gram' (checked, falls back to gesdd) or 'gesdd'. "
        "\\[default: auto]", rich_help_panel=_NUMERICS)] = None,
    backend: Annotated[Optional[str], typer.Option(
        help="'dense', 'lanczos', 'randomized-svd', a plugin (see `spectrum backends`) or "
        "'auto': dense up to 2^26 entries and min side 8192, else lanczos. \\[default: auto]",
        rich_help_panel=_NUMERICS)] = None,
    device: Annotated[Optional[str], typer.Option(
        help="'cpu' or 'cuda' (dense and randomized-svd). \\[default: cpu]",
        rich_help_panel=_NUMERICS)] = None,
    dtype: Annotated[Optional[str], typer.Option(
        help="Working precision: 'float64' or 'float32'. \\[default: float64]",
        rich_help_panel=_NUMERICS)] = None,
    top_k: Annotated[Optional[int], typer.Option(
        help="How many of the largest singular values backends of extremes compute (2 "
        "give σ_max and the spectral gap). \\[default: 2]",
        rich_help_panel=_NUMERICS)] = None,
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of start vectors and probes (iterative backends). \\[default: 0]",
        rich_help_panel=_NUMERICS)] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 2 if an iterative method did not converge or a --fail-on "
        "condition could not be checked.", rich_help_panel=_OUTPUT)] = False,
    model: Annotated[Optional[str], typer.Option(
        metavar="MODULE:FACTORY", help="Your model: a function returning the nn.Module the "
        "checkpoint's weights load into (enables the update-operator analysis).",
        rich_help_panel=_OPTIM)] = None,
    data: Annotated[Optional[str], typer.Option(
        metavar="MODULE:FN", help="Your data: returns (inputs, targets) or an iterable of "
        "such batches.", rich_help_panel=_OPTIM)] = None,
    loss: Annotated[Optional[str], typer.Option(
        metavar="mse|cross_entropy|MODULE:FN", help="The loss (mean reduction). "
        "\\[default: mse]", rich_help_panel=_OPTIM)] = None,
    dense_max: Annotated[Optional[int], typer.Option(
        help="Dense Hessian up to this many parameters, matrix-free Lanczos beyond. "
        "\\[default: 2000]", rich_help_panel=_OPTIM)] = None,
    params: Annotated[Optional[list[str]], typer.Option(
        metavar="GLOB", help="Restrict the operator to these parameters (their Hessian "
        "block). Repeatable.", rich_help_panel=_OPTIM)] = None,
    coordinates: Annotated[Optional[str], typer.Option(
        help="SGD state coordinates: 'stored' (θ, buf) or 'scaled' (θ, lr·buf). "
        "\\[default: stored]", rich_help_panel=_OPTIM)] = None,
    step_convention: Annotated[Optional[str], typer.Option(
        help="Adam bias correction with the snapshot's t ('snapshot') or t+1 ('next'). "
        "\\[default: snapshot]", rich_help_panel=_OPTIM)] = None,
    allow_global: Annotated[Optional[list[str]], typer.Option(
        metavar="MODULE.NAME", help="Admit this global when unpickling. Repeatable.",
        rich_help_panel=_SAFETY)] = None,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Load with weights_only=False: runs code from the file. "
        "Only for files you made yourself.", rich_help_panel=_SAFETY)] = False,
) -> None:
    """Spectra of every weight matrix in a checkpoint: κ, entropy, ranks, norms."""
    err = stderr_console()
    with exit_codes(err):
        code = _run(**locals())
    raise typer.Exit(code)


def _run(*, path: Path, report: Path | None, json_out: bool, fail_on, exit_zero: bool,
         top, no_progress: bool, include, exclude, weights_key, conv, square, square_max_dim,
         effective_rank_tau, svd_route, backend, device, dtype, top_k, seed, strict: bool,
         eps, eps_relative: bool, power_max, model, data, loss, dense_max, params,
         coordinates, step_convention, allow_global, trust_checkpoint, err) -> int:
    from spectrum_cli.core.errors import ExitCode
    from spectrum_cli.io import LoadPolicy
    from spectrum_cli.pipeline import Job, analyze_checkpoint, config_values

    values, cfg = config_values(analysis_values(locals()),
                                near=path.resolve().parent if path.exists() else None)
    policy = LoadPolicy(tuple(allow_global or ()), trust_checkpoint, weights_key)
    job = Job.from_values(values, policy)
    if trust_checkpoint:
        err.print("[yellow]warning:[/] --trust-checkpoint: unpickling with "
                  "weights_only=False runs code from the file")
    with _progress(err, enabled=not no_progress) as progress:
        out = analyze_checkpoint(str(path), job, digest=bool(report or json_out),
                                 on_progress=progress)
    doc, result = out.doc, out.result
    doc["settings"]["config_file"] = cfg.file
    for warning in out.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if report is not None:
        from spectrum_cli.report.hdf5 import write_report

        write_report(str(report), doc, result, out.operator_arrays)
        err.print(f"report written to {report}", markup=False)
    if json_out:
        from spectrum_cli.report.document import dumps

        print(dumps(doc))
    else:
        from spectrum_cli.cli.summary import render

        render(doc, stdout_console(), top=top)
    problems = _warn_unfinished(doc, err)
    if not result.tensors and not result.errors:
        err.print("[bold red]error:[/] no matrix matched (nothing to analyse: see 'skipped')")
        return int(ExitCode.NOTHING_MATCHED)
    if result.errors:
        err.print(f"[bold red]error:[/] {len(result.errors)} tensor(s) could not be read "
                  "or analysed: " + escape("; ".join(f"{e.name}: {e.message}"
                                                     for e in result.errors)))
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if problems and strict:
        err.print("[bold red]error:[/] --strict: unconverged results or unchecked conditions")
        return int(ExitCode.USAGE_OR_INPUT_ERROR)
    if out.violations and not exit_zero:
        return int(ExitCode.THRESHOLD_VIOLATED)
    return int(ExitCode.OK)


#: CLI parameters that are configuration values (resolved with env and files).
VALUE_PARAMS = ("include", "exclude", "fail_on", "conv", "square", "square_max_dim",
                "effective_rank_tau", "svd_route", "backend", "device", "dtype", "top_k",
                "seed", "eps", "eps_relative", "power_max", "model", "data", "loss",
                "dense_max", "params", "coordinates", "step_convention")


def analysis_values(params: dict) -> dict:
    """The configuration-valued CLI parameters (False flags count as not given)."""
    return {k: (params[k] if params[k] is not False else None) for k in VALUE_PARAMS}


def _warn_unfinished(doc: dict, err) -> int:
    """Warn about non-convergence and conditions no backend could check; count them."""
    late = [t["name"] for t in doc["tensors"] if not t.get("converged", True)]
    if late:
        err.print(f"[yellow]warning:[/] {len(late)} tensor(s) did not converge (their error "
                  f"bars say how far): {escape(', '.join(late[:5]))}"
                  + (" …" if len(late) > 5 else ""))
    unchecked = doc["fail_on"]["unchecked"]
    for u in unchecked[:5]:
        err.print("[yellow]warning:[/] " + escape(f"{u['condition']} not checked on "
                                                   f"{u['tensor']}: {u['reason']}"))
    if len(unchecked) > 5:
        err.print(f"[yellow]warning:[/] … and {len(unchecked) - 5} more unchecked conditions")
    return len(late) + len(unchecked)


class _progress:
    """A rich progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.bar = None
        self.task = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), console=self.console, transient=True)
        self.bar.__enter__()
        return self.update

    def update(self, done: int, total: int, name: str) -> None:
        if self.task is None:
            self.task = self.bar.add_task("analysing", total=total)
        self.bar.update(self.task, completed=done, description=name[-30:] or "done")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
