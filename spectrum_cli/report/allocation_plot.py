"""The picture of ``spectrum allocate --plot``: one bar per layer, in the allocation's
order.

Top: each layer's α (dots) and, for AlphaPruning's block-wise mapping, the block means
that were mapped (a step line). Bottom: the allocation, sparsity ratio or learning-rate
factor, one bar per layer (untuned TempBalance layers grey, at 1), with the target
sparsity S or the factor band drawn as horizontal lines. matplotlib is imported on
first use (:func:`spectrum_cli.report.plots.pyplot`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spectrum_cli.report.plots import pyplot


def plot_allocation(path: str, doc: dict[str, Any], title: str = "") -> None:
    """Write the picture (module docstring) of an allocation document (``spectrum
    allocate --json``) to ``path`` (PNG, PDF or SVG by its suffix)."""
    plt = pyplot()
    layers = doc["layers"]
    x = np.arange(len(layers))
    alpha = np.array([np.nan if r["metric"] is None else r["metric"] for r in layers], float)
    value = np.array([r["value"] for r in layers], float)
    tuned = np.array([bool(r["allocated"]) for r in layers])
    width = min(16.0, max(7.0, 0.08 * len(layers) + 5.0))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 6.0), dpi=120, sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.4]})
    metric = doc["settings"]["metric"]
    top.plot(x, alpha, "o", markersize=3, color="#3182bd", label=f"{metric} per layer")
    s = doc["settings"]
    if doc["method"] == "alphapruning" and s.get("mapping") == "block_wise":
        score = np.array([r["score"] for r in layers], float)
        top.step(x, score, where="mid", color="#d62728", linewidth=1.2,
                 label="block mean (mapped)")
    top.set_ylabel("alpha")
    top.legend(fontsize=8, loc="best")
    top.grid(True, alpha=0.3)
    bottom.bar(x[tuned], value[tuned], width=0.85, color="#6baed6",
               label="sparsity ratio" if doc["method"] == "alphapruning" else "lr factor")
    if (~tuned).any():
        bottom.bar(x[~tuned], value[~tuned], width=0.85, color="#bdbdbd", label="untuned")
    if doc["method"] == "alphapruning":
        bottom.axhline(s["sparsity"], color="#d62728", linestyle="--", linewidth=1,
                       label=f"target S = {s['sparsity']:g} (parameter-weighted mean)")
        bottom.set_ylabel("sparsity ratio")
    else:
        for edge in (s["lr_min_ratio"], s["lr_max_ratio"]):
            bottom.axhline(edge, color="#d62728", linestyle=":", linewidth=1)
        bottom.set_ylabel("learning-rate factor")
    bottom.set_xlabel("layer (allocation order)")
    bottom.legend(fontsize=8, loc="best")
    bottom.grid(True, axis="y", alpha=0.3)
    if len(layers) <= 40:
        bottom.set_xticks(x)
        bottom.set_xticklabels([r["module"] for r in layers], rotation=90, fontsize=6)
    if title:
        top.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
