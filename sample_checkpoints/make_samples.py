"""Make the sample checkpoints in this folder (deterministic; CPU; a few seconds).

    python sample_checkpoints/make_samples.py

tiny-mlp/       spectrum_cli.examples.tiny_mlp trained 300 steps with Adam on
                tiny_regression, saved three ways: ``checkpoint.pt`` (model, optimizer
                state, step, loss), ``model.safetensors`` (the weights) and ``weights.npz``.
tiny-mlp-sgd/   the same model trained with SGD(lr=0.05, momentum=0.9): ``checkpoint.pt``.
Each folder has a ``spectrum.toml`` naming the model, data and loss, so ``spectrum
analyze`` builds the optimizer's update operator without extra flags.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from safetensors.torch import save_file

from spectrum_cli.examples import tiny_mlp, tiny_regression

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = """# Read by `spectrum analyze` for checkpoints in this folder.
model = "spectrum_cli.examples:tiny_mlp"
data = "spectrum_cli.examples:tiny_regression"
loss = "mse"
"""


def train(make_opt, steps: int = 300):
    torch.manual_seed(0)
    x, y = tiny_regression()
    model = tiny_mlp()
    opt = make_opt(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return model, opt, loss.item()


def save(folder: str, model, opt, loss: float, steps: int = 300) -> dict:
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": opt.state_dict(), "step": steps, "loss": loss},
               os.path.join(folder, "checkpoint.pt"))
    with open(os.path.join(folder, "spectrum.toml"), "w") as fh:
        fh.write(CONFIG)
    return state


def main() -> None:
    torch.use_deterministic_algorithms(True)
    adam = os.path.join(HERE, "tiny-mlp")
    model, opt, loss = train(lambda p: torch.optim.Adam(p, lr=1e-2))
    state = save(adam, model, opt, loss)
    save_file(state, os.path.join(adam, "model.safetensors"))
    np.savez(os.path.join(adam, "weights.npz"),
             **{k: v.numpy() for k, v in state.items() if v.ndim == 2})
    print(f"wrote {adam} (final training loss {loss:.4g})")
    sgd = os.path.join(HERE, "tiny-mlp-sgd")
    model, opt, loss = train(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    save(sgd, model, opt, loss)
    print(f"wrote {sgd} (final training loss {loss:.4g})")


if __name__ == "__main__":
    main()
