"""The loss Hessian of core/hessian.py: its dense form, its products and its check, against
an independent closed form, and the process cost it must not bring back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spectrum_cli.core.hessian import build_problem  # noqa: E402


def _least_squares(rows: int = 40, cols: int = 7, seed: int = 3):
    """A linear model under mean squared error: H = 2/N·XᵀX exactly (Nocedal & Wright,
    *Numerical Optimization*, 2nd ed., §10.1: the Hessian of a linear least-squares
    objective), N = rows (mse_loss averages over the outputs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    y = torch.randn(rows, 1, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(cols, 1, bias=False).double()
    return model, (x, y), 2.0 / rows * (x.T @ x).numpy()


def test_dense_hessian_products_and_check_equal_the_closed_form():
    model, data, exact = _least_squares()
    problem = build_problem(model, data, "mse", ["weight"])
    h = problem.dense()
    np.testing.assert_allclose(h, exact, rtol=1e-13, atol=1e-15 * np.abs(exact).max())
    v = np.random.default_rng(0).standard_normal(problem.n)
    np.testing.assert_allclose(problem.hvp_numpy(v), exact @ v, rtol=1e-12)
    assert problem.check_against_double_backward() <= 1e-14


def test_without_a_batching_rule_the_rows_come_one_at_a_time(monkeypatch):
    """An op with no batching rule for the second backward makes the batched route
    raise: the rows are then computed one backward at a time, to the same Hessian."""
    model, data, exact = _least_squares(cols=5)
    batched = build_problem(model, data, "mse", ["weight"]).dense()
    real_grad = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    looped = build_problem(model, data, "mse", ["weight"]).dense()
    np.testing.assert_array_equal(looped, batched)
    np.testing.assert_allclose(looped, exact, rtol=1e-13)


def test_a_hessian_source_does_not_import_dynamo():
    """torch.func's grad and vjp import torch._dynamo on first use (~2.5 s of every
    process that analyses an optimizer); the Hessian source, its check and the
    gradient stay on autograd."""
    code = (
        "import sys, torch\n"
        "from spectrum_cli import examples\n"
        "from spectrum_cli.core.hessian import build_problem\n"
        "m = examples.two_layer_relu()\n"
        "p = build_problem(m, examples.paper_regression(), 'mse',\n"
        "                  [n for n, _ in m.named_parameters()])\n"
        "p.check_against_double_backward(); p.dense(); p.gradient()\n"
        "p.hvp(torch.ones(p.n, dtype=torch.float64))\n"
        "print(sorted(k for k in sys.modules if k.startswith('torch._dynamo')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
