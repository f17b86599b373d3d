"""Non-normal analysis through the CLI: .npy matrices, recurrent gate blocks, plots."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from spectrum_cli.core.metrics import NONNORMAL_METRICS
from tests.helpers import run_cli, run_json


@pytest.fixture
def grcar(tmp_path):
    n = 64
    g = np.eye(n) - np.eye(n, k=-1)
    for k in range(1, 4):
        g += np.eye(n, k=k)
    np.save(tmp_path / "grcar.npy", g)
    return tmp_path / "grcar.npy"


def test_npy_with_eps_returns_every_metric(grcar):
    doc, result = run_json(grcar, "--eps", "1e-1,1e-2,1e-3")
    assert result.exit_code == 0, result.stderr
    (t,) = doc["tensors"]
    assert t["name"] == "grcar"
    for key in ("spectral_radius", *NONNORMAL_METRICS):
        assert key in t["metrics"], key
    ps = t["nonnormal"]["pseudospectral_radius"]
    assert [p["eps"] for p in ps] == [0.1, 0.01, 0.001]
    assert all(p["kind"] == "exact" for p in ps)
    assert ps[0]["value"] > ps[1]["value"] > ps[2]["value"] > t["metrics"]["spectral_radius"]
    assert t["metrics"]["kreiss_lower_bound"] == "inf"  # ρ(Grcar) > 1
    assert t["nonnormal"]["max_power_norm_exact"] is False


def test_eps_relative_scales_by_the_norm(grcar):
    doc, _ = run_json(grcar, "--eps", "1e-3", "--eps-relative")
    p = doc["tensors"][0]["nonnormal"]["pseudospectral_radius"][0]
    assert p["eps_absolute"] == pytest.approx(1e-3 * np.linalg.norm(np.load(grcar), 2))


def test_bad_eps_is_a_usage_error(grcar):
    for bad in ("0", "-1", "abc"):
        result = run_cli("analyze", grcar, "--eps", bad)
        assert result.exit_code == 2 and "--eps" in result.stderr


def lstm_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({
        "lstm": torch.nn.LSTM(input_size=5, hidden_size=6, num_layers=2, bidirectional=True),
        "gru": torch.nn.GRU(input_size=3, hidden_size=4),
    })
    torch.save({"model": model.state_dict()}, tmp_path / "rnn.pt")
    return tmp_path / "rnn.pt"


def test_lstm_and_gru_gate_blocks_everywhere(tmp_path):
    path = lstm_checkpoint(tmp_path)
    report = tmp_path / "rnn.h5"
    doc, result = run_json(path, "--report", report)
    assert result.exit_code == 0, result.stderr
    by = {t["name"]: t for t in doc["tensors"]}
    for layer in ("weight_hh_l0", "weight_hh_l1", "weight_hh_l0_reverse",
                  "weight_hh_l1_reverse"):
        assert by[f"lstm.{layer}"]["matrix_shape"] == [24, 6]
        for gate in "ifgo":
            t = by[f"lstm.{layer}[{gate}]"]
            assert t["kind"] == "recurrent_gate" and t["matrix_shape"] == [6, 6]
            assert "kappa_V" in t["metrics"] and t["nonnormal"] is not None
    w = torch.load(path)["model"]["lstm.weight_hh_l1_reverse"].double().numpy()
    f_gate = w[6:12]
    assert by["lstm.weight_hh_l1_reverse[f]"]["metrics"]["spectral_radius"] == pytest.approx(
        float(np.max(np.abs(np.linalg.eigvals(f_gate)))), rel=1e-12)
    assert {f"gru.weight_hh_l0[{g}]" for g in "rzn"} <= set(by)
    with h5py.File(report) as f:
        assert "lstm.weight_hh_l0[g]" in f["tensors"]
        assert f["tensors/lstm.weight_hh_l0[g]/power_norms"].shape == (200,)
    table = run_cli("analyze", path).stdout
    assert "non-normal" in table and "weight_hh_l1_reverse[o]" in table


def test_square_modes(tmp_path):
    path = lstm_checkpoint(tmp_path)
    doc, _ = run_json(path, "--square", "none")
    assert not any("[" in t["name"] for t in doc["tensors"])
    assert all(t["nonnormal"] is None for t in doc["tensors"])
    doc, _ = run_json(path, "--square", "recurrent")
    assert {t["name"] for t in doc["tensors"] if t["nonnormal"]} == {
        t["name"] for t in doc["tensors"] if t["kind"] == "recurrent_gate"}


def test_pseudospectrum_command_and_plot(grcar, tmp_path):
    png = tmp_path / "ps.png"
    result = run_cli("pseudospectrum", grcar, "--eps", "1e-1,1e-3", "--plot", png, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [p["eps"] for p in doc["pseudospectral_radius"]] == [0.1, 0.001]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000


def test_pseudospectrum_of_a_gate_block(tmp_path):
    path = lstm_checkpoint(tmp_path)
    result = run_cli("pseudospectrum", path, "--tensor", "lstm.weight_hh_l0[f]", "--eps",
                     "1e-2", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tensor"] == "lstm.weight_hh_l0[f]"
    bad = run_cli("pseudospectrum", path, "--tensor", "lstm.weight_hh_l0[x]")
    assert bad.exit_code == 2 and "no gate" in bad.stderr
    many = run_cli("pseudospectrum", path)
    assert many.exit_code == 2 and "--tensor" in many.stderr


def test_square_auto_analyses_what_iterates(tmp_path):
    """--square auto (issue 24): the recurrent hidden-to-hidden weights of nn.LSTM and of
    the *Cell modules, per gate; not the feed-forward squares (a Linear applied once),
    which --square-max-dim or --square all add."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({
        "lstm": torch.nn.LSTM(input_size=6, hidden_size=6),
        "cell": torch.nn.GRUCell(input_size=6, hidden_size=6),
        "proj": torch.nn.Linear(6, 6),
    })
    path = tmp_path / "mixed.pt"
    torch.save({"model": model.state_dict()}, path)
    doc, result = run_json(path)
    assert result.exit_code == 0, result.stderr
    eig = {t["name"] for t in doc["tensors"] if t["nonnormal"]}
    assert eig == {f"lstm.weight_hh_l0[{g}]" for g in "ifgo"} | {
        f"cell.weight_hh[{g}]" for g in "rzn"}
    assert "proj.weight" in {t["name"] for t in doc["tensors"]}
    doc, _ = run_json(path, "--square-max-dim", "6")
    assert "proj.weight" in {t["name"] for t in doc["tensors"] if t["nonnormal"]}
    doc, _ = run_json(path, "--square", "all")
    assert "proj.weight" in {t["name"] for t in doc["tensors"] if t["nonnormal"]}


def test_a_matrix_given_alone_is_eigen_analysed(tmp_path, grcar):
    """A file holding one square matrix is the operator the user asks about: analysed
    under auto; the same matrix beside another tensor is a layer like any other."""
    doc, _ = run_json(grcar)
    assert doc["tensors"][0]["nonnormal"] is not None
    from safetensors.numpy import save_file

    a = np.load(grcar)
    save_file({"a": a}, str(tmp_path / "one.safetensors"))
    save_file({"a": a, "b": np.ones((3, 2))}, str(tmp_path / "two.safetensors"))
    doc, _ = run_json(tmp_path / "one.safetensors")
    assert doc["tensors"][0]["nonnormal"] is not None
    doc, _ = run_json(tmp_path / "two.safetensors")
    assert all(t["nonnormal"] is None for t in doc["tensors"])
    # A huge lone matrix from a stranger starts no geev by default (hours at 20000²).
    np.save(tmp_path / "big.npy", np.eye(1025))
    doc, _ = run_json(tmp_path / "big.npy")
    assert doc["tensors"][0]["nonnormal"] is None
