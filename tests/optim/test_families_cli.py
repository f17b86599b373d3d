"""Every optimizer family end to end through the CLI: the new diagonal-preconditioned
families give their operator entries; the families with no linearized operator are
recognised and refused with the reason (exit 2), yet analysed without a Hessian source."""

from __future__ import annotations

import pytest
import torch

from spectrum_cli.plugins import optimizers
from tests.helpers import run_cli, run_json
from tests.optim import models

M = "tests.optim.models"
HESS = ("--model", f"{M}:small_mlp", "--data", f"{M}:small_data")


def train_and_save(path, make, steps=4):
    model = models.small_mlp()
    opt = make(model)
    x, y = models.small_data()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    return path


FAMILIES = {
    "rmsprop": (lambda m: torch.optim.RMSprop(m.parameters(), lr=0.01), ["rmsprop"]),
    "rmsprop-momentum": (lambda m: torch.optim.RMSprop(m.parameters(), lr=0.01, momentum=0.9,
                                                       centered=True), ["rmsprop-momentum"]),
    "adagrad": (lambda m: torch.optim.Adagrad(m.parameters(), lr=0.1, lr_decay=0.01),
                ["adagrad"]),
    "adamax": (lambda m: torch.optim.Adamax(m.parameters(), lr=0.01), ["adamax"]),
    "nadam": (lambda m: torch.optim.NAdam(m.parameters(), lr=0.01), ["nadam"]),
    "radam": (lambda m: torch.optim.RAdam(m.parameters(), lr=0.01), ["radam-unrectified"]),
    "adafactor": (lambda m: torch.optim.Adafactor(m.parameters(), lr=0.01), ["adafactor"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_end_to_end(tmp_path, family):
    make, forms = FAMILIES[family]
    path = train_and_save(tmp_path / "c.pt", make)
    doc, result = run_json(path, *HESS)
    assert result.exit_code == 0, result.stderr
    assert [op["form"] for op in doc["operators"]] == forms
    op = doc["operators"][0]
    assert op["n_params"] == 32 and op["metrics"]["spectral_radius"] > 0
    assert op["metrics"]["eos_ratio_preconditioned"] > 0
    assert "kappa_V_euclidean" in op["metrics"]
    if op["coordinates"].startswith("P-weighted"):
        assert op["details"]["norm"].startswith("P-weighted") and op["details"]["kappa_D"] >= 1
    assert doc["optimizer"]["optimizer"] == family.split("-")[0]
    assert "preconditioner_spread" in doc["optimizer"]
    table = run_cli("analyze", path, *HESS)
    assert table.exit_code == 0 and "update operators" in table.stdout


def test_adafactor_notes_say_what_was_frozen(tmp_path):
    path = train_and_save(tmp_path / "a.pt", lambda m: torch.optim.Adafactor(
        m.parameters(), lr=0.01))
    doc, _ = run_json(path, *HESS)
    note = " ".join(n for n in doc["optimizer"]["notes"] if n.startswith("Adafactor"))
    assert "frozen" in note and "RMS(θ)" in note and "clip" in note
    assert "gradient of the Hessian source" in note
    assert set(doc["operators"][0]["settings"]["clip_factors"]) == {
        "0.weight", "0.bias", "2.weight", "2.bias"}


def lion_state(model):
    return {"state": {i: {"exp_avg": torch.randn_like(p)}
                      for i, p in enumerate(model.parameters())},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0,
                              "params": list(range(4))}]}


def muon_state(model):
    weights = [(n, p) for n, p in model.named_parameters() if p.ndim == 2]
    opt = torch.optim.Muon(weights, lr=0.02)
    x, y = models.small_data()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    return opt.state_dict()


def sparse_adam_state(model):
    return torch.optim.SparseAdam(model.parameters()).state_dict()


def real_state(cls, **kw):
    def make(model):
        opt = cls(model.parameters(), **kw)
        x, y = models.small_data()

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        return opt.state_dict()
    return make


REFUSED = {"Lion": (lion_state, "sign(·): not differentiable"),
           "Muon": (muon_state, "orthogonalizes the momentum"),
           "LBFGS": (real_state(torch.optim.LBFGS, max_iter=3), "curvature history"),
           "Rprop": (real_state(torch.optim.Rprop), "sign(g)"),
           "SparseAdam": (sparse_adam_state, "rows a sparse gradient touches")}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_families_say_why(tmp_path, name):
    build, why = REFUSED[name]
    model = models.small_mlp()
    state = build(model)
    torch.save({"model": model.state_dict(), "optimizer": state}, tmp_path / "c.pt")
    bad = run_cli("analyze", tmp_path / "c.pt", *HESS)
    text = " ".join(bad.stderr.split())
    assert bad.exit_code == 2, bad.stderr
    assert why in text and ("no linearized operator exists" in text
                            or "no quasi-static linearized operator exists" in text)
    assert "still analysed without --model/--data" in text and "c.pt" in text
    assert "Traceback" not in bad.stderr
    doc, ok = run_json(tmp_path / "c.pt")  # the weights are still analysed
    assert ok.exit_code == 0, ok.stderr
    assert doc["tensors"] and doc["operators"] == []
    assert any(why in n for n in doc["optimizer"]["notes"])


def test_every_builtin_rule_is_registered_like_a_plugin():
    names = set(optimizers.names())
    assert {"sgd", "adam", "rmsprop", "adagrad", "adamax", "nadam", "radam", "adafactor",
            "lion", "muon", "lbfgs", "rprop", "sparse-adam"} <= names
    for rule in optimizers.loaded().values():
        assert rule.name and rule.description
