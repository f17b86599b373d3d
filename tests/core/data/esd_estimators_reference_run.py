"""Run the reference estimators (AlphaPruning, TempBalance, FARMS) in float64 over
every 2-D float weight of MiniLM-L6 and a few synthetic matrices; write JSON.

Usage: python run_reference.py MODEL.safetensors OUT.json
The reference files are the verbatim files at the commits below, with these textual
patches only (each listed in the JSON):
  - AlphaPruning lib/esd_utils.py: drop `import weightwatcher as ww` and the
    transformers import (unused by net_esd_estimator); `.to(torch.float32)` -> float64.
  - TempBalance tempbalance.py: `.cuda()` removed (CPU run); the class is
    instantiated with pl_fitting='median' (its default).
  - FARMS LLM_Pruning/lib/esd_utils_farms.py: `from .sampling import *` -> the
    sampling module loaded beside it; `matrix.float()` -> `matrix.double()`.
torch.set_default_dtype(torch.float64) so that the reference's torch.zeros / ones /
arange / linspace are float64 too.
"""
import json
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn
from safetensors.numpy import load_file

torch.set_default_dtype(torch.float64)
HERE = __file__.rsplit("/", 1)[0]

PATCHES = {
    "alphapruning_esd_utils.py": [
        ("import weightwatcher as ww\n", ""),
        ("from transformers import AutoModelForCausalLM\n", ""),
        ("matrix = matrix.to(torch.float32)", "matrix = matrix.to(torch.float64)"),
    ],
    "tempbalance.py": [(".cuda()", ""), ("import pandas as pd\n", "")],
    "farms_sampling.py": [],
    "farms_esd_utils_farms.py": [
        ("from .sampling import *\n", "from farms_sampling import *\n"),
        ("matrix = matrix.float()", "matrix = matrix.double()"),
    ],
}


def load(fname, modname):
    src = open(f"{HERE}/{fname}").read()
    for old, new in PATCHES[fname]:
        assert old in src, (fname, old)
        src = src.replace(old, new)
    mod = types.ModuleType(modname)
    sys.modules[modname] = mod
    exec(compile(src, fname, "exec"), mod.__dict__)
    return mod


ap = load("alphapruning_esd_utils.py", "ap_esd")
tb = load("tempbalance.py", "tb_mod")
fs = load("farms_sampling.py", "farms_sampling")
fm = load("farms_esd_utils_farms.py", "farms_esd")


def net_of(w):
    w = torch.as_tensor(np.asarray(w, dtype=np.float64))
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
    return nn.Sequential(lin)


def reference(w):
    net = net_of(w)
    peak = ap.net_esd_estimator(net, fix_fingers="xmin_peak")
    t = tb.Tempbalance.__new__(tb.Tempbalance)  # only the estimator's settings are needed
    t.net, t.EVALS_THRESH, t.bins, t.conv_norm = net, 0.00001, 100, 0.5
    t.pl_fitting, t.xmin_pos, t.filter_zeros = "median", 2, False
    hill = t.net_esd_estimator()
    farms = fm.net_esd_estimator_farms(net, fix_fingers="xmin_peak", use_sliding_window=True,
                                       num_row_samples=100, Q_ratio=2.0, step_size=10,
                                       sampling_ops_per_dim=10)
    out = {"alpha_peak": peak["alpha"][0], "alpha_peak_D": peak["D"][0],
           "alpha_hill": hill["alpha"][0], "alpha_hill_D": hill["D"][0]}
    out["alpha_farms"] = farms["alpha"][0] if farms["alpha"] else None
    out["alpha_farms_D"] = farms["D"][0] if farms["D"] else None
    return out


def uniform(m, n, seed):
    """m x n numbers in (0, 1) from splitmix64 of a counter: exact integer arithmetic,
    so the same bits on every platform (the test regenerates them)."""
    with np.errstate(over="ignore"):
        z = np.arange(m * n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (((z >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53).reshape(m, n)


#: name -> (m, n, seed, kind, scale): kind "uniform" = u - 1/2, "pareto" = sign·u^(-1/2)
RECIPES = {
    "uniform_300x120": (300, 120, 1, "uniform", 1.0),   # FARMS's column slice wraps
    "uniform_64x256": (64, 256, 2, "uniform", 1.0),
    "pareto_256x256": (256, 256, 3, "pareto", 0.05),
    "pareto_150x400": (150, 400, 4, "pareto", 1.0),
    "uniform_100x40_x30": (100, 40, 5, "uniform", 30.0),  # large eigenvalues
    "uniform_6x9": (6, 9, 6, "uniform", 1.0),
    "uniform_100x96_x10": (100, 96, 8, "uniform", 10.0),  # the log-scale bound cuts
}


def make(m, n, seed, kind, scale):
    u = uniform(m, n, seed)
    if kind == "uniform":
        return (u - 0.5) * scale
    sign = np.where(uniform(m, n, seed + 1000) < 0.5, -1.0, 1.0)
    return sign * u ** -0.5 * scale


def synthetic():
    return {k: (r, make(*r)) for k, r in RECIPES.items()}


def main():
    """python run_reference.py MODEL OUT.json [SHARD NSHARDS]: the shards' outputs are
    merged by merge.py (one thread each: torch.set_num_threads(1))."""
    torch.set_num_threads(1)
    model, out = sys.argv[1], sys.argv[2]
    shard, nshards = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (0, 1)
    jobs = [("synthetic", name, recipe, w) for name, (recipe, w) in synthetic().items()]
    jobs += [("checkpoint", name, None, w) for name, w in sorted(load_file(model).items())
             if w.ndim == 2 and w.dtype.kind == "f"]
    res = {"synthetic": {}, "checkpoint": {}}
    for k, (group, name, recipe, w) in enumerate(jobs):
        if k % nshards != shard or os.environ.get("ONLY", name) != name:
            continue
        entry = {"shape": list(w.shape), **reference(w)}
        if recipe is not None:
            entry = {"recipe": list(recipe), **entry}
        res[group][name] = entry
        json.dump(res, open(out, "w"), indent=1)
    res["patches"] = {k: v for k, v in PATCHES.items()}
    res["torch"] = torch.__version__
    json.dump(res, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
