"""SpectrumCallback in a real Lightning Trainer.fit on a tiny MLP, a few steps on the CPU;
values read back from the CSV logger's metrics.csv and the TensorBoard logger's events."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from spectrum_cli.integrations.lightning import SpectrumCallback  # noqa: E402

LR, MU = 0.1, 0.9

# Lightning says so when log_every_n_steps exceeds the batches: on purpose here (the
# callback logs whatever the interval is).
pytestmark = pytest.mark.filterwarnings("ignore:The number of training batches")


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                       torch.nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=MU)


def dataset():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g), torch.randn(32, 2, generator=g)


def fit(tmp_path, callback, max_steps=4, loggers=None, callbacks=()):
    x, y = dataset()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1,
                        logger=loggers if loggers is not None else CSVLogger(tmp_path),
                        callbacks=[callback, *callbacks], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks),
                        default_root_dir=tmp_path, log_every_n_steps=50)
    module = Tiny()
    trainer.fit(module, loader)
    return trainer, module


def csv_rows(trainer) -> dict[int, dict[str, float]]:
    """Rows of metrics.csv that hold spectrum values, by step."""
    logger = next(lg for lg in trainer.loggers if isinstance(lg, CSVLogger))
    with open(f"{logger.log_dir}/metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {int(r["step"]): {k: float(v) for k, v in r.items() if v != "" and k != "step"}
            for r in rows if r.get("spectrum/tensors.max_kappa")}


def max_kappa(module) -> float:
    out = []
    for p in module.parameters():
        if p.ndim == 2:
            s = np.linalg.svd(p.detach().double().numpy(), compute_uv=False)
            out.append(s[0] / s[-1])
    return max(out)


def test_values_reach_csv_tensorboard_and_callback_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(tmp_path, name="tb")
    cb = SpectrumCallback(every_n_steps=2, indicators=["tensors.*"])
    trainer, module = fit(tmp_path, cb, loggers=[CSVLogger(tmp_path), tb])
    rows = csv_rows(trainer)
    # Logged although log_every_n_steps is 50, after optimizer steps 2 and 4, at the
    # steps Lightning writes those batches' own metrics at (1 and 3).
    assert sorted(rows) == [1, 3]
    # Optimizer step 4 is the last: its weights are the module's now (float64 SVD).
    assert rows[3]["spectrum/tensors.max_kappa"] == pytest.approx(max_kappa(module), rel=1e-12)
    assert float(trainer.callback_metrics["spectrum/tensors.max_kappa"]) == pytest.approx(
        rows[3]["spectrum/tensors.max_kappa"], rel=1e-6)  # float32 in callback_metrics
    ea = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0})
    ea.Reload()
    series = ea.Scalars("spectrum/tensors.max_kappa")
    assert [e.step for e in series] == [1, 3]
    for e in series:
        assert e.value == np.float32(rows[e.step]["spectrum/tensors.max_kappa"])
    assert cb.last.step == 4 and cb.stopped is None


def test_fail_on_stops_the_fit(tmp_path, caplog):
    cb = SpectrumCallback(every_n_steps=2, fail_on=["kappa>1@net.2.*"])
    with caplog.at_level(logging.WARNING, logger="spectrum_cli.integrations"):
        trainer, _ = fit(tmp_path, cb, max_steps=8)
    assert trainer.global_step == 2 and trainer.should_stop
    assert cb.stopped.step == 2
    assert [v.tensor for v in cb.stopped.violations] == ["net.2.weight"]
    assert csv_rows(trainer)[1]["spectrum/fail_on_violations"] == 1.0  # logged step 1
    assert any("1 fail_on violation(s): net.2.weight" in r.getMessage() for r in caplog.records)


def test_checkpoint_saves_are_measured(tmp_path):
    cb = SpectrumCallback(indicators=["tensors.max_kappa"])  # on_save only
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer, _ = fit(tmp_path, cb, max_steps=6, callbacks=[ckpt])
    assert sorted(csv_rows(trainer)) == [2, 5]  # Lightning's logged steps of those batches
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == [
        "epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]
    assert cb.last.step == 6  # the measurement's step: optimizer steps, as in the name


def test_operator_indicators_on_the_batch_just_trained_on(tmp_path):
    cb = SpectrumCallback(every_n_steps=4, loss="mse", indicators=["re:^(momentum|optimizer)\\."])
    trainer, module = fit(tmp_path, cb, max_steps=4)
    got = cb.last.indicators
    # The 4th step trained on the 4th batch (no shuffling): x[24:32]. Independently:
    # torch.autograd's float64 Hessian there, and J = [[I - lr H, -lr mu I], [H, mu I]].
    from torch.func import functional_call

    x, y = dataset()
    x, y = x[24:32].double(), y[24:32].double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().double() for _, p in module.named_parameters()]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    shadow = Tiny().double()

    def loss(flat):
        current = {n: c.reshape(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
        return torch.nn.functional.mse_loss(functional_call(shadow, current, (x,)), y)

    h = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))
    h = h.numpy()
    h = (h + h.T) / 2
    eye = np.eye(len(h))
    j = np.block([[eye - LR * h, -LR * MU * eye], [h, MU * eye]])
    assert got["momentum.spectral_radius"] == pytest.approx(
        np.max(np.abs(np.linalg.eigvals(j))), rel=1e-9)
    assert got["optimizer.hessian_lambda_max"] == pytest.approx(np.linalg.eigvalsh(h)[-1],
                                                                rel=1e-9)
    logger = trainer.loggers[0]
    with open(f"{logger.log_dir}/metrics.csv", newline="") as fh:
        (last,) = [r for r in csv.DictReader(fh) if r.get("spectrum/momentum.spectral_radius")]
    assert float(last["spectrum/momentum.spectral_radius"]) == got["momentum.spectral_radius"]


# -- the step convention, user mistakes, failures inside a measurement ----------------


class Logging(Tiny):
    """Tiny that logs its training loss, as most modules do."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss


def rows_with(trainer, key: str) -> list[int]:
    logger = next(lg for lg in trainer.loggers if isinstance(lg, CSVLogger))
    with open(f"{logger.log_dir}/metrics.csv", newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh) if r.get(key)]


def test_values_share_the_step_of_the_trainers_own_metrics(tmp_path):
    x, y = dataset()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    cb = SpectrumCallback(every_n_steps=5, indicators=["tensors.max_kappa"])
    trainer = L.Trainer(max_steps=10, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path),
                        callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, log_every_n_steps=5)
    module = Logging()
    trainer.fit(module, loader)
    own = rows_with(trainer, "train_loss")
    assert own == [4, 9]  # Lightning's convention: the 5th batch's metrics at step 4
    assert rows_with(trainer, "spectrum/tensors.max_kappa") == own
    assert cb.last.step == 10  # measured after the 10th optimizer step: the final weights
    assert csv_rows(trainer)[9]["spectrum/tensors.max_kappa"] == pytest.approx(
        max_kappa(module), rel=1e-12)


def test_an_include_that_matches_nothing_is_refused_before_the_fit(tmp_path):
    from spectrum_cli.integrations.monitor import NothingMatchedError

    cb = SpectrumCallback(every_n_steps=1, include=["net.3.*"], fail_on=["kappa>1e4"])
    with pytest.raises(NothingMatchedError) as err:
        fit(tmp_path, cb)
    assert err.value.exit_code == 5
    msg = str(err.value)
    assert "include=['net.3.*']" in msg
    assert "net.0.weight, net.0.bias, net.2.weight, net.2.bias" in msg
    assert cb.last is None  # nothing measured, no step trained


class PoisonAt(L.Callback):
    """Puts an Inf into net.2.weight after optimizer step ``at`` (before SpectrumCallback,
    listed after it) and keeps a float64 copy of the weights as they are then."""

    def __init__(self, at: int) -> None:
        self.at, self.weights = at, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            with torch.no_grad():
                pl_module.net[2].weight[0, 0] = float("inf")
            self.weights = {n: p.detach().double().clone()
                            for n, p in pl_module.named_parameters()}


def test_nonfinite_weights_and_failed_measurements_never_raise_into_fit(tmp_path, caplog):
    poison = PoisonAt(2)
    cb = SpectrumCallback(every_n_steps=2, loss="mse", fail_on=["kappa>1e12"])
    x, y = dataset()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path),
                        callbacks=[poison, cb], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        log_every_n_steps=50)
    with caplog.at_level(logging.WARNING, logger="spectrum_cli.integrations"):
        trainer.fit(Tiny(), loader)  # the Hessian check on a NaN loss raised into fit before
    assert trainer.global_step == 4 and cb.stopped is None
    rows = csv_rows(trainer)
    assert rows[1]["spectrum/tensors.nonfinite_tensors"] == 1.0
    s = np.linalg.svd(poison.weights["net.0.weight"].numpy(), compute_uv=False)
    assert rows[1]["spectrum/tensors.max_kappa"] == pytest.approx(s[0] / s[-1], rel=1e-12)
    assert not [k for k in rows[1] if k.startswith(("spectrum/momentum.",
                                                    "spectrum/optimizer."))]
    said = [r.getMessage() for r in caplog.records]
    assert any("step 2:" in m and "1 matrix(es) hold NaN/Inf" in m and "net.2.weight" in m
               for m in said)
    assert any("operator indicators not computed at step 2: the parameters hold NaN/Inf "
               "(net.2.weight)" in m for m in said)
    # By step 4 the Inf has spread to every weight: counted, no other tensors.* value.
    assert cb.last.step == 4 and cb.last.indicators["tensors.nonfinite_tensors"] == 2.0


def test_a_failing_loss_is_logged_and_the_fit_goes_on(tmp_path, caplog):
    def loss(out, y):
        raise RuntimeError("boom")

    cb = SpectrumCallback(every_n_steps=2, loss=loss, indicators=["tensors.max_kappa"])
    with caplog.at_level(logging.WARNING, logger="spectrum_cli.integrations"):
        trainer, module = fit(tmp_path, cb, max_steps=4)
    assert trainer.global_step == 4
    assert csv_rows(trainer)[3]["spectrum/tensors.max_kappa"] == pytest.approx(
        max_kappa(module), rel=1e-12)
    assert any("operator indicators not computed at step 4: RuntimeError: boom"
               in r.getMessage() for r in caplog.records)
