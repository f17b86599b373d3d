"""SpectrumCallback in a real transformers.Trainer run on a tiny, randomly initialized
Llama (built from a config: nothing is downloaded), a few steps on the CPU."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
for _needed in ("transformers", "accelerate"):  # the Trainer needs accelerate
    if importlib.util.find_spec(_needed) is None:
        pytest.skip(f"{_needed} is not installed", allow_module_level=True)

VOCAB = 32


@pytest.fixture(autouse=True, scope="module")
def _transformers():
    """transformers (~6 s to import) when this module's tests run, not when a worker
    that runs none of them collects it (conftest.py keeps the module on one worker)."""
    global LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
    global SpectrumCallback
    from transformers import (LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback,
                              TrainingArguments)

    from spectrum_cli.integrations.huggingface import SpectrumCallback


def tiny_llama() -> "LlamaForCausalLM":
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=16, attn_implementation="eager")
    return LlamaForCausalLM(cfg)


def token_data(n: int = 24) -> list[dict]:
    ids = torch.randint(0, VOCAB, (n, 8), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": ids[i], "labels": ids[i]} for i in range(n)]


def make_trainer(out, max_steps: int = 4, report_to=(), callbacks=None, **args):
    return Trainer(model=tiny_llama(), train_dataset=token_data(), callbacks=callbacks,
                   args=TrainingArguments(
                       output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                       logging_steps=args.pop("logging_steps", 1),
                       report_to=list(report_to), use_cpu=True,
                       disable_tqdm=True, lr_scheduler_type="constant", learning_rate=1e-2,
                       save_strategy=args.pop("save_strategy", "no"), **args))


def spectrum_entries(history: list[dict], key: str = "spectrum/tensors.max_kappa"
                     ) -> dict[int, dict]:
    return {e["step"]: e for e in history if key in e}


def test_values_reach_log_history_checkpoints_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import spectrum_cli
    from spectrum_cli.runs.indicators import indicators

    trainer = make_trainer(tmp_path / "out", report_to=["tensorboard"],
                           save_strategy="steps", save_steps=2)
    cb = SpectrumCallback.attach(trainer, fail_on=["kappa>1e12"])
    trainer.train()
    assert trainer.state.global_step == 4 and cb.stopped is None
    logged = spectrum_entries(trainer.state.log_history)
    assert sorted(logged) == [2, 4]  # the save steps only (no every_n_steps)
    assert all(e["spectrum/fail_on_violations"] == 0.0 for e in logged.values())

    # Measured before the save: the entry is in that checkpoint's trainer_state.json,
    # and equals what spectrum measures in the checkpoint the trainer wrote.
    ckpt = tmp_path / "out" / "checkpoint-2"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert spectrum_entries(state["log_history"])[2] == logged[2]
    from_file = indicators(spectrum_cli.analyze(ckpt, use_config=False).document)
    shared = [k for k in from_file if k.startswith("tensors.")]
    assert "tensors.max_kappa" in shared
    for k in shared:  # means summed in another tensor order: equal to the last bits
        assert logged[2][f"spectrum/{k}"] == pytest.approx(from_file[k], rel=1e-14), k

    # The trainer's TensorBoard integration got them (with its "train/" prefix).
    (run,) = [p for p in (tmp_path / "out" / "runs").iterdir()]
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    series = ea.Scalars("train/spectrum/tensors.max_kappa")
    assert [e.step for e in series] == [2, 4]
    for e in series:
        assert e.value == np.float32(logged[e.step]["spectrum/tensors.max_kappa"])


def test_every_n_steps_without_checkpoints_and_values_are_true(tmp_path):
    trainer = make_trainer(tmp_path / "out", max_steps=4)
    cb = SpectrumCallback.attach(trainer, every_n_steps=2, indicators=["tensors.*"])
    trainer.train()
    logged = spectrum_entries(trainer.state.log_history)
    assert sorted(logged) == [2, 4]
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    assert all(k.startswith("spectrum/tensors.") for k in logged[4]
               if k.startswith("spectrum/"))
    # Step 4 is the last: its weights are the model's now. An independent float64 SVD.
    kappas = []
    for name, p in trainer.model.named_parameters():
        if p.ndim == 2:
            s = np.linalg.svd(p.detach().double().numpy(), compute_uv=False)
            kappas.append(s[0] / s[-1])
    assert logged[4]["spectrum/tensors.max_kappa"] == pytest.approx(max(kappas), rel=1e-12)
    assert cb.last.step == 4


def test_fail_on_stops_the_training(tmp_path, caplog):
    trainer = make_trainer(tmp_path / "out", max_steps=8)
    cb = SpectrumCallback.attach(trainer, every_n_steps=2, fail_on=["kappa>1@*q_proj*"])
    with caplog.at_level(logging.WARNING, logger="spectrum_cli.integrations"):
        trainer.train()
    assert trainer.state.global_step == 2  # stopped right after the first measurement
    assert cb.stopped is not None and cb.stopped.step == 2
    assert [v.tensor for v in cb.stopped.violations] == ["model.layers.0.self_attn.q_proj.weight"]
    assert spectrum_entries(trainer.state.log_history)[2]["spectrum/fail_on_violations"] == 1.0
    assert any("step 2: 1 fail_on violation(s): model.layers.0.self_attn.q_proj.weight"
               in r.getMessage() and "stopping the training" in r.getMessage()
               for r in caplog.records)


def test_unbound_callback_still_writes_the_history(tmp_path, caplog):
    cb = SpectrumCallback(every_n_steps=1)
    trainer = make_trainer(tmp_path / "out", max_steps=2, callbacks=[cb])
    with caplog.at_level(logging.WARNING, logger="spectrum_cli.integrations"):
        trainer.train()
    assert sorted(spectrum_entries(trainer.state.log_history)) == [1, 2]
    assert sum("not bound to its Trainer" in r.getMessage() for r in caplog.records) == 1


def test_operator_indicators_on_a_held_out_batch(tmp_path):
    import torch.nn.functional as F
    from torch.func import functional_call

    def lm_loss(out, y):
        logits = out.logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1))

    held = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(7))
    trainer = make_trainer(tmp_path / "out", max_steps=2)
    cb = SpectrumCallback.attach(trainer, every_n_steps=2, loss=lm_loss, batch=(held, held),
                                 params=["model.norm.weight"], indicators=["re:^optimizer\\."])
    trainer.train()
    got = spectrum_entries(trainer.state.log_history, "spectrum/optimizer.hessian_lambda_max")
    assert sorted(got) == [2]
    entry = got[2]
    # Independently: the float64 Hessian of the loss in model.norm.weight at the final
    # (= measured) weights, by torch.autograd.functional.hessian.
    model = trainer.model
    shadow = tiny_llama().double().eval()
    fixed = {n: p.detach().double() for n, p in model.named_parameters()}

    def loss_of(w):
        return lm_loss(functional_call(shadow, dict(fixed, **{"model.norm.weight": w}),
                                       (held,)), held)

    h = torch.autograd.functional.hessian(loss_of, fixed["model.norm.weight"]).numpy()
    lam = np.linalg.eigvalsh((h + h.T) / 2)
    assert entry["spectrum/optimizer.hessian_lambda_max"] == pytest.approx(lam[-1], rel=1e-8)
    assert entry["spectrum/optimizer.hessian_lambda_min"] == pytest.approx(lam[0], rel=1e-8)
    assert cb.last.document["operators"][0]["n_params"] == 16
    assert not [k for k in entry if k.startswith("spectrum/tensors")]


def test_bad_schedules_are_refused():
    from spectrum_cli.core.errors import UsageError

    with pytest.raises(UsageError, match="never measure"):
        SpectrumCallback(on_save=False)
    with pytest.raises(UsageError, match="every_n_steps"):
        SpectrumCallback(every_n_steps=0)
    with pytest.raises(UsageError, match="need a held-out batch"):
        SpectrumCallback(loss="mse")  # HF callbacks never see the training batches
    with pytest.raises(UsageError, match="either a monitor or its settings"):
        from spectrum_cli.integrations import SpectrumMonitor

        SpectrumCallback(monitor=SpectrumMonitor(), include=["*"])


def test_epoch_saves_are_measured_before_the_save(tmp_path):
    trainer = make_trainer(tmp_path / "out", max_steps=-1, num_train_epochs=1,
                           save_strategy="epoch")
    SpectrumCallback.attach(trainer, indicators=["tensors.max_kappa"])
    trainer.train()
    assert trainer.state.global_step == 6  # 24 samples, batches of 4
    assert sorted(spectrum_entries(trainer.state.log_history)) == [6]
    state = json.loads((tmp_path / "out" / "checkpoint-6" / "trainer_state.json").read_text())
    assert sorted(spectrum_entries(state["log_history"])) == [6]


# -- the trainer's own logging, user mistakes, failures inside a measurement ----------


def own_entries(history: list[dict]) -> dict[int, float]:
    """The trainer's own training-loss entries: step -> loss."""
    return {e["step"]: e["loss"] for e in history if "loss" in e}


