"""Models and data for the optimizer tests (imported by spectrum as MODULE:FN)."""

import torch


def small_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def small_data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3, generator=g)
    return x, torch.sin(x[:, :2]) + 0.1 * torch.randn(40, 2, generator=g)


def small_batches():
    x, y = small_data()
    return [(x[:20], y[:20]), (x[20:], y[20:])]


def linear_model():
    torch.manual_seed(1)
    return torch.nn.Linear(4, 1, bias=False)


def linear_data():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])


def tied_model():
    torch.manual_seed(3)
    emb = torch.nn.Linear(3, 3, bias=False)
    model = torch.nn.Sequential(emb, torch.nn.Tanh(), torch.nn.Linear(3, 3, bias=False))
    model[2].weight = emb.weight  # tied
    return model


def partly_frozen():
    model = small_mlp()
    model[0].bias.requires_grad_(False)
    return model


def bad_loss(out, y):
    return (out - y).abs().sum()
