"""Snapshots saved before the optimizer's first step (issue 10, item 15).

SGD keeps no momentum buffer until its first step, but heavy-ball's linearized operator
needs only H, lr and the hyper-parameters: the analysis must work and agree with the
same analysis one step later. Adam before its first step has no second moment, so no
preconditioner: that must be said plainly."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import run_cli, run_json
from tests.optim import models

M = "tests.optim.models"
HESS = ("--model", f"{M}:small_mlp", "--data", f"{M}:small_data")


def snapshot(path, model, opt):
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)


def one_step(model, opt):
    x, y = models.small_data()
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.0)])
def test_sgd_before_first_step_matches_after_one_step(tmp_path, kw):
    model = models.small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, **kw)
    assert opt.state_dict()["state"] == {}  # a real pre-step snapshot
    snapshot(tmp_path / "before.pt", model, opt)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    one_step(model, opt)
    model.load_state_dict(weights)  # same weights, now with momentum buffers
    snapshot(tmp_path / "after.pt", model, opt)

    before, r1 = run_json(tmp_path / "before.pt", *HESS, "--eps", "1e-3")
    assert r1.exit_code == 0, r1.stderr
    after, r2 = run_json(tmp_path / "after.pt", *HESS, "--eps", "1e-3")
    assert r2.exit_code == 0, r2.stderr
    (a,), (b,) = before["operators"], after["operators"]
    assert a["n_params"] == b["n_params"] == 32 and a["form"] == b["form"]
    for key, value in b["metrics"].items():
        assert a["metrics"][key] == value, key  # same H, same hyper-parameters: same bits
    assert a["details"]["pseudospectral_radius"] == b["details"]["pseudospectral_radius"]
    assert any("no momentum buffers" in n for n in before["optimizer"]["notes"])


def test_sgd_before_first_step_respects_params(tmp_path):
    model = models.small_mlp()
    snapshot(tmp_path / "s.pt", model, torch.optim.SGD(model.parameters(), lr=0.1,
                                                       momentum=0.9))
    doc, result = run_json(tmp_path / "s.pt", *HESS, "--params", "0.*")
    assert result.exit_code == 0, result.stderr
    assert doc["operators"][0]["n_params"] == 20


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=0.01),
                                  lambda p: torch.optim.AdamW(p, lr=0.01)])
def test_adam_before_first_step_says_why(tmp_path, make):
    model = models.small_mlp()
    snapshot(tmp_path / "a.pt", model, make(model.parameters()))
    bad = run_cli("analyze", tmp_path / "a.pt", *HESS)
    assert bad.exit_code == 2, bad.stderr
    assert "saved before its first step has no second-moment estimate" in bad.stderr
    assert "preconditioner is undefined" in bad.stderr
    assert "no optimizer-tracked parameter" not in bad.stderr
    doc, ok = run_json(tmp_path / "a.pt")  # without a Hessian source: a note
    assert ok.exit_code == 0, ok.stderr
    assert any("no second-moment estimate" in n for n in doc["optimizer"]["notes"])
