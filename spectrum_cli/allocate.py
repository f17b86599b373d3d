"""A checkpoint's layer-wise allocation (``spectrum allocate``): its per-layer α measured
by the analysis pipeline, then AlphaPruning's sparsity ratios or TempBalance's
learning-rate factors (:mod:`spectrum_cli.core.allocation`).

The per-layer values come from :func:`spectrum_cli.api.analyze`, as ``spectrum analyze``
computes them, so every input it reads (sharded, remote, DCP) and every way it runs
(``--jobs``, ``--scheduler``, the per-tensor cache) works here too. The analysis is
narrowed to what the allocation needs: ``--square none`` (no eigen/non-normal analysis),
no ``rand_distance``, ``alpha_farms`` only when it is the metric, the dense backend (the
estimators need every singular value), and ``--include '*.weight'`` unless the caller
selects (the registered metrics are all computed; the pipeline has no per-metric
selection).

**Which tensors are layers.** The references take the weights of ``nn.Linear`` and
``nn.Conv2d`` modules in module order. A checkpoint does not say which module a tensor
belongs to, so here a layer is a tensor named ``*.weight`` with two or more dimensions
(a k-D kernel is analysed as ``out x in·k…``, ``--conv reshape``), except embeddings:
a tensor whose module's last name contains ``embed`` or is ``wte``, ``wpe`` or
``shared`` (``model.embed_tokens.weight``, ``bert.embeddings.word_embeddings.weight``)
is an ``nn.Embedding``, which neither reference counts. The module name is the tensor
name without ``.weight``.
A layer's parameter count is that of the tensor as stored; its number of eigenvalues
(TempBalance's ``eigs_num``) is min(m, n) of the analysed matrix. For a conv kernel the
references differ: TempBalance counts k·k·min(out, in) eigenvalues (it pools the σ² of
the k·k slices scaled by √0.5) and the α are not the reference's either
(:mod:`spectrum_cli.core.esd_estimators`); on ``nn.Linear`` weights both agree.

**Blocks.** A layer's block is given by the first dotted part of its name that is a
decimal number: ``model.layers.12.self_attn.q_proj.weight`` is in block
``model.layers.12``, ``transformer.h.3.attn.c_attn.weight`` in ``transformer.h.3``,
``encoder.layer.2.…`` in ``encoder.layer.2`` (the container before the number is part
of the key, so an encoder and a decoder keep their blocks apart). A name without such
a part (``lm_head.weight``, ``conv1.weight``) has no block. AlphaPruning prunes the
layers of the transformer blocks only (``model.model.layers``); layers without a block
are left out of its allocation (listed with the reason); if no layer has a block, that
is an error. TempBalance uses every layer.

**Order.** The reader's order of the tensors, with one repair: the blocks of each
container are put in numeric order at the place where the container first appears
(safetensors files written by Hugging Face list tensors by name, so ``layers.10``
comes before ``layers.2``). Within a block and outside the blocks the reader's order
stands. The references use module order; for a ``torch.save`` state dict this is it.
For an alphabetical file the layers outside the blocks keep their alphabetical places
(``lm_head`` before ``model.…``), which changes which layer TempBalance takes as first
and last: check ``untuned`` in the output.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from spectrum_cli.api import analyze
from spectrum_cli.core import allocation as A
from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.core.selection import Selector

METHODS = ("alphapruning", "tempbalance")
#: The metrics an allocation may use (registered metrics: core/esd_estimators.py and
#: WeightWatcher's ``alpha``, core/esd_metrics.py).
METRICS = ("alpha_peak", "alpha_hill", "alpha_farms", "alpha_peak_corrected",
           "alpha_farms_corrected", "alpha")
DEFAULT_METRIC = {"alphapruning": A.ALPHAPRUNING_METRIC, "tempbalance": A.TEMPBALANCE_METRIC}
#: Embedding tables (``--exclude`` pattern): the module's last name contains "embed" or
#: is wte, wpe or shared.
EMBEDDING_PATTERN = r"re:(^|\.)([^.]*[Ee][Mm][Bb][Ee][Dd][^.]*|wte|wpe|shared)\.weight$"
SCHEMA = "spectrum.allocation"
SCHEMA_VERSION = "1.0.0"
REFERENCES = {
    "alphapruning": {"repository": "https://github.com/haiquanlu/AlphaPruning",
                     "commit": "5f0e9845549ec8ee6dc395f1410566f26cc9e54e",
                     "file": "lib/prune.py", "function": "ww_sparsity"},
    "tempbalance": {"repository": "https://github.com/YefanZhou/TempBalance",
                    "commit": "9f0d9c7e86b70c6613ac3b44b5fd147873050823",
                    "file": "tempbalance.py",
                    "function": "Tempbalance.build_optimizer_param_group, get_layer_temps "
                                "(tb_linear_map)"},
}


@dataclass(frozen=True)
class Layer:
    """One layer: its module and tensor name, block key (None outside the blocks), α,
    parameter count (of the tensor as stored) and number of eigenvalues
    (min of the analysed matrix's sides)."""

    module: str
    tensor: str
    block: str | None
    metric: float | None
    params: int
    n_eigenvalues: int
    matrix_shape: tuple[int, int]
    reason: str | None = None  # why ``metric`` is None


@dataclass(frozen=True)
class Allocated:
    """An allocation of one checkpoint: the ``--json`` document, the layers (in the
    allocation's order) and the typed result of :mod:`spectrum_cli.core.allocation`."""

    document: dict[str, Any]
    layers: tuple[Layer, ...]
    result: Any
    warnings: tuple[str, ...] = ()
    left_out: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def block_of(name: str) -> tuple[str, int, str] | None:
    """(container, index, block key) of a tensor name, or None (module docstring).

    >>> block_of("model.layers.12.self_attn.q_proj.weight")
    ('model.layers', 12, 'model.layers.12')
    >>> block_of("lm_head.weight") is None
    True
    """
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part.isascii() and part.isdigit():
            container = ".".join(parts[:k])
            return container, int(part), ".".join(parts[:k + 1])
    return None


def layer_order(names: list[str]) -> list[int]:
    """Positions of ``names`` in the allocation's order (module docstring: the reader's
    order, each container's blocks in numeric order where it first appears).

    >>> names = ["lm_head.weight", "m.layers.10.q.weight", "m.layers.2.q.weight"]
    >>> [names[i] for i in layer_order(names)]
    ['lm_head.weight', 'm.layers.2.q.weight', 'm.layers.10.q.weight']
    """
    first: dict[str, int] = {}
    keys = []
    for i, name in enumerate(names):
        b = block_of(name)
        if b is None:
            keys.append((i, 0, i))
        else:
            keys.append((first.setdefault(b[0], i), b[1], i))
    return sorted(range(len(names)), key=lambda i: keys[i])


def measure_layers(path: str, metric: str, settings: dict[str, Any], **run: Any
                   ) -> tuple[list[Layer], list[tuple[str, str]], list[str], Any]:
    """The layers of the checkpoint at ``path`` with their ``metric`` (in the order of
    the module docstring), the tensors left out (name, reason), notes on the order and
    the :class:`~spectrum_cli.api.Analysis`. ``settings`` are analyze's (selection,
    run, safety); ``run`` goes to :func:`spectrum_cli.api.analyze` as is (progress
    callbacks, cache)."""
    if metric not in METRICS:
        raise UsageError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    s = dict(settings)
    s["include"] = list(s.get("include") or ["*.weight"])
    s["exclude"] = list(s.get("exclude") or []) + [EMBEDDING_PATTERN]
    s.update(square="none", randomize=False, farms=metric.startswith("alpha_farms"),
             backend="dense", fail_on=[])
    out = analyze(path, digest=False, **run, **s)
    r = out.result
    if r.errors:
        raise InputError(f"{path}: {len(r.errors)} tensor(s) could not be read or analysed: "
                         + "; ".join(f"{e.name}: {e.message}" for e in r.errors))
    left_out = [(t.name, _left_out_reason(t.name, t.reason)) for t in r.skipped
                if t.name.endswith(".weight") and len(t.shape) >= 2]
    layers = []
    for t in r.tensors:
        if not t.name.endswith(".weight") or t.kind not in ("matrix", "conv_reshaped"):
            left_out.append((t.name, "not a layer weight (named *.weight)"))
            continue
        value = t.metrics.get(metric)
        reason = None
        if t.status != "ok":
            reason = "NaN or Inf entries"
        elif value is None:
            reason = t.unavailable.get(metric) or next(
                (n for n in t.notes if n.startswith(f"{metric} undefined")), "undefined")
        elif not math.isfinite(value):
            value, reason = None, f"{metric} is {value}"
        b = block_of(t.name)
        layers.append(Layer(t.name[:-len(".weight")], t.name, b and b[2],
                            None if value is None else float(value),
                            math.prod(t.shape), min(t.matrix_shape),
                            tuple(t.matrix_shape), reason))
    names = [x.tensor for x in layers]
    notes = []
    if len(names) >= 3 and names == sorted(names):
        notes.append("the checkpoint lists its tensors by name (as Hugging Face safetensors "
                     "files do), not in module order: the blocks are put in numeric order, "
                     "the other layers stay where the name puts them (which layer is first "
                     "and last may differ from the model's)")
    order = layer_order(names)
    return [layers[i] for i in order], left_out, notes, out


def _left_out_reason(name: str, reason: str) -> str:
    if reason.startswith("not selected") and not Selector((EMBEDDING_PATTERN,), ())(name):
        return reason
    if reason.startswith("not selected"):
        return "embedding (nn.Embedding: neither reference counts it)"
    return reason


def allocate(path: str, method: str, *, sparsity: float | None = None,
             epsilon: float = A.ALPHAPRUNING_EPSILON, mapping: str = "block_wise",
             lr_min_ratio: float = A.LR_MIN_RATIO, lr_max_ratio: float = A.LR_MAX_RATIO,
             eigs_thresh: int = A.EIGS_THRESH, metric: str | None = None,
             settings: dict[str, Any] | None = None, **run: Any) -> Allocated:
    """The allocation of the checkpoint at ``path`` by ``method`` (``alphapruning``:
    ``sparsity`` required; ``tempbalance``), its ``--json`` document included.

    Raises:
        UsageError: a bad argument (a missing ``sparsity``, an unknown method).
        InputError: a tensor that could not be read, a layer without α
            (alphapruning), no layer at all, or no layer in a block (alphapruning).
    """
    if method not in METHODS:
        raise UsageError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method == "alphapruning" and sparsity is None:
        raise UsageError("--method alphapruning needs --sparsity S (the target mean "
                         "sparsity, e.g. 0.7)")
    metric = metric or DEFAULT_METRIC[method]
    layers, left_out, notes, analysis = measure_layers(path, metric, settings or {}, **run)
    if not layers:
        raise InputError(f"{path}: no layer weight (a tensor named *.weight with 2 or more "
                         "dimensions) to allocate")
    if method == "alphapruning":
        notes = []  # the order changes no ratio
        outside = [x for x in layers if x.block is None]
        layers = [x for x in layers if x.block is not None]
        left_out += [(x.tensor, "outside the numbered blocks (AlphaPruning prunes the "
                                "transformer blocks only)") for x in outside]
        if not layers:
            raise InputError(f"{path}: no layer inside a numbered block (a name like "
                             "model.layers.N.…); AlphaPruning allocates within blocks")
        undefined = [x for x in layers if x.metric is None]
        if undefined:
            raise InputError(f"{path}: no {metric} for " + "; ".join(
                f"{x.tensor} ({x.reason})" for x in undefined[:10])
                + (" …" if len(undefined) > 10 else "") + ": AlphaPruning needs every layer's")
        try:
            result = A.alphapruning_ratios([x.metric for x in layers],
                                           [x.params for x in layers],
                                           [x.block for x in layers], sparsity=sparsity,
                                           epsilon=epsilon, mapping=mapping)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        values, scores = result.ratios, result.scores
        settings_doc = {"metric": metric, "sparsity": result.sparsity,
                        "epsilon": result.epsilon, "mapping": mapping,
                        "band": list(result.band)}
        summary = {"weighted_mean": result.weighted_mean, "scaler": result.scaler,
                   "degenerate": result.degenerate,
                   "out_of_range": [layers[i].module for i in result.out_of_range]}
        rows = [{"allocated": True, "reason": None, "score": sc} for sc in scores]
    else:
        try:
            result = A.tempbalance_factors([x.metric for x in layers],
                                           [x.n_eigenvalues for x in layers],
                                           lr_min_ratio=lr_min_ratio,
                                           lr_max_ratio=lr_max_ratio, eigs_thresh=eigs_thresh)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        values = result.factors
        settings_doc = {"metric": metric, "lr_min_ratio": result.band[0],
                        "lr_max_ratio": result.band[1], "eigs_thresh": eigs_thresh,
                        "remove_first_layer": True, "remove_last_layer": True}
        summary = {"tuned": sum(result.tuned), "untuned": len(layers) - sum(result.tuned),
                   "score_range": None if result.score_range is None
                   else list(result.score_range)}
        rows = [{"allocated": tuned, "reason": why, "score": x.metric}
                for tuned, why, x in zip(result.tuned, result.reasons, layers)]
    notes += list(result.notes)
    values = [float(v) for v in values]
    summary.update(n_layers=len(layers), min=min(values), max=max(values))
    src = analysis.result.source
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "method": method,
        "value": "sparsity_ratio" if method == "alphapruning" else "lr_factor",
        "source": {"path": str(path), "format": src.format, "files": list(src.files)},
        "settings": settings_doc,
        "allocations": {x.module: v for x, v in zip(layers, values)},
        "layers": [{"module": x.module, "tensor": x.tensor, "block": x.block,
                    "matrix_shape": list(x.matrix_shape), "params": x.params,
                    "n_eigenvalues": x.n_eigenvalues, "metric": x.metric, **row,
                    "value": v} for x, row, v in zip(layers, rows, values)],
        "summary": summary,
        "left_out": [{"tensor": n, "reason": why} for n, why in left_out],
        "notes": notes,
        "reference": REFERENCES[method],
    }
    return Allocated(doc, tuple(layers), result, tuple(analysis.warnings), tuple(left_out))


def csv_text(doc: dict[str, Any]) -> str:
    """The allocation as CSV, one row per layer in order: ``module,<value>`` (the list
    the reference consumes: AlphaPruning's ``ratios`` of ``prune_*(…, ratios=…)`` in
    ``find_layers`` order; TempBalance's lr factor of every layer, 1 where untuned).
    ``numpy.loadtxt(path, delimiter=",", skiprows=1, usecols=1)`` reads the values back
    (module names with a comma or a quote are quoted)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["module", doc["value"]])
    for name, v in doc["allocations"].items():
        w.writerow([name, repr(float(v))])
    return buf.getvalue()
