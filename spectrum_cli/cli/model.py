"""``spectrum model``: Jacobians, NTK, Hessian density and the stability index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spectrum_cli.cli.console import exit_codes, stderr_console, stdout_console


def model(
    path: Annotated[Path, typer.Argument(help="A checkpoint whose weights fit --model.")],
    model: Annotated[Optional[str], typer.Option(metavar="MODULE:FACTORY")] = None,
    data: Annotated[Optional[str], typer.Option(metavar="MODULE:FN")] = None,
    loss: Annotated[Optional[str], typer.Option(metavar="mse|cross_entropy|MODULE:FN")]
    = None,
    samples: Annotated[int, typer.Option(min=1, help="Samples for the Jacobians and the "
                                         "NTK (the first N of --data).")] = 256,
    dense_max: Annotated[Optional[int], typer.Option(
        help="Dense Hessian up to this many parameters. \\[default: 2000]")] = None,
    slq_probes: Annotated[int, typer.Option(min=2)] = 16,
    slq_steps: Annotated[int, typer.Option(min=2)] = 60,
    bandwidth: Annotated[Optional[float], typer.Option(
        help="Gaussian bandwidth of the density and f_h(0). \\[default: 0.01·max|λ|]")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of the Hessian density.")] = None,
    entropy_plot: Annotated[Optional[Path], typer.Option(
        help="PNG histogram of per-sample Jacobian entropies.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="HDF5 report.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    allow_global: Annotated[Optional[list[str]], typer.Option(metavar="MODULE.NAME")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint")] = False,
) -> None:
    """Model-level spectra of a checkpoint on your model and data (seeds 003, 004)."""
    err = stderr_console()
    with exit_codes(err):
        _run(**locals())


def _run(*, path, model, data, loss, samples, dense_max, slq_probes, slq_steps, bandwidth,
         seed, plot, entropy_plot, report, json_out, allow_global, trust_checkpoint, err):
    import importlib.util

    from spectrum_cli.core.errors import InputError, UsageError
    from spectrum_cli.core.hessian import build_problem
    from spectrum_cli.io import LoadPolicy, open_source
    from spectrum_cli.io.optimizer import find_optimizer_state, weights_of
    from spectrum_cli.io.usercode import load_callable
    from spectrum_cli.model_spectra import ModelOptions, analyze_model
    from spectrum_cli.optimizer import HessianSource, load_model
    from spectrum_cli.pipeline import config_values

    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if (plot or entropy_plot) and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("plots need matplotlib: pip install 'spectrum-cli[plot]'")
    values, _ = config_values({"model": model, "data": data, "loss": loss,
                               "dense_max": dense_max}, near=path.resolve().parent)
    if not values.get("model") or not values.get("data"):
        raise UsageError("spectrum model needs --model and --data (or spectrum.toml)")
    src = HessianSource(values["model"], values["data"], values.get("loss", "mse"))
    source = open_source(str(path), LoadPolicy(tuple(allow_global or ()), trust_checkpoint))
    try:
        net = load_model(src, weights_of(source))
        state, _ = find_optimizer_state(getattr(source, "raw", None))
    finally:
        source.close()
    # The 2/lr edge of stability is gradient descent's (SGD); Adam's is on P⁻¹H.
    sgd = bool(state) and "momentum" in state["param_groups"][0]
    lr = float(state["param_groups"][0]["lr"]) if sgd else None
    momentum = float(state["param_groups"][0]["momentum"]) if sgd else 0.0
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    problem = build_problem(net, load_callable(src.data, "--data")(), src.loss, names)
    options = ModelOptions(samples=samples, slq_probes=slq_probes, slq_steps=slq_steps,
                           bandwidth=bandwidth, seed=seed,
                           dense_max=values.get("dense_max", 2000))
    rep = analyze_model(problem, options, lr)
    doc = _document(str(path), src, options, rep.doc)
    if report is not None:
        _write(str(report), doc, rep.arrays)
        err.print(f"report written to {report}", markup=False)
    if json_out:
        from spectrum_cli.report.document import dumps

        print(dumps(doc))
    else:
        render(doc, stdout_console())
    from spectrum_cli.report import plots

    if plot is not None:
        h = doc["hessian"]
        plots.plot_hessian_density(str(plot), rep.arrays["density_grid"], rep.arrays["density"],
                                   h["lambda_max"], h["lambda_min"], lr,
                                   h["density"]["bandwidth"], momentum)
        err.print(f"plot written to {plot}", markup=False)
    if entropy_plot is not None:
        plots.plot_entropy_histogram(str(entropy_plot),
                                     rep.arrays["per_sample_jacobian_entropy"])
        err.print(f"plot written to {entropy_plot}", markup=False)


def _document(path, src, options, body):
    import datetime as dt
    from dataclasses import asdict

    from spectrum_cli import __version__

    return {"schema": "spectrum.model", "schema_version": "1.0.0",
            "tool": {"name": "spectrum", "version": __version__},
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {"path": path, "model": src.model, "data": src.data, "loss": src.loss},
            "settings": asdict(options), **body}


def _write(path: str, doc: dict, arrays: dict) -> None:
    """HDF5: the document as root attributes (JSON per section), arrays as datasets;
    written atomically."""
    import json

    import numpy as np

    from spectrum_cli.report.document import json_safe
    from spectrum_cli.report.hdf5 import atomic_file

    doc = json_safe(doc)
    with atomic_file(path) as f:
        for key, value in doc.items():
            f.attrs[key] = value if isinstance(value, str) else json.dumps(value)
        for key, value in arrays.items():
            f.create_dataset(key, data=np.asarray(value))


def render(doc: dict, console) -> None:
    from rich.text import Text

    from spectrum_cli.cli.summary import fmt

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
