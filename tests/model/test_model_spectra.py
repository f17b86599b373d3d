"""spectrum model: closed forms on a linear model, autograd oracles on an MLP, SLQ
against the exact spectrum, a BatchNorm/Dropout CNN end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from spectrum_cli.core.hessian import build_problem
from spectrum_cli.model_spectra import (
    ModelOptions, analyze_model, input_jacobians, ntk_gram, sample_inputs, slq_density,
)
from tests.helpers import run_cli
from tests.model import models

M = "tests.model.models"


def problem_for(make, data, loss="mse"):
    net = make()
    return build_problem(net, data(), loss, [n for n, _ in net.named_parameters()]), net


def test_linear_model_closed_forms():
    p, net = problem_for(models.linear, models.linear_data)
    w = net.weight.detach().double().numpy()
    x, _ = models.linear_data()
    x = x.double().numpy()
    rep = analyze_model(p, ModelOptions(samples=models.N))
    # J_f(x) = W for every x.
    s = np.linalg.svd(w, compute_uv=False)
    j = rep.doc["input_jacobian"]
    assert j["jacobian_norm"]["max"] == pytest.approx(s[0], rel=1e-12)
    assert j["jacobian_norm"]["mean"] == pytest.approx(s[0], rel=1e-12)
    p2 = s**2 / np.sum(s**2)
    assert j["jacobian_entropy"]["max"] == pytest.approx(-np.sum(p2 * np.log(p2)), rel=1e-12)
    assert j["attribution_condition"]["max"] == pytest.approx(s[0] / np.median(s), rel=1e-12)
    # NTK = X Xᵀ ⊗ I_C (samples major, outputs minor).
    k = ntk_gram(p, torch.as_tensor(x))
    np.testing.assert_allclose(k, np.kron(x @ x.T, np.eye(models.C)), rtol=1e-12, atol=1e-12)
    # Hessian of the mean squared error over N·C entries: I_C ⊗ 2XᵀX/(N C).
    h = np.kron(np.eye(models.C), 2 * x.T @ x / (models.N * models.C))
    np.testing.assert_allclose(p.dense(), h, rtol=1e-12, atol=1e-14)
    lam = np.linalg.eigvalsh(h)
    hess = rep.doc["hessian"]
    assert hess["lambda_max"] == pytest.approx(lam[-1], rel=1e-12)
    # Linear model: the Hessian is its Gauss-Newton matrix.
    np.testing.assert_allclose(hess["gauss_newton_top"], np.sort(lam)[::-1][:3], rtol=1e-8)
    assert abs(hess["non_gauss_newton_fraction"]) < 1e-8


def test_mlp_against_dense_autograd():
    p, net = problem_for(models.mlp, models.mlp_data)
    net = net.double()
    xs, _ = sample_inputs(p, 10)
    sv, _ = input_jacobians(p, xs)
    for i in range(10):
        jac = torch.autograd.functional.jacobian(lambda v: net(v.unsqueeze(0))[0], xs[i])
        np.testing.assert_allclose(sv[i], np.linalg.svd(jac.numpy(), compute_uv=False),
                                   rtol=1e-10)
    rows = []  # per (sample, output) parameter gradients by plain autograd
    for i in range(10):
        for c in range(3):
            net.zero_grad()
            net(xs[i:i + 1])[0, c].backward()
            rows.append(torch.cat([q.grad.reshape(-1) for q in net.parameters()]).numpy())
    jt = np.array(rows)
    np.testing.assert_allclose(ntk_gram(p, xs), jt @ jt.T, rtol=1e-10, atol=1e-12)


def test_slq_moments_and_flatness_inside_their_error():
    p, _ = problem_for(models.wide_mlp, models.wide_data)
    assert 1500 < p.n < 2500
    lam = np.linalg.eigvalsh(p.dense())
    h = 0.01 * np.abs(lam).max()
    d = slq_density(p, p.n, probes=24, steps=80, seed=0, bandwidth=h, lam_scale=lam.max())
    for j in range(4):
        exact = float(np.mean(lam ** (j + 1)))
        assert abs(d["moments"][j] - exact) <= 4 * d["moments_se"][j], j
    flat = float(np.exp(-lam**2 / (2 * h * h)).mean() / (h * math.sqrt(2 * math.pi)))
    assert abs(d["flatness"] - flat) <= 4 * d["flatness_se"]
    area = np.trapezoid(d["density"], d["grid"])
    assert area == pytest.approx(1.0, abs=0.02)


@pytest.fixture
def bn_checkpoint(tmp_path):
    net = models.bn_cnn()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = models.image_data()
    net.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "cnn.pt")
    return tmp_path / "cnn.pt"


def test_batchnorm_dropout_cnn_end_to_end(bn_checkpoint, tmp_path):
    args = ["model", bn_checkpoint, "--model", f"{M}:bn_cnn", "--data", f"{M}:image_data",
            "--loss", "cross_entropy", "--samples", "8"]
    result = run_cli(*args, "--json", "--report", tmp_path / "m.h5", "--plot",
                     tmp_path / "hd.png", "--entropy-plot", tmp_path / "je.png")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "spectrum.model" and doc["samples"] == 8
    assert doc["input_jacobian"]["shape"] == [4, 36]
    assert doc["ntk"]["shape"] == [32, 32] and doc["ntk"]["kind"] == "exact"
    assert any("eval mode" in n for n in doc["notes"])
    for key in ("flatness", "density", "gauss_newton_top"):
        assert key in doc["hessian"]
    assert set(doc["stability_index"]["profile_sup"]) == {"input_jacobian", "param_jacobian",
                                                          "ntk_sqrt", "hessian"}
    again = json.loads(run_cli(*args, "--json").stdout)  # eval mode: no dropout noise
    assert again["input_jacobian"] == doc["input_jacobian"]
    assert again["ntk"] == doc["ntk"]
    for png in ("hd.png", "je.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    import h5py

    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["schema"] == "spectrum.model"
        assert f["per_sample_jacobian_norm"].shape == (8,)
        assert f["ntk_eigenvalues"].shape == (32,)


def test_sample_checkpoint_summary_and_errors(tmp_path):
    import pathlib

    ckpt = pathlib.Path(__file__).resolve().parents[2] / "sample_checkpoints" / "tiny-mlp" / \
        "checkpoint.pt"
    result = run_cli("model", ckpt, "--samples", "16")
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    for fragment in ("input Jacobian", "NTK Gram", "flatness f_h(0)", "stability index"):
        assert fragment in text
    torch.save({"w": torch.randn(3, 3)}, tmp_path / "x.pt")
    missing = run_cli("model", tmp_path / "x.pt")
    assert missing.exit_code == 2 and "needs --model and --data" in missing.stderr
