"""Run the reference allocation code (AlphaPruning's ``ww_sparsity``, TempBalance's
``build_optimizer_param_group`` / ``get_layer_temps``) on fixed per-layer values; write
``allocation_reference.json`` beside this file.

Usage (needs torch and pandas; not part of the test suite):

    python tests/core/allocation_reference_run.py ALPHAPRUNING_GIT TEMPBALANCE_GIT OUT.json

where the first two are the repositories' git directories (``git -C DIR show
COMMIT:FILE`` is how the source is read; nothing is copied into spectrum). The code
run is the verbatim source at the commits below:

- AlphaPruning ``lib/prune.py``: the functions ``find_layers`` and ``ww_sparsity``
  (extracted with :mod:`ast`; the module itself imports CUDA-only helpers), called as
  ``prune_wanda_ww`` calls it: ``s1 = 1.0 - args.epsilon``, ``s2 = 1.0 + args.epsilon``.
  The metric file it ``np.load``s is written to a temporary folder; the model is
  ``model.model.layers``, an ``nn.ModuleList`` of blocks of ``nn.Linear`` on the meta
  device (only ``weight.numel()`` is read).
- TempBalance ``tempbalance.py``: the whole module, unpatched; the instance's
  ``net_esd_estimator`` is replaced by one returning the fixed per-layer values
  (``alpha``, ``eigs_num``, ``longname``), so that ``build_optimizer_param_group``'s
  own selection (first/last layer, ``eigs_num >= eigs_thresh``) and ``get_layer_temps``
  (``tb_linear_map``) run as written. Each parameter group's lr is mapped back to its
  module by parameter identity.

``torch.set_default_dtype(torch.float64)`` for the runs recorded as ``float64``; the
AlphaPruning LLaMA-7B case is also run at torch's default (float32) dtype, where
``torch.sum(prunables) * args.sparsity_ratio`` is a float32 product (quirk 4 of
``spectrum_cli/core/allocation.py``), and recorded as ``default_dtype_ratios``.
"""
from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch
import torch.nn as nn

AP_COMMIT = "5f0e9845549ec8ee6dc395f1410566f26cc9e54e"
TB_COMMIT = "9f0d9c7e86b70c6613ac3b44b5fd147873050823"


def git_show(repo: str, commit: str, path: str) -> bytes:
    return subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True,
                          capture_output=True).stdout


def functions(src: str, names: list[str]) -> str:
    """The source of the named top-level functions of ``src``, verbatim."""
    tree = ast.parse(src)
    found = {n.name: ast.get_source_segment(src, n) for n in tree.body
             if isinstance(n, ast.FunctionDef) and n.name in names}
    assert set(found) == set(names), (sorted(found), names)
    return "\n\n".join(found[n] for n in names)


def load_alphapruning(repo: str) -> types.SimpleNamespace:
    src = git_show(repo, AP_COMMIT, "lib/prune.py").decode()
    ns = {"torch": torch, "nn": nn, "np": np}
    exec(compile(functions(src, ["find_layers", "ww_sparsity"]), "lib/prune.py", "exec"),
         ns)
    return types.SimpleNamespace(**ns)


def load_tempbalance(repo: str) -> types.ModuleType:
    src = git_show(repo, TB_COMMIT, "tempbalance.py").decode()
    mod = types.ModuleType("tempbalance")
    sys.modules["tempbalance"] = mod
    exec(compile(src, "tempbalance.py", "exec"), mod.__dict__)
    return mod


# ---- AlphaPruning ------------------------------------------------------------------

def llama_blocks(n_blocks: int, hidden: int, inter: int, kv: int) -> nn.Module:
    """``model.model.layers`` of a LLaMA-like model (meta tensors), module order."""
    def block() -> nn.Module:
        b = nn.Module()
        b.self_attn = nn.Module()
        for name, (o, i) in (("q_proj", (hidden, hidden)), ("k_proj", (kv, hidden)),
                             ("v_proj", (kv, hidden)), ("o_proj", (hidden, hidden))):
            setattr(b.self_attn, name, nn.Linear(i, o, bias=False, device="meta"))
        b.mlp = nn.Module()
        for name, (o, i) in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                             ("down_proj", (hidden, inter))):
            setattr(b.mlp, name, nn.Linear(i, o, bias=False, device="meta"))
        return b

    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([block() for _ in range(n_blocks)])
    return model