@pytest.mark.parametrize("when", [
    # every N steps, on the steps the trainer logs its loss at
    dict(logging_steps=5, max_steps=10, every_n_steps=5),
    # at the epoch's checkpoint, measured in on_epoch_end, where the epoch's loss is due
    dict(logging_strategy="epoch", save_strategy="epoch", max_steps=-1,
         num_train_epochs=2, every_n_steps=None),
])
def test_the_trainers_own_loss_entries_are_unchanged(tmp_path, when):
    when = dict(when)
    every = when.pop("every_n_steps")
    plain = make_trainer(tmp_path / "plain", **when)
    plain.train()
    watched = make_trainer(tmp_path / "watched", **when)
    SpectrumCallback.attach(watched, every_n_steps=every, indicators=["tensors.max_kappa"])
    watched.train()
    expected = own_entries(plain.state.log_history)
    assert len(expected) == 2
    # The same steps, the same values (the same seeded run: equal to the last bit).
    assert own_entries(watched.state.log_history) == expected
    assert sorted(spectrum_entries(watched.state.log_history)) == sorted(expected)
    if when.get("save_strategy") == "epoch":  # what `spectrum batch`/`watch` read back
        from spectrum_cli.io.trainer_state import trainer_state_scalars

        for step, loss in expected.items():
            state = tmp_path / "watched" / f"checkpoint-{step}" / "trainer_state.json"
            assert trainer_state_scalars(state)["loss"] == loss


