"""``spectrum allocate`` (issue 25, item 2): the per-layer α of a checkpoint measured by
the analysis pipeline, mapped as AlphaPruning / TempBalance map them; its JSON, CSV,
picture, terminal view and refusals, through CliRunner and once through the installed
console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spectrum_cli.core.allocation import alphapruning_ratios, tempbalance_factors
from spectrum_cli.core.esd_estimators import fit_hill_median, fit_peak
from spectrum_cli.allocate import block_of, layer_order
from tests.helpers import oracle_svdvals, run_cli

SCRIPT = Path(sys.executable).parent / "spectrum"
PNG = b"\x89PNG\r\n\x1a\n"
PROJ = (("self_attn.q_proj", (24, 24)), ("self_attn.k_proj", (24, 24)),
        ("mlp.up_proj", (60, 24)), ("mlp.down_proj", (24, 60)))


def tiny_llama(rng: np.random.Generator, blocks: int = 3) -> dict[str, np.ndarray]:
    """A Llama-like state dict in module order: embedding, blocks of 4 projections and a
    norm, final norm, lm_head (heavier tails in later blocks)."""
    t = {"model.embed_tokens.weight": rng.standard_normal((50, 24))}
    for i in range(blocks):
        for name, shape in PROJ:
            t[f"model.layers.{i}.{name}.weight"] = rng.standard_normal(shape) * (
                rng.pareto(1.5 + i, shape[1]) + 1.0)
        t[f"model.layers.{i}.input_layernorm.weight"] = np.ones(24)
    t["model.norm.weight"] = np.ones(24)
    t["lm_head.weight"] = rng.standard_normal((50, 24))
    return t


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    rng = np.random.default_rng(2511)
    t = tiny_llama(rng)
    path = tmp_path_factory.mktemp("alloc") / "tiny.npz"
    np.savez(path, **t)
    return path, t


def _alpha(a: np.ndarray, fit) -> float:
    return fit(np.sort(oracle_svdvals(a) ** 2)).alpha


def test_alphapruning_json_is_the_mapping_of_the_layers_alpha_peak(ckpt) -> None:
    path, t = ckpt
    r = run_cli("allocate", path, "--method", "alphapruning", "--sparsity", "0.6",
                "--json", "--no-cache")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    names = [n for n in t if ".layers." in n and n.endswith("proj.weight")]
    expect = alphapruning_ratios([_alpha(t[n], fit_peak) for n in names],
                                 [t[n].size for n in names],
                                 [n.split(".")[2] for n in names], sparsity=0.6)
    assert list(doc["allocations"]) == [n[:-len(".weight")] for n in names]
    got = np.array(list(doc["allocations"].values()))
    assert np.max(np.abs(got - expect.ratios)) <= 1e-12
    assert doc["summary"]["weighted_mean"] == pytest.approx(0.6, abs=1e-12)
    assert doc["settings"] == {"metric": "alpha_peak", "sparsity": 0.6, "epsilon": 0.3,
                               "mapping": "block_wise", "band": [0.7, 1.3]}
    assert [x["block"] for x in doc["layers"][:4]] == ["model.layers.0"] * 4
    left = {x["tensor"]: x["reason"] for x in doc["left_out"]}
    assert left["lm_head.weight"].startswith("outside the numbered blocks")
    assert left["model.embed_tokens.weight"].startswith("embedding")
    assert doc["reference"]["commit"].startswith("5f0e9845")


def test_tempbalance_json_csv_and_plot(ckpt, tmp_path) -> None:
    path, t = ckpt
    csv, png = tmp_path / "lr.csv", tmp_path / "lr.png"
    args = ("allocate", path, "--method", "tempbalance", "--min-eigenvalues", "20",
            "--json", "--no-cache", "--csv", csv)
    r = run_cli(*args, "--plot", png)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    names = [n for n in t if n.endswith("proj.weight") or n == "lm_head.weight"]
    expect = tempbalance_factors([_alpha(t[n], fit_hill_median) for n in names],
                                 [min(t[n].shape) for n in names], eigs_thresh=20)
    assert list(doc["allocations"]) == [n[:-len(".weight")] for n in names]
    assert np.max(np.abs(np.array(list(doc["allocations"].values())) - expect.factors)) \
        <= 1e-12
    untuned = {x["module"]: x["reason"] for x in doc["layers"] if not x["allocated"]}
    assert untuned == {"model.layers.0.self_attn.q_proj": "first layer (remove_first_layer)",
                       "lm_head": "last layer (remove_last_layer)"}
    assert csv.read_text().splitlines()[0] == "module,lr_factor"
    values = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=1)
    assert values.tolist() == list(doc["allocations"].values())
    assert png.read_bytes().startswith(PNG)
    again = run_cli(*args)  # its own CSV is replaced without --force
    assert again.exit_code == 0, again.stderr


def test_terminal_view_is_a_bar_chart_within_80_columns(ckpt) -> None:
    path, _ = ckpt
    r = run_cli("allocate", path, "--method", "alphapruning", "--sparsity", "0.5",
                "--mapping", "layer_wise", "--no-cache")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("alphapruning: sparsity ratios of 12 layers")
    assert sum("█" in line for line in lines) == 12
    assert all(len(line) <= 80 for line in lines)


def test_names_from_the_file_are_escaped(tmp_path, rng) -> None:
    path = tmp_path / "hostile.npz"
    np.savez(path, **{f"model.layers.{i}.\x1b[31mq\u202e.weight": rng.standard_normal(
        (12, 10)) for i in range(2)})
    r = run_cli("allocate", path, "--method", "alphapruning", "--sparsity", "0.5",
                "--no-cache")
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout
    assert "\\x1b[31mq\\u202e" in r.stdout


@pytest.mark.parametrize("extra, message", [
    (("--method", "alphapruning"), "needs --sparsity"),
    (("--method", "tempbalance", "--epsilon", "0.2"), "--epsilon: not an option"),
    (("--method", "alphapruning", "--sparsity", "0.5", "--lr-max-ratio", "2"),
     "--lr-max-ratio: not an option"),
])
def test_usage_errors_exit_2(ckpt, extra, message) -> None:
    r = run_cli("allocate", ckpt[0], *extra)
    assert r.exit_code == 2 and message in r.stderr


def test_bad_inputs_exit_2_naming_the_file(tmp_path, rng) -> None:
    flat = tmp_path / "flat.npz"
    np.savez(flat, **{"fc1.weight": rng.standard_normal((8, 6)), "b.bias": np.ones(3)})
    r = run_cli("allocate", flat, "--method", "alphapruning", "--sparsity", "0.5",
                "--no-cache")
    assert r.exit_code == 2 and str(flat) in r.stderr and "numbered block" in r.stderr
    missing = tmp_path / "nothere.safetensors"
    r = run_cli("allocate", missing, "--method", "tempbalance")
    assert r.exit_code == 2 and str(missing) in r.stderr
    foreign = tmp_path / "notes.csv"
    foreign.write_text("mine\n")
    r = run_cli("allocate", flat, "--method", "tempbalance", "--csv", foreign)
    assert r.exit_code == 2 and "notes.csv" in r.stderr and foreign.read_text() == "mine\n"


def test_blocks_and_order_from_names() -> None:
    assert block_of("transformer.h.3.attn.c_attn.weight") == ("transformer.h", 3,
                                                              "transformer.h.3")
    assert block_of("encoder.layer.0.x.weight")[2] == "encoder.layer.0"
    assert block_of("conv1.weight") is None and block_of("fc.1.weight") == ("fc", 1, "fc.1")
    names = ["lm_head.weight", "m.layers.0.b.weight", "m.layers.10.a.weight",
             "m.layers.2.a.weight", "m.norm.weight"]
    assert layer_order(names) == [0, 1, 3, 2, 4]


def test_console_script_json(ckpt) -> None:
    r = subprocess.run([str(SCRIPT), "allocate", str(ckpt[0]), "--method", "tempbalance",
                        "--json", "--no-cache"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "spectrum.allocation" and doc["method"] == "tempbalance"
    assert set(doc["allocations"].values()) == {1.0}  # every layer has < 50 eigenvalues
