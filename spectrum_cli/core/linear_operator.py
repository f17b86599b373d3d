"""Linear operators: the one input every backend takes.

A LinearOperator-like protocol (shape, dtype, ``symmetric``, ``matvec``/``matmat``,
``rmatmat``) in the spirit of scipy's ``LinearOperator`` and curvlinops' ``_matmat`` /
``_adjoint``. :func:`as_operator` accepts numpy arrays, torch tensors (any device) and
scipy ``LinearOperator`` objects; every operator counts the vectors it was applied to, so
results can report ``n_matvec`` honestly.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Operator(Protocol):
    shape: tuple[int, int]
    dtype: np.dtype
    symmetric: bool
    n_matvec: int

    def matvec(self, x: np.ndarray) -> np.ndarray: ...

    def matmat(self, x: np.ndarray) -> np.ndarray: ...

    def rmatmat(self, y: np.ndarray) -> np.ndarray: ...

    def dense(self) -> Any | None:
        """The explicit matrix (numpy array or torch tensor), or None if matrix-free."""
        ...


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


class DenseOperator:
    """An explicit matrix, numpy or torch. ``matmat`` takes and returns numpy arrays
    (torch tensors are moved to and from the matrix's device)."""

    def __init__(self, a: Any, symmetric: bool = False) -> None:
        if len(a.shape) != 2:
            raise ValueError(f"a: expected a 2-D matrix, got shape {tuple(a.shape)}")
        self.a = a
        self.shape = (int(a.shape[0]), int(a.shape[1]))
        self.is_torch = _is_torch(a)
        self.dtype = (np.dtype(str(a.dtype).removeprefix("torch.")) if self.is_torch
                      else a.dtype)
        self.symmetric = symmetric
        self.n_matvec = 0

    @property
    def device(self) -> str:
        return self.a.device.type if self.is_torch else "cpu"

    def _apply(self, m: Any, x: np.ndarray) -> np.ndarray:
        if self.is_torch:
            import torch

            xt = torch.as_tensor(np.asarray(x), device=self.a.device, dtype=self.a.dtype)
            return (m @ xt).cpu().numpy()
        return m @ x

    def matmat(self, x: np.ndarray) -> np.ndarray:
        self.n_matvec += x.shape[1]
        return self._apply(self.a, x)

    def rmatmat(self, y: np.ndarray) -> np.ndarray:
        self.n_matvec += y.shape[1]
        return self._apply(self.a.T if not np.iscomplexobj(self.a) else self.a.conj().T, y)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        return self.matmat(x.reshape(-1, 1)).ravel()

    def dense(self) -> Any:
        return self.a


class ScipyOperator:
    """A ``scipy.sparse.linalg.LinearOperator`` (matrix-free)."""

    def __init__(self, op: Any, symmetric: bool = False) -> None:
        self.op = op
        self.shape = (int(op.shape[0]), int(op.shape[1]))
        self.dtype = np.dtype(op.dtype)
        self.symmetric = symmetric
        self.n_matvec = 0

    def matmat(self, x: np.ndarray) -> np.ndarray:
        self.n_matvec += x.shape[1]
        return np.asarray(self.op.matmat(x))

    def rmatmat(self, y: np.ndarray) -> np.ndarray:
        self.n_matvec += y.shape[1]
        return np.asarray(self.op.rmatmat(y))

    def matvec(self, x: np.ndarray) -> np.ndarray:
        return self.matmat(x.reshape(-1, 1)).ravel()

    def dense(self) -> None:
        return None


def as_operator(obj: Any, symmetric: bool = False) -> Operator:
    """Wrap ``obj`` (operator, numpy array, torch tensor, scipy LinearOperator)."""
    if isinstance(obj, (DenseOperator, ScipyOperator)):
        return obj
    if isinstance(obj, np.ndarray) or _is_torch(obj):
        return DenseOperator(obj, symmetric)
    if hasattr(obj, "matmat") and hasattr(obj, "shape") and hasattr(obj, "rmatmat"):
        return ScipyOperator(obj, symmetric)
    raise TypeError(f"cannot use {type(obj).__name__} as a linear operator: expected a "
                    "numpy array, a torch tensor or a scipy LinearOperator")
