"""Real torch.optim runs: the operator spectrum builds from a saved snapshot matches
(a) PyTorch's own next step, exactly, on a quadratic loss and (b) a dense float64
operator built independently from the live optimizer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from spectrum_cli.core.eigen import eigenstructure
from spectrum_cli.core.hessian import build_problem
from spectrum_cli.core.transient import power_norms
from spectrum_cli.core.update_blocks import sgd_form
from tests.optim.oracles import dense_operator
from spectrum_cli.io import optimizer_state as opt_io
from tests.helpers import run_cli, run_json
from tests.optim import models

M = "tests.optim.models"


def train(model, opt, data, steps):
    x, y = data
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors]).double().numpy()


@pytest.mark.parametrize("kw", [
    dict(momentum=0.9),
    dict(momentum=0.8, dampening=0.3),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, weight_decay=0.05),
    dict(momentum=0.0),
])
def test_sgd_operator_predicts_pytorchs_next_step_exactly(tmp_path, kw):
    torch.set_default_dtype(torch.float64)
    try:
        model = models.linear_model().double()
        x, y = models.linear_data()
        x, y = x.double(), y.double()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, **kw)
        train(model, opt, (x, y), 3)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()},
                   tmp_path / "c.pt")
        saved = torch.load(tmp_path / "c.pt")
        snap = opt_io.parse(saved["optimizer"])
        hyper = opt_io.group_hyper(snap, 0)
        theta0 = flat(model.parameters())
        buf0 = snap.params[0].moments.get("momentum_buffer", np.zeros(1)).ravel()
        train(model, opt, (x, y), 1)  # PyTorch's own step
        theta1 = flat(model.parameters())
        buf1 = flat([opt.state[p]["momentum_buffer"] for p in model.parameters()]) \
            if hyper["momentum"] else None
        problem = build_problem(models.linear_model(), (x, y), "mse", ["weight"])
        h = problem.dense() + hyper["weight_decay"] * np.eye(4)
        # Fixed point of the regularized quadratic: (H + wd) θ_f = H_loss θ*.
        xt, yt = x.numpy(), y.numpy().ravel()
        theta_f = np.linalg.solve(h, 2 * xt.T @ yt / len(yt))
        form = sgd_form(hyper["lr"], hyper["momentum"], hyper["dampening"], hyper["nesterov"])
        j = dense_operator(form, h)
        if hyper["momentum"]:
            got = j @ np.r_[theta0 - theta_f, buf0]
            np.testing.assert_allclose(got, np.r_[theta1 - theta_f, buf1], atol=1e-12)
        else:
            np.testing.assert_allclose(j @ (theta0 - theta_f), theta1 - theta_f, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def independent_hessian(model_fn, names, data):
    """Dense H by torch.autograd.functional.hessian (not torch.func), float64."""
    model = model_fn().double()
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    x, y = data
    x, y = x.double(), y.double()

    def loss(flat_theta):
        chunks = torch.split(flat_theta, sizes)
        current = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        out = torch.func.functional_call(model, current, (x,))
        return torch.nn.functional.mse_loss(out, y)

    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, theta).numpy(), model


def save_run(tmp_path, make_opt, steps=25):
    torch.manual_seed(0)
    model = models.small_mlp()
    opt = make_opt(model)
    train(model, opt, models.small_data(), steps)
    path = tmp_path / "run.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": steps},
               path)
    return path, model, opt


def test_sgd_momentum_checkpoint_matches_dense_operator(tmp_path):
    path, model, opt = save_run(tmp_path, lambda m: torch.optim.SGD(
        m.parameters(), lr=0.1, momentum=0.9))
    doc, result = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_data",
                           "--eps", "1e-3")
    assert result.exit_code == 0, result.stderr
    (op,) = doc["operators"]
    assert op["optimizer"] == "sgd" and op["form"] == "momentum"
    assert op["coordinates"] == "(θ, buf)" and op["n_params"] == 32
    names = [n for n, _ in model.named_parameters()]
    # Independent oracle: H by autograd, J dense from the live optimizer's hyper-params.
    sd = model.state_dict()
    h, _ = independent_hessian(lambda: _loaded(sd), names, models.small_data())
    g = opt.param_groups[0]
    lr, mu = g["lr"], g["momentum"]
    n = h.shape[0]
    j = np.block([[np.eye(n) - lr * h, -lr * mu * np.eye(n)], [h, mu * np.eye(n)]])
    dense = eigenstructure(j)
    m = op["metrics"]
    assert m["spectral_radius"] == pytest.approx(dense.spectral_radius, rel=1e-9)
    assert dense.kappa_V_well_defined
    assert m["kappa_V"] == pytest.approx(dense.kappa_V, rel=1e-6)
    pn = power_norms(j, 200)
    assert m["max_power_norm"] == pytest.approx(pn.max_power_norm, rel=1e-9)
    lam = np.linalg.eigvalsh(h)
    assert m["hessian_lambda_max"] == pytest.approx(lam[-1], rel=1e-9)
    assert m["hessian_lambda_min"] == pytest.approx(lam[0], rel=1e-9, abs=1e-12)
    assert m["eos_ratio_gd"] == pytest.approx(lr * lam[-1] / 2, rel=1e-9)
    assert m["eos_ratio_momentum"] == pytest.approx(lr * lam[-1] / (2 * (1 + mu)), rel=1e-9)
    for key in ("transient_window", "kreiss_lower_bound", "argmax_power"):
        assert key in m
    assert op["details"]["pseudospectral_radius"][0]["kind"] == "exact"
    assert doc["optimizer"]["named_by"] == "model"


def _loaded(sd):
    model = models.small_mlp()
    model.load_state_dict(sd)
    return model


def test_adamw_checkpoint_matches_dense_operator(tmp_path):
    path, model, opt = save_run(tmp_path, lambda m: torch.optim.AdamW(
        m.parameters(), lr=0.02, weight_decay=0.1))
    doc, result = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_data")
    assert result.exit_code == 0, result.stderr
    aug, red = doc["operators"]
    assert (aug["form"], red["form"]) == ("adam-augmented", "adam-reduced")
    assert aug["optimizer"] == "adamw" and aug["step"] == 25
    names = [n for n, _ in model.named_parameters()]
    h, _ = independent_hessian(lambda: _loaded(model.state_dict()), names,
                               models.small_data())
    g = opt.param_groups[0]
    lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
    t = int(opt.state[next(iter(model.parameters()))]["step"])
    v = flat([opt.state[p]["exp_avg_sq"] for p in model.parameters()])
    p_diag = np.sqrt(v / (1 - b2**t)) + eps
    c = lr / (1 - b1**t)
    n = h.shape[0]
    pinv = np.diag(1 / p_diag)
    j = np.block([[(1 - lr * wd) * np.eye(n) - c * (1 - b1) * pinv @ h, -c * b1 * pinv],
                  [(1 - b1) * h, b1 * np.eye(n)]])
    dense = eigenstructure(j)
    assert aug["metrics"]["spectral_radius"] == pytest.approx(dense.spectral_radius, rel=1e-9)
    assert dense.kappa_V_well_defined
    assert aug["metrics"]["kappa_V_euclidean"] == pytest.approx(dense.kappa_V, rel=1e-6)
    d = np.diag(np.r_[np.sqrt(p_diag), 1 / np.sqrt(p_diag)])
    weighted = eigenstructure(d @ j @ np.linalg.inv(d))
    assert aug["metrics"]["kappa_V"] == pytest.approx(weighted.kappa_V, rel=1e-6)
    a = (1 - lr * wd) * np.eye(n) - c * pinv @ h
    assert red["metrics"]["spectral_radius"] == pytest.approx(
        np.max(np.abs(np.linalg.eigvals(a))), rel=1e-9)
    k = np.diag(p_diag**-0.5) @ h @ np.diag(p_diag**-0.5)
    kmax = np.linalg.eigvalsh((k + k.T) / 2)[-1]
    assert aug["metrics"]["eos_ratio_adam"] == pytest.approx(
        c * (1 - b1) * kmax / (2 * (1 + b1)), rel=1e-9)
    comm = pinv @ h - h @ pinv
    assert aug["metrics"]["commutator_norm_relative"] == pytest.approx(
        np.linalg.norm(comm) / (np.linalg.norm(pinv) * np.linalg.norm(h)), rel=1e-9)
    assert aug["metrics"]["preconditioner_spread"] == pytest.approx(
        math.sqrt(p_diag.max() / p_diag.min()), rel=1e-12)


def test_next_step_convention_and_amsgrad(tmp_path):
    path, _, _ = save_run(tmp_path, lambda m: torch.optim.Adam(
        m.parameters(), lr=0.01, amsgrad=True))
    one, _ = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_data")
    two, _ = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_data",
                      "--step-convention", "next")
    assert one["operators"][0]["hessian"]["step_used"] == 25
    assert two["operators"][0]["hessian"]["step_used"] == 26
    assert one["operators"][0]["metrics"]["spectral_radius"] != two["operators"][0][
        "metrics"]["spectral_radius"]


def test_batches_and_custom_loss(tmp_path):
    path, _, _ = save_run(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1,
                                                              momentum=0.9))
    one, _ = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_data")
    two, result = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_batches")
    assert result.exit_code == 0
    # Equal halves: the mean of the two batch means is the full mean.
    assert two["operators"][0]["metrics"]["hessian_lambda_max"] == pytest.approx(
        one["operators"][0]["metrics"]["hessian_lambda_max"], rel=1e-12)
    bad = run_cli("analyze", path, "--model", f"{M}:small_mlp", "--data",
                  f"{M}:small_data", "--loss", f"{M}:bad_loss")
    assert bad.exit_code == 0  # |x| is twice differentiable almost everywhere
    nope = run_cli("analyze", path, "--model", f"{M}:small_mlp", "--data",
                   f"{M}:small_data", "--loss", f"{M}:missing")
    assert nope.exit_code == 2 and "has no attribute 'missing'" in nope.stderr


def test_without_a_hessian_source_optimizer_only(tmp_path):
    path, _, _ = save_run(tmp_path, lambda m: torch.optim.Adam(m.parameters(), lr=0.01))
    doc, result = run_json(path)
    assert result.exit_code == 0
    assert doc["operators"] == []
    o = doc["optimizer"]
    assert o["optimizer"] == "adam" and o["step"] == 25 and "preconditioner_spread" in o
    assert o["named_by"] == "state_dict order"
    row = o["tensors"][0]
    assert {"exp_avg_norm", "exp_avg_sq_norm", "effective_step_min"} <= set(row)
    assert any("would add" in note for note in o["notes"])
    table = " ".join(run_cli("analyze", path).stdout.split())  # undo the 80-column wrap
    assert "optimizer adam" in table and "would add" in table


def test_matrix_free_path_reports_bounds_and_unavailable(tmp_path):
    path, _, _ = save_run(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1,
                                                              momentum=0.9))
    dense, _ = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_data")
    free, result = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_data",
                            "--dense-max", "5")
    assert result.exit_code == 0, result.stderr
    d, f = dense["operators"][0], free["operators"][0]
    assert f["hessian"]["method"].startswith("lanczos")
    assert abs(f["metrics"]["hessian_lambda_max"] - d["metrics"]["hessian_lambda_max"]) <= \
        f["accuracy"]["hessian_lambda_max"]["error_bar"] + 1e-12
    assert f["metrics"]["spectral_radius"] == pytest.approx(d["metrics"]["spectral_radius"],
                                                            rel=1e-7)
    assert "kappa_V" in f["unavailable"] and "kappa_V" not in f["metrics"]
    assert f["metrics"]["max_power_norm"] <= d["metrics"]["max_power_norm"] * (1 + 1e-9)


def test_report_round_trip_with_operators(tmp_path):
    path, _, _ = save_run(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1,
                                                              momentum=0.9))
    report = tmp_path / "r.h5"
    doc, _ = run_json(path, "--model", f"{M}:small_mlp", "--data", f"{M}:small_data",
                      "--report", report)
    back = json.loads(run_cli("report", "show", report, "--json").stdout)
    assert back["operators"] == json.loads(json.dumps(doc["operators"]))
    assert back["optimizer"]["optimizer"] == "sgd"
    import h5py

    with h5py.File(report) as fh:
        g = fh["operators"][next(iter(fh["operators"]))]
        assert g["power_norms"].shape == (200,) and g["hessian_eigenvalues"].shape == (32,)


def test_fail_on_operator_metrics(tmp_path):
    path, _, _ = save_run(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1,
                                                              momentum=0.9))
    args = ["--model", f"{M}:small_mlp", "--data", f"{M}:small_data"]
    hit = run_cli("analyze", path, *args, "--fail-on", "eos_ratio_gd>0@optimizer:*")
    assert hit.exit_code == 1 and "optimizer:momentum" in hit.stdout
    assert run_cli("analyze", path, *args, "--fail-on", "eos_ratio_gd>1e9").exit_code == 0


def test_matrix_free_adam_commutator_estimate_within_its_bar(tmp_path):
    path, _, _ = save_run(tmp_path, lambda m: torch.optim.Adam(m.parameters(), lr=0.02))
    args = ["--model", f"{M}:small_mlp", "--data", f"{M}:small_data"]
    dense, _ = run_json(path, *args)
    free, result = run_json(path, *args, "--dense-max", "5")
    assert result.exit_code == 0, result.stderr
    exact = dense["operators"][0]["metrics"]["commutator_norm_relative"]
    est = free["operators"][0]["metrics"]["commutator_norm_relative"]
    bar = free["operators"][0]["accuracy"]["commutator_norm_relative"]["error_bar"]
    assert 0 < bar < exact and abs(est - exact) <= bar
    assert free["operators"][0]["metrics"]["spectral_radius"] == pytest.approx(
        dense["operators"][0]["metrics"]["spectral_radius"], rel=1e-6)


def test_scaled_coordinates_from_the_cli(tmp_path):
    path, _, _ = save_run(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=0.1,
                                                              momentum=0.9))
    args = ["--model", f"{M}:small_mlp", "--data", f"{M}:small_data"]
    stored, _ = run_json(path, *args)
    scaled, _ = run_json(path, *args, "--coordinates", "scaled")
    a, b = stored["operators"][0], scaled["operators"][0]
    assert (a["coordinates"], b["coordinates"]) == ("(θ, buf)", "(θ, lr·buf)")
    assert b["metrics"]["spectral_radius"] == pytest.approx(a["metrics"]["spectral_radius"],
                                                            rel=1e-12)
    assert b["metrics"]["kappa_V"] != pytest.approx(a["metrics"]["kappa_V"], rel=1e-3)
    assert run_cli("analyze", path, *args, "--coordinates", "polar").exit_code == 2
