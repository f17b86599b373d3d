"""Models and data for the spectrum model tests (imported as MODULE:FN)."""

import torch

D, C, N = 5, 3, 12


def linear():
    torch.manual_seed(0)
    return torch.nn.Linear(D, C, bias=False)


def linear_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g)
    return x, torch.randn(N, C, generator=g)


def mlp():
    torch.manual_seed(2)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def mlp_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 4, generator=g)
    return x, torch.sin(x[:, :3])


def wide_mlp():
    """~2k parameters: 20 -> 64 -> 8 with tanh (1864)."""
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))


def wide_data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 20, generator=g)
    return x, torch.randn(64, 8, generator=g)


def bn_cnn():
    torch.manual_seed(6)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
        torch.nn.Dropout(0.3), torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4))


def image_data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 1, 6, 6, generator=g)
    return x, torch.randint(0, 4, (16,), generator=g)
