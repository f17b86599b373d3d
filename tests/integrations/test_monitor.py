"""SpectrumMonitor: in-memory weights measured as `spectrum analyze`/`batch` measure files.

Oracles: numpy's float64 SVD of the same weights; the linearized heavy-ball operator
J = [[I - lr H, -lr mu I], [H, mu I]] built from a torch.autograd Hessian and solved with
numpy's eigvals; and the batch trajectory of the same weights saved as a checkpoint.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from spectrum_cli.core.errors import UsageError
from tests.helpers import with_spectrum

torch = pytest.importorskip("torch")

from spectrum_cli.integrations import SpectrumMonitor  # noqa: E402


def mlp(seed: int = 0) -> "torch.nn.Module":
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def data(seed: int = 1) -> tuple["torch.Tensor", "torch.Tensor"]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(24, 5, generator=g), torch.randn(24, 3, generator=g)


def trained(optimizer: str = "sgd", steps: int = 3):
    model, (x, y) = mlp(), data()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model, opt, (x, y)


def sv(model: "torch.nn.Module") -> dict[str, np.ndarray]:
    return {n: np.linalg.svd(p.detach().double().numpy(), compute_uv=False)
            for n, p in model.named_parameters() if p.ndim == 2}


def test_tensor_indicators_match_a_float64_svd_of_the_weights():
    model, _, _ = trained()
    m = SpectrumMonitor().measure(model, 3)
    s = sv(model)
    kappa = {n: v[0] / v[-1] for n, v in s.items()}

    def entropy(v):
        p = v**2 / np.sum(v**2)
        return -np.sum(p * np.log(p))

    ind = m.indicators
    assert ind["tensors.max_kappa"] == pytest.approx(max(kappa.values()), rel=1e-12)
    assert ind["tensors.max_sigma_max"] == pytest.approx(max(v[0] for v in s.values()),
                                                         rel=1e-12)
    assert ind["tensors.min_stable_rank"] == pytest.approx(
        min(np.sum(v**2) / v[0] ** 2 for v in s.values()), rel=1e-12)
    assert ind["tensors.mean_spectral_entropy"] == pytest.approx(
        np.mean([entropy(v) for v in s.values()]), rel=1e-12)
    # Weights only and no loss: batch's per-tensor κ of the largest tensors.
    for name, k in kappa.items():
        assert ind[f"tensor.kappa[{name}]"] == pytest.approx(k, rel=1e-12)
    assert m.step == 3 and not m.failed and m.violations == ()
    assert sorted(m.singular_values) == sorted(s)
    np.testing.assert_allclose(m.singular_values["0.weight"], s["0.weight"], rtol=1e-12)
    assert {t["name"] for t in m.document["skipped"]} == {"0.bias", "2.bias"}


def test_the_same_indicators_as_batch_on_the_saved_checkpoint(tmp_path):
    import spectrum_cli

    model, _, _ = trained()
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "step-3.pt")
    traj = spectrum_cli.trajectory(run, use_config=False)
    from_file = traj.records[0]["indicators"]
    live = SpectrumMonitor().measure(model, 3).indicators
    # The monitor's own count of NaN/Inf matrices aside (batch records no such key).
    from spectrum_cli.integrations.monitor import NONFINITE

    assert live.pop(NONFINITE) == 0.0
    from_file.pop(NONFINITE, None)
    assert live.keys() == from_file.keys()
    for k in live:
        assert live[k] == from_file[k], k  # the same float32 weights, the same float64 SVD


def test_numpy_state_dict_with_prescribed_spectra(rng):
    a = with_spectrum(rng, (12, 8), np.geomspace(10.0, 0.1, 8))    # κ = 100
    b = with_spectrum(rng, (6, 6), np.linspace(3.0, 1.0, 6))       # κ = 3
    m = SpectrumMonitor(square="none").measure({"a": a, "b": b, "bias": np.ones(4)}, 0)
    assert m.indicators["tensors.max_kappa"] == pytest.approx(100.0, rel=1e-10)
    assert m.indicators["tensor.kappa[b]"] == pytest.approx(3.0, rel=1e-10)
    assert m.indicators["tensors.max_sigma_max"] == pytest.approx(10.0, rel=1e-12)


def test_numpy_weights_do_not_import_torch(tmp_path):
    code = ("import sys, numpy as np\n"
            "from spectrum_cli.integrations import SpectrumMonitor\n"
            "m = SpectrumMonitor().measure({'w': np.diag([4.0, 2.0])}, 1)\n"
            "print(m.indicators['tensors.max_kappa'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.split()
    assert out == ["2.0", "False"]


def test_include_exclude_select_the_tensors():
    model, _, _ = trained()
    kappa = {n: v[0] / v[-1] for n, v in sv(model).items()}
    only = SpectrumMonitor(include=["0.*"]).measure(model, 1)
    assert only.indicators["tensors.max_kappa"] == pytest.approx(kappa["0.weight"], rel=1e-12)
    assert [t["name"] for t in only.document["tensors"]] == ["0.weight"]
    rest = SpectrumMonitor(exclude=["re:^0\\."]).measure(model, 1)
    assert [t["name"] for t in rest.document["tensors"]] == ["2.weight"]


def test_indicator_selection_by_name_glob_and_regex():
    model, _, _ = trained()
    m = SpectrumMonitor(indicators=["tensors.max_kappa", "re:^tensor\\.kappa\\[2\\."]
                        ).measure(model, 1)
    assert sorted(m.indicators) == ["tensor.kappa[2.weight]", "tensors.max_kappa"]
    g = SpectrumMonitor(indicators="tensors.min_*").measure(model, 1)
    assert sorted(g.indicators) == ["tensors.min_stable_rank"]


def test_fail_on_uses_the_command_line_conditions():
    model, _, _ = trained()
    kappa = {n: v[0] / v[-1] for n, v in sv(model).items()}
    between = math.sqrt(kappa["0.weight"] * kappa["2.weight"])
    worse = max(kappa, key=kappa.get)
    m = SpectrumMonitor(fail_on=[f"kappa>{between!r}"]).measure(model, 7)
    assert m.failed and [v.tensor for v in m.violations] == [worse]
    assert m.violations[0].value == pytest.approx(kappa[worse], rel=1e-12)
    assert m.document["fail_on"]["violations"][0]["tensor"] == worse
    assert f"step 7: 1 fail_on violation(s): {worse}" in m.message()
    other = "2.weight" if worse == "0.weight" else "0.weight"
    scoped = SpectrumMonitor(fail_on=[f"kappa>0@{other[0]}.*"])
    assert [v.tensor for v in scoped.measure(model, 7).violations] == [other]
    assert not SpectrumMonitor(fail_on=["kappa>1e12"]).measure(model, 7).failed


def test_tied_weights_are_measured_once():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    m = SpectrumMonitor().measure(torch.nn.ModuleDict({"a": a, "b": b}), 0)
    assert [t["name"] for t in m.document["tensors"]] == ["a.weight"]
    assert m.document["skipped"] == [{"name": "b.weight", "shape": [4, 4], "dtype": "float32",
                                      "reason": "the same tensor as 'a.weight' (tied weights)"}]


def test_bfloat16_weights_are_upcast_exactly():
    w = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.bfloat16)  # exact in bf16
    m = SpectrumMonitor().measure({"w": w}, 0)
    assert m.indicators["tensors.max_kappa"] == 6.0
    assert m.document["tensors"][0]["dtype"] == "bfloat16"


def heavy_ball_oracle(model, x, y, lr, mu):
    """ρ(J) and λ(H) of SGD's linearized update, independently: torch.autograd's
    float64 Hessian of the mean-squared loss in the flat parameters, J built by hand."""
    from torch.func import functional_call

    params = {n: p.detach().double() for n, p in model.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    shadow = mlp().double()

    def loss(flat):
        chunks = torch.split(flat, sizes)
        current = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return torch.nn.functional.mse_loss(functional_call(shadow, current, (x.double(),)),
                                            y.double())

    theta = torch.cat([p.reshape(-1) for p in params.values()])
    h = torch.autograd.functional.hessian(loss, theta).numpy()
    h = (h + h.T) / 2
    n = h.shape[0]
    eye = np.eye(n)
    j = np.block([[eye - lr * h, -lr * mu * eye], [h, mu * eye]])
    return float(np.max(np.abs(np.linalg.eigvals(j)))), np.linalg.eigvalsh(h)


def test_operator_indicators_match_a_hand_built_heavy_ball_operator():
    model, opt, (x, y) = trained("sgd")
    m = SpectrumMonitor(loss="mse").measure(model, 3, optimizer=opt, batch=(x, y))
    rho, lam = heavy_ball_oracle(model, x, y, lr=0.2, mu=0.9)
    ind = m.indicators
    assert ind["momentum.spectral_radius"] == pytest.approx(rho, rel=1e-9)
    assert ind["optimizer.hessian_lambda_max"] == pytest.approx(lam[-1], rel=1e-9)
    assert ind["optimizer.hessian_lambda_min"] == pytest.approx(lam[0], rel=1e-9, abs=1e-12)
    assert ind["optimizer.eos_ratio_gd"] == pytest.approx(0.2 * lam[-1] / 2, rel=1e-9)
    assert ind["optimizer.eos_ratio_momentum"] == pytest.approx(
        0.2 * lam[-1] / (2 * 1.9), rel=1e-9)


def test_operator_indicators_equal_analyze_with_model_and_data(tmp_path, monkeypatch):
    """The live path and `spectrum analyze CKPT --model --data` give the same numbers."""
    import spectrum_cli

    model, opt, (x, y) = trained("adam")
    (tmp_path / "livemod.py").write_text(
        "import torch\n"
        "from tests.integrations.test_monitor import mlp, data\n"
        "def build():\n    return mlp()\n"
        "def batch():\n    return data()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, ckpt)
    live = SpectrumMonitor(loss="mse").measure(model, 3, optimizer=opt, batch=(x, y))
    from spectrum_cli.runs.indicators import indicators

    cli = indicators(spectrum_cli.analyze(ckpt, model="livemod:build", data="livemod:batch",
                                          use_config=False).document)
    assert "adam-augmented.spectral_radius" in live.indicators
    from spectrum_cli.integrations.monitor import NONFINITE

    assert live.indicators[NONFINITE] == 0.0
    cli.pop(NONFINITE, None)
    assert live.indicators.keys() - {NONFINITE} == cli.keys()
    for k, v in cli.items():
        assert live.indicators[k] == pytest.approx(v, rel=1e-10, abs=1e-13), k


def test_operators_leave_the_training_model_alone():
    model, opt, (x, y) = trained("adam")
    model.train()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    SpectrumMonitor(loss="mse", params=["2.*"]).measure(model, 3, optimizer=opt,
                                                       batch=(x, y))
    assert model.training
    for n, p in model.state_dict().items():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_operator_condition_and_params_selection():
    model, opt, (x, y) = trained("sgd")
    m = SpectrumMonitor(loss="mse", params=["2.weight"], fail_on=["hessian_lambda_max>0"]
                        ).measure(model, 3, optimizer=opt, batch=(x, y))
    assert m.document["operators"][0]["n_params"] == 21
    assert [v.tensor for v in m.violations] == ["optimizer:momentum"]


def test_the_held_out_batch_and_a_callable_loss():
    model, opt, (x, y) = trained("sgd")
    mon = SpectrumMonitor(loss=lambda out, t: ((out - t) ** 2).mean(), batch=(x, y))
    a = mon.measure(model, 3, optimizer=opt).indicators
    b = SpectrumMonitor(loss="mse").measure(model, 3, optimizer=opt, batch=(x, y)).indicators
    assert a["momentum.spectral_radius"] == pytest.approx(b["momentum.spectral_radius"],
                                                          rel=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "m:f"}, "unknown or file-only setting"),
    ({"jobs": 2}, "unknown or file-only setting"),
    ({"fail_on": ["kappa>>3"]}, "not a number"),
    ({"fail_on": ["kappa"]}, "cannot parse"),
    ({"fail_on": ["kapa>3"]}, "unknown metric"),
    ({"loss": "hinge"}, "loss: expected"),
    ({"square": "some"}, "square"),
])
def test_bad_settings_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        SpectrumMonitor(**kwargs)


def test_bad_calls_are_usage_errors():
    model, opt, (x, y) = trained("sgd")
    mon = SpectrumMonitor(loss="mse")
    with pytest.raises(UsageError, match="step"):
        mon.measure(model, -1)
    with pytest.raises(UsageError, match="need a batch"):
        mon.measure(model, 1, optimizer=opt)
    with pytest.raises(UsageError, match="not a state dict"):
        mon.measure(model.state_dict(), 1, optimizer=opt, batch=(x, y))
    with pytest.raises(UsageError, match="not the model's"):
        mon.measure(mlp(5), 1, optimizer=opt, batch=(x, y))
    with pytest.raises(UsageError, match="expected a torch.nn.Module or a mapping"):
        mon.measure([1, 2], 1)


def test_a_nan_weight_violates_nonfinite_count():
    w = np.eye(3)
    w[1, 2] = np.nan
    m = SpectrumMonitor(fail_on=["nonfinite_count>0"]).measure({"ok": np.eye(2), "bad": w}, 9)
    assert [(v.tensor, v.value) for v in m.violations] == [("bad", 1.0)]
    assert m.indicators["tensors.max_kappa"] == 1.0  # the finite matrix only


# -- user mistakes, non-finite weights, failures while measuring, threads -------------


def test_a_selection_of_no_matrix_is_refused_with_the_names_there_are():
    from spectrum_cli.core.errors import ExitCode
    from spectrum_cli.integrations.monitor import NothingMatchedError

    model, _, _ = trained()
    mon = SpectrumMonitor(include=["1.*"], fail_on=["kappa>1e4"])
    for call in (lambda: mon.check(model), lambda: mon.measure(model, 1)):
        with pytest.raises(NothingMatchedError) as err:
            call()
        assert err.value.exit_code == ExitCode.NOTHING_MATCHED
        assert str(err.value) == (
            "spectrum: no matrix to measure (include=['1.*']); of the 4 tensor(s) the "
            "model holds: not selected (include/exclude): 0.weight, 0.bias, 2.weight, "
            "2.bias")
    # Matrices matched but none measurable: refused as well, saying why.
    with pytest.raises(NothingMatchedError, match=r"1-D: 0\.bias, 2\.bias"):
        SpectrumMonitor(include=["*.bias"]).measure(model, 1)
    assert SpectrumMonitor(include=["0.*"]).check(model) == ["0.weight"]


def test_an_inf_weight_is_counted_and_named():
    w = np.eye(3)
    w[0, 1] = np.inf
    m = SpectrumMonitor().measure({"ok": np.diag([4.0, 1.0]), "bad": w}, 3)
    assert m.indicators["tensors.nonfinite_tensors"] == 1.0
    assert m.indicators["tensors.max_kappa"] == 4.0  # the finite matrix only
    assert m.warnings == ("1 matrix(es) hold NaN/Inf entries, their spectra not computed "
                          "(the tensors.* indicators are over the finite ones only): bad "
                          "(0 NaN and 1 Inf entries: spectra not computed)",)
    fine = SpectrumMonitor().measure({"ok": np.diag([4.0, 1.0])}, 3)
    assert fine.indicators["tensors.nonfinite_tensors"] == 0.0 and fine.warnings == ()


def test_operator_failures_are_warnings_and_the_tensors_are_still_measured():
    model, opt, (x, y) = trained("sgd")
    with torch.no_grad():
        model[2].weight[1, 1] = float("nan")
    mon = SpectrumMonitor(loss="mse", fail_on=["nonfinite_count>0"])
    m = mon.measure(model, 3, optimizer=opt, batch=(x, y))  # raised before (NaN Hessian)
    assert [(v.tensor, v.value) for v in m.violations] == [("2.weight", 1.0)]
    assert m.indicators["tensors.nonfinite_tensors"] == 1.0
    s = np.linalg.svd(model[0].weight.detach().double().numpy(), compute_uv=False)
    assert m.indicators["tensors.max_kappa"] == pytest.approx(s[0] / s[-1], rel=1e-12)
    assert "operator indicators not computed at step 3: the parameters hold NaN/Inf " \
           "(2.weight)" in m.warnings
    assert not [k for k in m.indicators if k.startswith(("momentum.", "optimizer."))]
    # Finite weights, NaN targets: the Hessian is finite but the check against double
    # backward is NaN; said, not raised.
    model, opt, (x, y) = trained("sgd")
    m = mon.measure(model, 3, optimizer=opt, batch=(x, torch.full_like(y, float("nan"))))
    assert any(w.startswith("operator indicators not computed at step 3: ")
               for w in m.warnings), m.warnings
    assert m.indicators["tensors.nonfinite_tensors"] == 0.0


def test_conditions_and_indicator_patterns_that_can_never_match_are_said_once():
    model, _, _ = trained()
    mon = SpectrumMonitor(fail_on=["kappa>1e4@*.attn.*", "kappa>1e9"])
    first, second = mon.measure(model, 1), mon.measure(model, 2)
    assert first.warnings == (
        "fail_on 'kappa>10000@*.attn.*' checked nothing at step 1: no measured matrix or "
        "operator in its scope '*.attn.*' has a value of 'kappa', so it could not fire "
        "(measured: 0.weight, 2.weight)",)
    assert second.warnings == ()
    m = SpectrumMonitor(indicators=["tensors.max_kapa"]).measure(model, 1)
    assert m.indicators == {}
    assert m.warnings == ("indicators=['tensors.max_kapa'] select none of the indicators "
                          "measured: nothing is reported",)


def test_threads_follow_the_environment(monkeypatch):
    from spectrum_cli.runs import threads as executors
    from spectrum_cli.integrations.monitor import LiveTensors

    if executors.available_cores() < 2:
        pytest.skip("needs two cores to tell 1 thread from all")
    seen = []
    read = LiveTensors.read

    def spy(self, name):
        seen.append(torch.get_num_threads())
        return read(self, name)

    monkeypatch.setattr(LiveTensors, "read", spy)
    model, _, _ = trained()
    for var in executors.THREAD_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    SpectrumMonitor().measure(model, 1)
    assert seen == [1, 1]
    seen.clear()
    SpectrumMonitor(threads=2).measure(model, 1)  # the setting wins
    assert seen == [2, 2]