def run_ww_sparsity(ap, model, metrics, sparsity, epsilon, mapping) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="alloc_ref_") as tmp:
        np.save(f"{tmp}/alpha_peak.npy", np.asarray(metrics, dtype=np.float64))
        args = types.SimpleNamespace(model="llama-ref", ww_metric_cache=tmp,
                                     ww_metric="alpha_peak", mapping_type=mapping,
                                     sparsity_ratio=sparsity, epsilon=epsilon)
        s1 = 1.0 - args.epsilon  # as prune_wanda_ww / prune_magnitude_ww / ..._ww
        s2 = 1.0 + args.epsilon
        out = io.StringIO()
        stdout, sys.stdout = sys.stdout, out  # ww_sparsity prints its inputs
        try:
            return [float(r) for r in ap.ww_sparsity(args, model, "cpu", s1, s2)]
        finally:
            sys.stdout = stdout


def alphapruning_case(ap, name, blocks, hidden, inter, kv, metrics, sparsity, epsilon,
                      mapping, note=""):
    model = llama_blocks(blocks, hidden, inter, kv)
    layers = ap.find_layers(model.model.layers)
    case = {"name": name, "note": note, "mapping_type": mapping, "sparsity_ratio": sparsity,
            "epsilon": epsilon,
            "modules": [f"model.layers.{k}" for k in layers],
            "params": [int(m.weight.numel()) for m in layers.values()],
            "blocks": [int(k.split(".")[0]) for k in layers],
            "metrics": [float(v) for v in metrics]}
    torch.set_default_dtype(torch.float64)
    case["ratios"] = run_ww_sparsity(ap, model, metrics, sparsity, epsilon, mapping)
    torch.set_default_dtype(torch.float32)
    case["default_dtype_ratios"] = run_ww_sparsity(ap, model, metrics, sparsity, epsilon,
                                                   mapping)
    torch.set_default_dtype(torch.float64)
    return case


# ---- TempBalance -------------------------------------------------------------------

def net_of(names: list[str]) -> nn.Module:
    """A module tree with one nn.Linear(1, 1) (meta) at each dotted name, in order."""
    root = nn.Module()
    for name in names:
        node = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.add_module(leaf, nn.Linear(1, 1, device="meta"))
    return root


def run_tempbalance(tbmod, names, alphas, eigs_num, untuned_lr, lr_min, lr_max):
    net = net_of(names)
    tb = tbmod.Tempbalance(net, lr_min_ratio=lr_min, lr_max_ratio=lr_max)
    n = len(names)

    def fixed(verbose=False):
        return {"alphahat": [0.0] * n, "alpha": list(alphas), "spectral_norm": [1.0] * n,
                "D": [0.0] * n, "longname": list(names), "eigs": [None] * n,
                "norm": [1.0] * n, "eigs_num": list(eigs_num)}

    tb.net_esd_estimator = fixed
    groups, count = tb.build_optimizer_param_group(untuned_lr=untuned_lr, initialize=True)
    owner = {id(p): name for name, m in net.named_modules() for p in m.parameters(recurse=False)}
    lr = {}
    for g in groups:
        for p in g["params"]:
            lr[owner[id(p)]] = float(g["lr"])
    return [lr[name] for name in names], count


def tempbalance_case(tbmod, name, names, alphas, eigs_num, lr_min=0.5, lr_max=1.5,
                     note=""):
    case = {"name": name, "note": note, "modules": names, "metrics": [float(a) for a in alphas],
            "eigs_num": [int(e) for e in eigs_num], "lr_min_ratio": lr_min,
            "lr_max_ratio": lr_max}
    for lr in (1.0, 0.1):
        lrs, count = run_tempbalance(tbmod, names, alphas, eigs_num, lr, lr_min, lr_max)
        case[f"lr_untuned_{lr}"] = lrs
        case["tuned_count"] = count
    return case


def resnet_like() -> tuple[list[str], list[int]]:
    """Module order of a small ResNet: stem conv, two stages of two blocks, fc; the
    reference counts 9·min(out, in) eigenvalues for a 3x3 kernel."""
    names, eigs = ["conv1"], [9 * 3]
    for s, c in ((1, 64), (2, 128)):
        for b in range(2):
            for k in (1, 2):
                names.append(f"layer{s}.{b}.conv{k}")
                eigs.append(9 * c)
            if s == 2 and b == 0:
                names.append("layer2.0.shortcut.0")
                eigs.append(64)
    names += ["fc"]
    eigs += [10]
    return names, eigs


