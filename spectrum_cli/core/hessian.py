"""The loss Hessian of a user's model on the user's data, by autograd's double backward.

Hessian-vector products are reverse-over-reverse (Pearlmutter 1994, "Fast exact
multiplication by the Hessian"): the gradient g(θ) with its graph kept, then the gradient
of vᵀg (``jvp`` of ``grad`` fails with mean-reduced ``mse_loss`` on current torch,
docs/operators.md §6). The dense Hessian is the same second backward batched over the
rows of the identity. Each source is checked once against the Hessian-vector product by
the double-backward trick of ``torch.autograd.functional.hvp`` (a third backward through
the transposed graph: H v, not vᵀH). ``torch.func`` is not used here: its ``grad`` and
``vjp`` import torch._dynamo on first use, ~2 s of every process that analyses an
optimizer. Everything runs in float64 unless told otherwise; the model is put in eval
mode (BatchNorm uses its running statistics, Dropout is off) and the report says so. The
loss is the mean over the batches of each batch's (mean-reduced) loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from spectrum_cli.core.errors import UsageError


@dataclass
class HessianProblem:
    """A loss as a function of the flat vector of the selected parameters."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    theta: Any  # torch tensor (n,)
    loss_of: Callable[[Any], Any]
    n_hvp: int = 0
    notes: list[str] = field(default_factory=list)
    #: f(flat_theta, inputs) -> outputs, the model as a function of the parameters.
    forward: Callable[[Any, Any], Any] | None = None
    batches: list[tuple[Any, Any]] = field(default_factory=list)
    loss_fn: Callable[[Any, Any], Any] | None = None

    @property
    def n(self) -> int:
        return int(self.theta.numel())

    def _gradient_graph(self, create_graph: bool = True) -> tuple[Any, Any]:
        """(θ as a leaf that requires grad, g(θ), with its graph kept by default)."""
        import torch

        theta = self.theta.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss_of(theta), theta, create_graph=create_graph)
        return theta, grad

    def hvp(self, v: Any) -> Any:
        """H v (torch in, torch out), by double backward."""
        import torch

        self.n_hvp += 1
        theta, grad = self._gradient_graph()
        (hv,) = torch.autograd.grad(grad, theta, grad_outputs=v)
        return hv.detach()

    def hvp_numpy(self, v: np.ndarray) -> np.ndarray:
        import torch

        t = torch.as_tensor(np.asarray(v).ravel(), dtype=self.theta.dtype)
        return self.hvp(t).detach().cpu().numpy()

    def dense(self) -> np.ndarray:
        """The full Hessian, symmetrized: the second backward of one gradient graph,
        batched over the rows of the identity (one at a time where an operation of the
        model has no batching rule for it)."""
        import torch

        theta, grad = self._gradient_graph()
        eye = torch.eye(self.n, dtype=theta.dtype)
        try:
            (h,) = torch.autograd.grad(grad, theta, grad_outputs=eye, retain_graph=True,
                                       is_grads_batched=True)
        except RuntimeError:
            h = torch.stack([torch.autograd.grad(grad, theta, grad_outputs=e,
                                                 retain_graph=True)[0] for e in eye])
        self.n_hvp += self.n
        h = h.detach().cpu().numpy()
        return (h + h.T) / 2

    def gradient(self) -> Any:
        """∇L(θ) (torch)."""
        return self._gradient_graph(create_graph=False)[1].detach()

    def check_against_double_backward(self, seed: int = 0) -> float:
        """Relative difference of one Hessian-vector product by double backward and by
        the double-backward trick (``torch.autograd.functional.hvp``)."""
        import torch
        from torch.autograd.functional import hvp

        g = torch.Generator().manual_seed(seed)
        v = torch.randn(self.n, generator=g, dtype=self.theta.dtype)
        _, ref = hvp(self.loss_of, self.theta.detach(), v)
        ours = self.hvp(v)
        denom = float(ref.norm()) or 1.0
        return float((ours - ref).norm()) / denom

    def operator(self):
        """H as a symmetric scipy LinearOperator (numpy in and out)."""
        import scipy.sparse.linalg as spla

        def mm(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x)
            if x.ndim == 1:
                return self.hvp_numpy(x)
            return np.stack([self.hvp_numpy(x[:, j]) for j in range(x.shape[1])], axis=1)

        return spla.LinearOperator((self.n, self.n), matvec=mm, rmatvec=mm, matmat=mm,
                                   rmatmat=mm, dtype=np.float64)


def _loss_fn(loss: str | Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A built-in loss by name, or the caller's callable (user code is resolved by the
    application layer, io/usercode.py: the core never imports it)."""
    import torch.nn.functional as F

    if callable(loss):
        return loss
    if loss == "mse":
        return F.mse_loss
    if loss == "cross_entropy":
        return F.cross_entropy
    raise UsageError(f"--loss: {loss!r} is not a built-in loss (mse, cross_entropy); name "
                     "your own as MODULE:FN")


def _batches(data: Any) -> list[tuple[Any, Any]]:
    import torch

    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0],
                                                                          torch.Tensor):
        return [(data[0], data[1])]
    try:
        batches = [tuple(b) for b in data]
    except TypeError:
        raise UsageError("--data: expected (inputs, targets) or an iterable of such "
                         f"pairs, got {type(data).__name__}") from None
    if not batches or any(len(b) != 2 for b in batches):
        raise UsageError("--data: every batch must be an (inputs, targets) pair")
    return batches


def build_problem(model: Any, data: Any, loss: str | Callable[[Any, Any], Any],
                  names: Sequence[str],
                  dtype: str = "float64") -> HessianProblem:
    """The loss of ``model`` on ``data`` as a function of the parameters ``names``
    (the others held fixed)."""
    import torch
    from torch.func import functional_call

    tdtype = getattr(torch, dtype)
    model = model.to(dtype=tdtype).eval()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    missing = [n for n in names if n not in params]
    if missing:
        raise UsageError(f"the model has no parameter(s) {', '.join(missing[:5])}")
    batches = []
    for x, y in _batches(data):
        x = x.to(tdtype) if torch.is_tensor(x) and x.is_floating_point() else x
        y = y.to(tdtype) if torch.is_tensor(y) and y.is_floating_point() else y
        batches.append((x, y))
    loss_fn = _loss_fn(loss)
    fixed = {k: v.detach() for k, v in params.items() if k not in set(names)}
    shapes = [tuple(params[n].shape) for n in names]
    sizes = [math.prod(s) for s in shapes]
    theta = torch.cat([params[n].detach().reshape(-1) for n in names]).to(tdtype)

    def forward(flat: Any, x: Any) -> Any:
        chunks = torch.split(flat, sizes)
        current = dict(fixed)
        current.update({n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)})
        return functional_call(model, (current, buffers), (x,))

    def loss_of(flat: Any) -> Any:
        total = 0.0
        for x, y in batches:
            total = total + loss_fn(forward(flat, x), y)
        return total / len(batches)

    notes = ["model in eval mode (BatchNorm running statistics, no Dropout)",
             f"loss = mean over {len(batches)} batch(es) of the "
             f"{loss if isinstance(loss, str) else getattr(loss, '__name__', 'given')} loss"]
    return HessianProblem(list(names), shapes, theta, loss_of, notes=notes, forward=forward,
                          batches=batches, loss_fn=loss_fn)