def test_an_include_that_matches_nothing_is_refused_at_attach(tmp_path):
    from spectrum_cli.core.errors import ExitCode
    from spectrum_cli.integrations.monitor import NothingMatchedError

    trainer = make_trainer(tmp_path / "out")
    with pytest.raises(NothingMatchedError) as err:
        SpectrumCallback.attach(trainer, every_n_steps=1, include=["*.self_atn.*"],
                                fail_on=["kappa>1e4"])
    assert err.value.exit_code == ExitCode.NOTHING_MATCHED == 5
    msg = str(err.value)
    assert "include=['*.self_atn.*']" in msg  # what was asked, and what there is
    assert "model.layers.0.self_attn.q_proj.weight" in msg
    assert "model.norm.weight" in msg and "not selected (include/exclude)" in msg
    # Unbound (Trainer(callbacks=[...])): refused when the training begins, before a step.
    cb = SpectrumCallback(every_n_steps=1, include=["*.self_atn.*"])
    trainer = make_trainer(tmp_path / "out2", callbacks=[cb])
    with pytest.raises(NothingMatchedError, match="q_proj.weight"):
        trainer.train()
    assert trainer.state.global_step == 0


def Poison(at: int, name: str):  # noqa: N802 - a callback class, made once transformers is in
    """A callback that puts an Inf into one weight at the end of step ``at`` (before
    SpectrumCallback runs) and keeps a float64 copy of the weights as they are then."""

    class Poison(TrainerCallback):
        def __init__(self) -> None:
            self.at, self.name, self.weights = at, name, None

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == self.at:
                with torch.no_grad():
                    model.get_parameter(self.name)[0, 0] = float("inf")
                self.weights = {n: p.detach().double().clone()
                                for n, p in model.named_parameters()}

    return Poison()


def test_nonfinite_weights_are_reported_and_nothing_raises_into_train(tmp_path, caplog):
    bad = "model.layers.0.mlp.down_proj.weight"
    held = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(7))

    def lm_loss(out, y):
        logits = out.logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y[:, 1:].reshape(-1))

    trainer = make_trainer(tmp_path / "out", max_steps=4, logging_steps=2)
    poison = Poison(2, bad)
    trainer.add_callback(poison)
    cb = SpectrumCallback.attach(trainer, every_n_steps=2, loss=lm_loss, batch=(held, held),
                                 params=["model.norm.weight"], fail_on=["kappa>1e12"])
    with caplog.at_level(logging.WARNING, logger="spectrum_cli.integrations"):
        trainer.train()  # the Hessian of a NaN loss raised into train() before
    assert trainer.state.global_step == 4 and cb.stopped is None
    at2 = spectrum_entries(trainer.state.log_history)[2]
    assert at2["spectrum/tensors.nonfinite_tensors"] == 1.0
    # The other indicators are over the finite matrices only (independent float64 SVDs
    # of the weights as they were at step 2; the embedding is tied to nothing here).
    kappas = []
    for name, w in poison.weights.items():
        if w.ndim == 2 and name != bad:
            s = np.linalg.svd(w.numpy(), compute_uv=False)
            kappas.append(s[0] / s[-1])
    assert len(kappas) == 8  # q, k, v, o, gate, up, embed_tokens, lm_head
    assert at2["spectrum/tensors.max_kappa"] == pytest.approx(max(kappas), rel=1e-12)
    assert not [k for k in at2 if k.startswith("spectrum/optimizer.")]
    said = [r.getMessage() for r in caplog.records]
    assert any("step 2:" in m and "1 matrix(es) hold NaN/Inf" in m and bad in m
               for m in said)
    assert any("step 2:" in m and "operator indicators not computed at step 2: the "
               f"parameters hold NaN/Inf ({bad})" in m for m in said)
    # The trainer's own loss entries are still there (NaN once the Inf has spread).
    assert sorted(own_entries(trainer.state.log_history)) == [2, 4]