def main(ap_repo: str, tb_repo: str, out: str) -> None:
    torch.set_default_dtype(torch.float64)
    ap = load_alphapruning(ap_repo)
    tbmod = load_tempbalance(tb_repo)
    rng = np.random.default_rng(20251)
    llama7b = np.load(io.BytesIO(git_show(ap_repo, AP_COMMIT,
                                          "data/llama-7b-hf/alpha_peak.npy")))
    ap_cases = [
        alphapruning_case(ap, "llama-7b alpha_peak.npy of the repository", 32, 4096, 11008,
                          4096, llama7b, 0.7, 0.3, "block_wise",
                          "data/llama-7b-hf/alpha_peak.npy at the commit; LLaMA-7B shapes; "
                          "scripts/llama_7b.sh settings"),
        alphapruning_case(ap, "small llama, block_wise", 4, 64, 172, 64,
                          rng.uniform(2.0, 8.0, 28), 0.5, 0.3, "block_wise"),
        alphapruning_case(ap, "small llama GQA, block_wise, S=0.6 eps=0.2", 6, 96, 256, 32,
                          rng.uniform(1.5, 6.0, 42), 0.6, 0.2, "block_wise"),
        alphapruning_case(ap, "small llama, layer_wise", 4, 64, 172, 64,
                          rng.uniform(2.0, 8.0, 28), 0.5, 0.3, "layer_wise",
                          "any mapping_type other than 'block_wise' maps each layer's own "
                          "value"),
        alphapruning_case(ap, "llama-7b, layer_wise, S=0.5", 32, 4096, 11008, 4096, llama7b,
                          0.5, 0.3, "layer_wise"),
    ]
    names, eigs = resnet_like()
    llama_names = [f"model.layers.{b}.{m}" for b in range(3) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]
    tb_cases = [
        tempbalance_case(tbmod, "resnet-like", names, rng.uniform(2.0, 6.0, len(names)),
                         eigs),
        tempbalance_case(tbmod, "resnet-like, band 0.6-1.4", names,
                         rng.uniform(2.0, 6.0, len(names)), eigs, 0.6, 1.4),
        tempbalance_case(tbmod, "llama-like with lm_head, one layer of 40 eigenvalues",
                         llama_names, rng.uniform(2.0, 9.0, len(llama_names)),
                         [64] * 5 + [40] + [64] * 15 + [128]),
        tempbalance_case(tbmod, "all tuned layers equal", names[:5], [3.0] * 5,
                         [100] * 5, note="min == max: np.interp gives the top of the band"),
    ]
    doc = {
        "description": "Reference allocations: the reference repositories' own mapping "
                       "code run on fixed per-layer values (inputs and outputs below). "
                       "See tests/core/allocation_reference_run.py for how each function "
                       "is called.",
        "command": "python tests/core/allocation_reference_run.py "
                   "/work/.mirror/haiquanlu+AlphaPruning/repo "
                   "/work/.mirror/YefanZhou+TempBalance/repo "
                   "tests/core/allocation_reference.json",
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "pandas": __import__("pandas").__version__},
        "references": {
            "alphapruning": {
                "repository": "https://github.com/haiquanlu/AlphaPruning",
                "commit": AP_COMMIT, "file": "lib/prune.py",
                "function": "ww_sparsity (with find_layers; s1, s2 as prune_wanda_ww)",
                "dtype": "torch default dtype float64 ('ratios'); float32, the "
                         "repository's own setting ('default_dtype_ratios')"},
            "tempbalance": {
                "repository": "https://github.com/YefanZhou/TempBalance",
                "commit": TB_COMMIT, "file": "tempbalance.py",
                "function": "Tempbalance.build_optimizer_param_group -> get_layer_temps "
                            "(assign_func='tb_linear_map', remove_first_layer=True, "
                            "remove_last_layer=True, eigs_thresh=50)",
                "dtype": "float64 (numpy)"},
        },
        "alphapruning": ap_cases,
        "tempbalance": tb_cases,
    }
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
