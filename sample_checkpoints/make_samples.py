"""Make the sample checkpoints in this folder (deterministic; CPU; a few seconds).

    python sample_checkpoints/make_samples.py

tiny-mlp/       spectrum_cli.examples.tiny_mlp trained 300 steps with Adam on
                tiny_regression, saved three ways: ``checkpoint.pt`` (model, optimizer
                state, step, loss), ``model.safetensors`` (the weights) and ``weights.npz``.
tiny-mlp-sgd/   the same model trained with SGD(lr=0.05, momentum=0.9): ``checkpoint.pt``.
sgd-momentum/   seed 000's setting (spectrum_cli.examples.two_layer_relu on
adam/           paper_regression, full batch, 600 steps, lr = 1.7 x 2/λ_max(H at init)):
                torch.optim.SGD(momentum=0.9), and Adam with the same lr; a checkpoint
                (model, optimizer, step, loss) every 5 steps, ``step-00005.pt`` ...
Each folder has a ``spectrum.toml`` naming the model, data and loss, so ``spectrum
analyze`` and ``spectrum batch`` build the optimizer's update operator without flags.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from safetensors.torch import save_file

from spectrum_cli.examples import tiny_mlp, tiny_regression

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = """# Read by `spectrum analyze` / `spectrum batch` for checkpoints in this folder.
model = "spectrum_cli.examples:{model}"
data = "spectrum_cli.examples:{data}"
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
        fh.write(CONFIG.format(model="tiny_mlp", data="tiny_regression"))
    return state


def paper_run(folder: str, make_opt, steps: int = 600, every: int = 5) -> list[float]:
    """Seed 000's protocol; returns the losses at the saved checkpoints."""
    from spectrum_cli.core.hessian import build_problem
    from spectrum_cli.examples import paper_regression, two_layer_relu

    x, y = paper_regression()
    names = [n for n, _ in two_layer_relu().named_parameters()]
    h0 = build_problem(two_layer_relu(), (x, y), "mse", names).dense()
    lr = 1.7 * 2 / float(np.linalg.eigvalsh(h0)[-1])
    model = two_layer_relu()
    opt = make_opt(model.parameters(), lr)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.startswith("step-"):
            os.remove(os.path.join(folder, name))
    saved = []
    for t in range(1, steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if t % every == 0:
            with torch.no_grad():
                now = torch.nn.functional.mse_loss(model(x), y).item()
            torch.save({"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                        "optimizer": opt.state_dict(), "step": t, "loss": now},
                       os.path.join(folder, f"step-{t:05d}.pt"))
            saved.append(now)
    with open(os.path.join(folder, "spectrum.toml"), "w") as fh:
        fh.write(CONFIG.format(model="two_layer_relu", data="paper_regression"))
    return saved


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
    for name, make in (("sgd-momentum", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)),
                       ("adam", lambda p, lr: torch.optim.Adam(p, lr=lr))):
        losses = paper_run(os.path.join(HERE, name), make)
        print(f"wrote {name}: {len(losses)} checkpoints, loss {losses[0]:.3g} -> "
              f"{losses[-1]:.3g}")


if __name__ == "__main__":
    main()
