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
