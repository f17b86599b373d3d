"""Finding the optimizer state and mapping it to parameter names: each pitfall of
docs/operators.md either works or fails with a clear error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from spectrum_cli.core.errors import InputError
from spectrum_cli.io import optimizer_state as opt_io
from tests.helpers import run_cli, run_json
from tests.optim import models

M = "tests.optim.models"
ARGS = ["--model", f"{M}:small_mlp", "--data", f"{M}:small_data"]


def step(model, opt, n=3):
    x, y = models.small_data()
    for _ in range(n):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def saved(path, model, opt, **extra):
    """Train 3 steps, save {model, optimizer, **extra} to path, return path."""
    step(model, opt)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **extra}, path)
    return path


def sgd_checkpoint(path, **extra):
    model = models.small_mlp()
    return saved(path, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                 **extra)


def test_param_names_and_two_groups(tmp_path):
    model = models.small_mlp()
    decay = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [(n, p) for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 0.01},
                           {"params": no_decay, "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    step(model, opt)
    assert "param_names" in opt.state_dict()["param_groups"][0]
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    doc, result = run_json(tmp_path / "c.pt", *ARGS)
    assert result.exit_code == 0, result.stderr
    assert doc["optimizer"]["named_by"] == "param_names"
    assert [t["name"] for t in doc["optimizer"]["tensors"]] == [n for n, _ in decay + no_decay]
    # L2 decay per group enters H as a diagonal shift: still one symmetric operator.
    assert doc["operators"][0]["n_params"] == 32


def test_groups_with_different_lr_need_params(tmp_path):
    model = models.small_mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.01}], lr=0.1,
                          momentum=0.9)
    step(model, opt)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    bad = run_cli("analyze", tmp_path / "c.pt", *ARGS)
    assert bad.exit_code == 2 and "differ in lr" in bad.stderr and "--params" in bad.stderr
    doc, ok = run_json(tmp_path / "c.pt", *ARGS, "--params", "0.*")
    assert ok.exit_code == 0, ok.stderr
    assert doc["operators"][0]["n_params"] == 20
    assert doc["operators"][0]["settings"]["lr"] == 0.1


def test_frozen_parameters_left_out_and_passed_in(tmp_path):
    model = models.partly_frozen()
    saved(tmp_path / "a.pt", model,
          torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01))
    doc, result = run_json(tmp_path / "a.pt", "--model", f"{M}:partly_frozen", "--data",
                           f"{M}:small_data")
    assert result.exit_code == 0, result.stderr
    assert "0.bias" not in [t["name"] for t in doc["optimizer"]["tensors"]]
    assert doc["operators"][0]["n_params"] == 27
    model = models.partly_frozen()  # the frozen bias passed in:
    saved(tmp_path / "b.pt", model, torch.optim.Adam(model.parameters(), lr=0.01))
    bad = run_cli("analyze", tmp_path / "b.pt", "--model", f"{M}:partly_frozen", "--data",
                  f"{M}:small_data")
    assert bad.exit_code == 2 and "4 parameters but the model has 3" in bad.stderr


def test_tied_weights(tmp_path):
    model = models.tied_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(10, 3)
    for _ in range(3):
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()
    assert len(opt.state_dict()["state"]) == 1  # one shared tensor
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "t.pt")
    doc, result = run_json(tmp_path / "t.pt")
    assert result.exit_code == 0
    assert doc["optimizer"]["tensors"][0]["shape"] == [3, 3]


def test_shape_mismatch_is_refused(tmp_path):
    model, other = models.small_mlp(), models.linear_model()
    opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    other(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["params"] = [0]
    with pytest.raises(InputError, match="has shape .* but the parameter has shape"):
        opt_io.parse(state, {"0.weight": (5, 3)}, ["0.weight"])
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "m.pt")
    bad = run_cli("analyze", tmp_path / "m.pt", *ARGS)
    assert bad.exit_code == 2 and "the model has 4 trainable" in bad.stderr


def test_unsupported_optimizer_is_named(tmp_path):
    """A family no registered rule recognises (Adadelta) is named, with the rules that
    are installed, and refused (RMSprop, refused here before issue 11, now has a rule)."""
    model = models.small_mlp()
    saved(tmp_path / "r.pt", model, torch.optim.Adadelta(model.parameters(), lr=0.01))
    bad = run_cli("analyze", tmp_path / "r.pt")
    text = " ".join(bad.stderr.split())
    assert bad.exit_code == 2 and "Adadelta" in text and "no optimizer rule recognises" in text
    assert "r.pt" in text and "rules installed:" in text
    assert all(name in text for name in ("sgd", "adam", "rmsprop", "adafactor"))
    model = models.small_mlp()
    saved(tmp_path / "ok.pt", model, torch.optim.RMSprop(model.parameters(), lr=0.01))
    doc, ok = run_json(tmp_path / "ok.pt")
    assert ok.exit_code == 0 and doc["optimizer"]["optimizer"] == "rmsprop"


def test_lightning_and_hf_layouts(tmp_path):
    model = models.small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt)
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
                "global_step": 3}, tmp_path / "last.ckpt")
    doc, result = run_json(tmp_path / "last.ckpt", *ARGS)
    assert result.exit_code == 0, result.stderr
    assert doc["optimizer"]["found_in"] == "optimizer_states[0]" and doc["operators"]
    hf = tmp_path / "checkpoint-3"
    hf.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(hf / "model.safetensors"))
    torch.save(opt.state_dict(), hf / "optimizer.pt")
    doc, result = run_json(hf, *ARGS)
    assert result.exit_code == 0, result.stderr
    assert doc["optimizer"]["found_in"].endswith("optimizer.pt") and doc["operators"]


def test_model_and_data_go_together_and_user_code_errors(tmp_path):
    sgd_checkpoint(tmp_path / "c.pt")
    r = run_cli("analyze", tmp_path / "c.pt", "--model", f"{M}:small_mlp")
    assert r.exit_code == 2 and "--model and --data go together" in r.stderr
    r = run_cli("analyze", tmp_path / "c.pt", "--model", "no_such_pkg.x:y", "--data",
                f"{M}:small_data")
    assert r.exit_code == 2 and "cannot import 'no_such_pkg.x'" in r.stderr
    r = run_cli("analyze", tmp_path / "c.pt", "--model", f"{M}:linear_model", "--data",
                f"{M}:small_data")
    assert r.exit_code == 2 and "lacks" in r.stderr


def test_hessian_source_from_spectrum_toml(tmp_path):
    sgd_checkpoint(tmp_path / "c.pt")
    (tmp_path / "spectrum.toml").write_text(
        f'model = "{M}:small_mlp"\ndata = "{M}:small_data"\nloss = "mse"\n')
    from tests.helpers import run_cli

    refused = run_cli("analyze", tmp_path / "c.pt", "--json")  # no consent yet (item 2)
    assert refused.exit_code == 2 and "spectrum trust" in refused.stderr
    assert run_cli("trust", tmp_path / "spectrum.toml").exit_code == 0
    doc, result = run_json(tmp_path / "c.pt")
    assert result.exit_code == 0 and doc["operators"][0]["form"] == "momentum"
    assert doc["optimizer"]["hessian_source"]["model"] == f"{M}:small_mlp"


def test_no_user_code_is_named_by_the_checkpoint(tmp_path):
    """A checkpoint cannot smuggle a model path in: only CLI/config name user code."""
    sgd_checkpoint(tmp_path / "c.pt", spectrum={"model": "os:system"})
    doc, _ = run_json(tmp_path / "c.pt")
    assert doc["operators"] == [] and doc["optimizer"]["hessian_source"] is None
