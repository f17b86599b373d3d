"""Make the sample checkpoints in this folder (deterministic; CPU; a few seconds).

    python sample_checkpoints/make_samples.py

tiny-mlp/ holds a small MLP trained with Adam on a synthetic regression task, saved
three ways: ``checkpoint.pt`` (a nested training checkpoint: model, optimizer state,
step, loss), ``model.safetensors`` (the same weights) and ``weights.npz`` (its matrices).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 4),
    )


def train_tiny_mlp(steps: int = 300) -> tuple[torch.nn.Module, torch.optim.Optimizer, float]:
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    teacher = torch.randn(16, 4) / 4
    y = torch.tanh(x @ teacher) + 0.05 * torch.randn(512, 4)
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return model, opt, loss.item()


def main() -> None:
    torch.use_deterministic_algorithms(True)
    out = os.path.join(HERE, "tiny-mlp")
    os.makedirs(out, exist_ok=True)
    model, opt, loss = train_tiny_mlp()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": opt.state_dict(), "step": 300, "loss": loss},
               os.path.join(out, "checkpoint.pt"))
    save_file(state, os.path.join(out, "model.safetensors"))
    np.savez(os.path.join(out, "weights.npz"),
             **{k: v.numpy() for k, v in state.items() if v.ndim == 2})
    print(f"wrote {out} (final training loss {loss:.4g})")


if __name__ == "__main__":
    main()
