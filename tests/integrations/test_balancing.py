"""Live TempBalance (``balance=``): the learning rates equal the reference's own
``Tempbalance`` class on a small seeded run, nothing changes without the option, a
Lightning fit applies and logs the factors, and every rank applies rank 0's."""

from __future__ import annotations

import csv
import json
import pickle

import pytest

torch = pytest.importorskip("torch")

from spectrum_cli.core.errors import UsageError  # noqa: E402
from spectrum_cli.integrations import common  # noqa: E402
from spectrum_cli.integrations.balancing import TempBalance  # noqa: E402
from spectrum_cli.integrations.distributed import World  # noqa: E402
from spectrum_cli.integrations.loop import SpectrumCallback  # noqa: E402
from tests.integrations import tempbalance_reference as R  # noqa: E402

#: The layers of R.model() TempBalance tunes (not first or last; >= 50 eigenvalues).
TUNED = ("2", "5", "7")


@pytest.fixture(scope="module")
def balanced():
    return R.spectrum_run(balance="tempbalance")


def assert_same_lrs(ours, ref):
    assert len(ours) == len(ref) == R.STEPS
    for step, (a, b) in enumerate(zip(ours, ref), start=1):
        assert a.keys() == b.keys()
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=1e-12, abs=0), (step, name)


def test_learning_rates_equal_the_stored_reference_run(balanced):
    ours, cb = balanced
    ref = json.loads(R.JSON.read_text())
    assert ref["commit"] == R.COMMIT
    assert_same_lrs(ours["lrs"], ref["lrs"])
    for name, values in ref["weights"].items():
        assert ours["weights"][name] == pytest.approx(values, rel=1e-12, abs=1e-14), name
    # The factors act: after the first measurement the tuned layers leave the global rate.
    step3 = ours["lrs"][R.EVERY]
    assert step3["0.weight"] == step3["4.weight"] == R.untuned(R.EVERY)
    assert {round(step3[f"{n}.weight"] / R.untuned(R.EVERY), 12) for n in TUNED} >= {0.5, 1.5}
    assert step3["2.bias"] == step3["2.weight"]  # the bias goes with its layer


def test_learning_rates_equal_the_reference_class_run_now():
    source = R.mirror_source()
    if source is None:
        pytest.skip(f"no git mirror of {R.REPOSITORY} at {R.MIRROR}")
    pytest.importorskip("pandas")  # the reference imports it
    ref = R.reference_run(R.reference_class(source))
    stored = json.loads(R.JSON.read_text())
    assert_same_lrs(ref["lrs"], stored["lrs"])


def test_the_factors_are_logged_at_each_measurement(balanced):
    ours, cb = balanced
    steps = [step for step, _ in ours["logged"]]
    assert steps == list(range(R.EVERY, R.STEPS + 1, R.EVERY))
    last = cb.schedule.balancer.last
    assert last.step == R.STEPS and last.layers == ("0", "2", "5", "7", "9")
    assert last.tuned == (False, True, True, True, False)
    assert {k: v for k, v in ours["logged"][-1][1].items() if "lr_factor" in k} == {
        f"spectrum/lr_factor/{n}": f for n, f, t in
        zip(last.layers, last.factors, last.tuned) if t}
    # Between steps the groups hold the scheduler's rate; lrs() what they step with.
    opt = cb.schedule.balancer.optimizer
    assert [g["lr"] for g in opt.param_groups] == [R.untuned(R.STEPS)] * 6
    assert cb.schedule.balancer.lrs() == pytest.approx(
        [f * R.untuned(R.STEPS) for f in last.factors] + [R.untuned(R.STEPS)], rel=1e-15)


def test_off_by_default_the_learning_rates_are_untouched():
    ours, cb = R.spectrum_run()
    assert cb.schedule.balancer is None
    for step, lrs in enumerate(ours["lrs"], start=1):
        assert set(lrs.values()) == {R.untuned(step - 1)}
    assert not any("lr_factor" in k for _, values in ours["logged"] for k in values)


def test_an_optimizer_without_a_group_per_layer_is_refused():
    net = R.model()
    cb = SpectrumCallback(every_n_steps=1, balance="tempbalance")
    with pytest.raises(ValueError, match=r"3 layer\(s\) share .*2 \(group 0.*"
                                         r"TempBalance\.param_groups"):
        cb.after_step(net, 1, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(UsageError, match="pass the optimizer"):
        cb.after_step(net, 1)
    for bad in ("temp", {"lr_min_ratio": 2.0, "lr_max_ratio": 1.0}, {"band": 1}):
        with pytest.raises(UsageError, match="balance|TempBalance"):
            SpectrumCallback(balance=bad)
    # Groups that split off only the layers never tuned are fine (first, last).
    net = R.model()
    groups = TempBalance.param_groups(net, 0.1)
    merged = [{"params": groups[0]["params"] + groups[-1]["params"]}, *groups[1:-1]]
    TempBalance().attach(net, torch.optim.SGD(merged, lr=0.1))


def test_every_rank_applies_rank_0s_factors(monkeypatch):
    sent: list[bytes] = []

    def broadcast(payload, rank):  # rank 0 runs first here; pickled as the wire does
        if rank == 0:
            sent.append(pickle.dumps(payload))
        return pickle.loads(sent[-1])

    monkeypatch.setattr(common, "broadcast", broadcast)
    got = {}
    for rank in (0, 1):
        monkeypatch.setattr(common, "world", lambda rank=rank: World(rank, 2))
        net = R.model()
        opt = torch.optim.SGD(TempBalance.param_groups(net, R.LR), lr=R.LR)
        cb = SpectrumCallback(every_n_steps=1, square="none", balance="tempbalance",
                              indicators=["tensors.max_kappa"], log=lambda v, s: None)
        cb.after_step(net, 1, optimizer=opt)
        got[rank] = cb.schedule.balancer
    assert got[1].last == got[0].last and sum(got[0].last.tuned) == 3
    assert got[1].lrs() == got[0].lrs() != [R.LR] * 6


# Lightning says so when log_every_n_steps exceeds the batches (as in test_lightning.py).
@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_lightning_applies_and_logs_the_factors(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    from spectrum_cli.integrations.lightning import SpectrumCallback as LightningCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = R.model()
            self.seen: list[list[float]] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(TempBalance.param_groups(self, R.LR), lr=R.LR)

        def on_train_start(self) -> None:  # after the callback's: sees the factors
            self.trainer.optimizers[0].register_step_pre_hook(
                lambda o, a, k: self.seen.append([g["lr"] for g in o.param_groups]))

    x, y = R.batch()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=32)
    cb = LightningCallback(every_n_steps=2, square="none", balance="tempbalance",
                           indicators=["tensors.max_kappa"])
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1,
                        logger=CSVLogger(tmp_path), callbacks=[cb],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path,
                        log_every_n_steps=50)
    module = Module()
    trainer.fit(module, loader)
    with open(f"{trainer.loggers[0].log_dir}/metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("spectrum/lr_factor/net.2")]
    assert len(rows) == 2  # the measurements after steps 2 and 4
    first = [1.0] + [float(rows[0][f"spectrum/lr_factor/net.{n}"]) for n in TUNED] + [1.0]
    assert module.seen[0] == module.seen[1] == [R.LR] * 6  # before any measurement
    assert module.seen[2] == pytest.approx([f * R.LR for f in first] + [R.LR], rel=1e-15)
    assert min(first) == 0.5 and max(first) == 1.5
