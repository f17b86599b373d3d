"""Small models and data for the sample checkpoints, the tests and the README tour.

``spectrum analyze ckpt.pt --model spectrum_cli.examples:tiny_mlp --data
spectrum_cli.examples:tiny_regression --loss mse`` (the sample folders name these in a
``spectrum.toml``, so no flags are needed there).
"""

from __future__ import annotations


def tiny_mlp():
    """16 -> 32 -> 32 -> 4 with tanh: 1732 parameters (a dense Hessian is cheap)."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 4),
    )


def tiny_regression(n: int = 256):
    """A fixed synthetic regression batch: y = tanh(x T) + noise, x ~ N(0, I)."""
    import torch

    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 16, generator=g)
    teacher = torch.randn(16, 4, generator=g) / 4
    y = torch.tanh(x @ teacher) + 0.05 * torch.randn(n, 4, generator=g)
    return x, y


# The setting of seed 000's experiment (a two-layer ReLU MLP on synthetic regression,
# full batch), used by sample_checkpoints/make_samples.py for the batch tour. The
# paper's symbols are lost, so width, data and seeds are our choices: with teacher scale
# 0.5 and seed 4 the SGD run at lr = 1.7 x 2/λ_max(H at init) has both spiking and
# stable phases (of seeds 0-4 at scales 0.35/0.5/0.7, most runs never spiked or
# diverged to NaN).

PAPER_IN, PAPER_HIDDEN, PAPER_SAMPLES, PAPER_SEED, PAPER_SCALE = 10, 32, 200, 4, 0.5


def two_layer_relu():
    """10 -> 32 (ReLU) -> 1: 385 parameters."""
    import torch

    torch.manual_seed(PAPER_SEED)
    return torch.nn.Sequential(torch.nn.Linear(PAPER_IN, PAPER_HIDDEN), torch.nn.ReLU(),
                               torch.nn.Linear(PAPER_HIDDEN, 1))


def paper_regression():
    """Full batch: x ~ N(0, I), y from a random two-layer ReLU teacher plus noise."""
    import torch

    g = torch.Generator().manual_seed(PAPER_SEED)
    x = torch.randn(PAPER_SAMPLES, PAPER_IN, generator=g)
    w1 = torch.randn(PAPER_IN, 16, generator=g) / PAPER_IN**0.5
    w2 = torch.randn(16, 1, generator=g) * PAPER_SCALE
    y = torch.relu(x @ w1) @ w2 + 0.1 * torch.randn(PAPER_SAMPLES, 1, generator=g)
    return x, y
