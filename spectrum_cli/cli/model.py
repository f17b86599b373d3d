"""``spectrum model``: Jacobians, NTK, Hessian density and the stability index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from spectrum_cli import __version__
from spectrum_cli.cli.console import exit_codes, stderr_console, stdout_console
from spectrum_cli.cli.options import with_settings
from spectrum_cli.cli.summary import fmt
from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.core.hessian import build_problem
from spectrum_cli.io import LoadPolicy, open_source
from spectrum_cli.io.optimizer_state import find_optimizer_state, weights_of
from spectrum_cli.io.usercode import load_callable, resolve_loss
from spectrum_cli.model_spectra import ModelOptions, analyze_model
from spectrum_cli.report import plots
from spectrum_cli.report.document import dumps, json_safe
from spectrum_cli.report.hdf5 import atomic_file
from spectrum_cli.report.output import atomic_path, check_target, printable
from spectrum_cli.runs.job import config_values
from spectrum_cli.runs.optimizer import HessianSource, load_model
from spectrum_cli.settings import OUTPUT, SAFETY

_MODEL = "Model-level analysis"


@with_settings("model", "data", "loss", "dense_max", "json_out", "force", SAFETY)
def model(
    path: Annotated[Path, typer.Argument(help="A checkpoint whose weights fit --model.",
                                         show_default=False)],
    samples: Annotated[int, typer.Option(min=1, help="Samples for the Jacobians and the "
                                         "NTK (the first N of --data).",
                                         rich_help_panel=_MODEL)] = 256,
    slq_probes: Annotated[int, typer.Option(
        min=2, help="Stochastic Lanczos quadrature: random probe vectors.",
        rich_help_panel=_MODEL)] = 16,
    slq_steps: Annotated[int, typer.Option(
        min=2, help="Stochastic Lanczos quadrature: Lanczos steps per probe.",
        rich_help_panel=_MODEL)] = 60,
    bandwidth: Annotated[Optional[float], typer.Option(
        help="Gaussian bandwidth of the density and f_h(0). \\[default: 0.01·max|λ|]",
        rich_help_panel=_MODEL)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the probes and samples.",
                                      rich_help_panel=_MODEL)] = 0,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of the Hessian density.",
                                                 rich_help_panel=OUTPUT)] = None,
    entropy_plot: Annotated[Optional[Path], typer.Option(
        help="PNG histogram of per-sample Jacobian entropies.", rich_help_panel=OUTPUT)]
    = None,
    report: Annotated[Optional[Path], typer.Option(help="HDF5 report (atomically; see "
                                                   "--force).", rich_help_panel=OUTPUT)]
    = None,
    **settings: Any,
) -> None:
    """Model-level spectra of a checkpoint on your model and data: Jacobian, NTK and Hessian
    density (arXiv 2602.01136, "A Unified Matrix-Spectral Framework for Stability and
    Interpretability in Deep Learning")."""
    err = stderr_console()
    with exit_codes(err):
        _run(path=path, samples=samples, slq_probes=slq_probes, slq_steps=slq_steps,
             bandwidth=bandwidth, seed=seed, plot=plot, entropy_plot=entropy_plot,
             report=report, err=err, s=settings)


def _run(*, path, samples, slq_probes, slq_steps, bandwidth, seed, plot, entropy_plot,
         report, err, s):
    import importlib.util



    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if (plot or entropy_plot) and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("plots need matplotlib: pip install 'spectrum-cli[plot]'")
    for out, kind in ((report, "report"), (plot, "plot"), (entropy_plot, "plot")):
        if out is not None:  # before the work
            check_target(out, kind=kind, inputs=[path], force=s["force"])
    values, _ = config_values({k: s[k] for k in ("model", "data", "loss", "dense_max")},
                              near=path.resolve().parent)
    if not values.get("model") or not values.get("data"):
        raise UsageError("spectrum model needs --model and --data (or spectrum.toml)")
    src = HessianSource(values["model"], values["data"], values.get("loss", "mse"))
    source = open_source(str(path), LoadPolicy(tuple(s["allow_global"] or ()),
                                               s["trust_checkpoint"]))
    try:
        net = load_model(src, weights_of(source))
        state, _ = find_optimizer_state(source.training_state())
    finally:
        source.close()
    # The 2/lr edge of stability is gradient descent's (SGD); Adam's is on P⁻¹H.
    sgd = bool(state) and "momentum" in state["param_groups"][0]
    lr = float(state["param_groups"][0]["lr"]) if sgd else None
    momentum = float(state["param_groups"][0]["momentum"]) if sgd else 0.0
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    problem = build_problem(net, load_callable(src.data, "--data")(), resolve_loss(src.loss),
                            names)
    options = ModelOptions(samples=samples, slq_probes=slq_probes, slq_steps=slq_steps,
                           bandwidth=bandwidth, seed=seed,
                           dense_max=values.get("dense_max", 2000))
    rep = analyze_model(problem, options, lr)
    doc = _document(str(path), src, options, rep.doc)
    if report is not None:
        _write(str(report), doc, rep.arrays, force=s["force"], inputs=[path])
        err.print(f"report written to {printable(report)}", markup=False)
    if s["json_out"]:
        print(dumps(doc))
    else:
        render(doc, stdout_console())

    if plot is not None:
        h = doc["hessian"]
        with atomic_path(plot, kind="plot", inputs=[path], force=s["force"]) as tmp:
            plots.plot_hessian_density(tmp, rep.arrays["density_grid"],
                                       rep.arrays["density"], h["lambda_max"],
                                       h["lambda_min"], lr, h["density"]["bandwidth"],
                                       momentum)
        err.print(f"plot written to {printable(plot)}", markup=False)
    if entropy_plot is not None:
        with atomic_path(entropy_plot, kind="plot", inputs=[path], force=s["force"]) as tmp:
            plots.plot_entropy_histogram(tmp, rep.arrays["per_sample_jacobian_entropy"])
        err.print(f"plot written to {printable(entropy_plot)}", markup=False)


def _document(path, src, options, body):
    import datetime as dt
    from dataclasses import asdict


    return {"schema": "spectrum.model", "schema_version": "1.0.0",
            "tool": {"name": "spectrum", "version": __version__},
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {"path": path, "model": src.model, "data": src.data, "loss": src.loss},
            "settings": asdict(options), **body}


def _write(path: str, doc: dict, arrays: dict, *, force: bool = False,
           inputs: tuple = ()) -> None:
    """HDF5: the document as root attributes (JSON per section), arrays as datasets;
    written atomically."""
    import json

    import numpy as np


    doc = json_safe(doc)
    with atomic_file(path, force=force, inputs=inputs) as f:
        for key, value in doc.items():
            f.attrs[key] = value if isinstance(value, str) else json.dumps(value)
        for key, value in arrays.items():
            f.create_dataset(key, data=np.asarray(value))


def render(doc: dict, console) -> None:
    from rich.text import Text


    def agg(d):
        return f"max {fmt(d['max'])}, p95 {fmt(d['p95'])}, mean {fmt(d['mean'])}"

    j, k, h, s = doc["input_jacobian"], doc["ntk"], doc["hessian"], doc["stability_index"]
    console.print(Text.assemble(("spectrum model ", "bold"), f"{doc['source']['path']}: "
                                f"{doc['n_params']} parameters, {doc['samples']} samples"),
                  soft_wrap=True)
    lines = [
        ("input Jacobian", f"{j['shape'][0]}x{j['shape'][1]} per sample"),
        ("  ‖J_f(x)‖₂", agg(j["jacobian_norm"])),
        ("  entropy", agg(j["jacobian_entropy"])),
        ("  attribution κ", agg(j["attribution_condition"])),
        ("NTK Gram", f"{k['shape'][0]}x{k['shape'][1]}: λmax {fmt(k['lambda_max'])}, "
                     f"λmin {fmt(k['lambda_min'])}, κ {fmt(k['condition_number'])} "
                     f"[{k['kind']}]"),
        ("  ‖∇_θ f(x)‖₂", agg(k["param_jacobian_norm"])),
        ("Hessian", f"λmax {fmt(h['lambda_max'])}, λmin {fmt(h['lambda_min'])} [{h['kind']}]"),
        ("  flatness f_h(0)", f"{fmt(h['flatness']['value'])} ± {fmt(h['flatness']['se'])} "
                              f"(h = {fmt(h['flatness']['bandwidth'])}, SLQ estimate)"),
        ("  moments tr(Hʲ)/n", ", ".join(f"{fmt(m)}±{fmt(e)}" for m, e in zip(
            h["density"]["moments"], h["density"]["moments_se"]))),
        ("  top H vs GN", f"{', '.join(fmt(x) for x in (h['hessian_top'] or []))} | "
                          f"{', '.join(fmt(x) for x in h['gauss_newton_top'])} (non-GN "
                          f"share of λmax {fmt(h['non_gauss_newton_fraction'])})"),
        ("stability index", f"S = {fmt(s['index_sup'])} (sup), {fmt(s['index_p95'])} (p95)"),
        ("  profile (sup)", ", ".join(f"{n} {fmt(v)}" for n, v in s["profile_sup"].items())),
    ]
    for label, text in lines:
        console.print(Text.assemble((f"{label:<19}", "bold" if not label.startswith(" ")
                                     else ""), text))
    for note in doc["notes"]:
        console.print(Text(f"note: {note}", style="dim"))
