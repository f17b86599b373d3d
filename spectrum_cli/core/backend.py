"""The backend protocol: what a numerical engine offers and how it is called.

Modelled on xarray's ``BackendEntrypoint`` (a class with ``description`` and a few
methods, found through an entry-point group) and scipy's svds/eigsh contracts (``k``,
``which``, a convergence test stated in the docstring, non-convergence that keeps the
partial result). A backend declares its :class:`Capabilities` honestly; the pipeline
never asks it for more, and reports as *unavailable* what no capable backend computed.

Entry point group: ``spectrum.backends``; the value is ``"module:Class"``; the class is
instantiated without arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

#: The singular-value routes of the dense backend (``--svd-route``): Gram matrix with a
#: checked error bound, LAPACK gesdd, or a choice between them.
SVD_ROUTES = ("auto", "gram", "gesdd")
#: ``auto`` takes the Gram route for matrices of aspect ratio >= GRAM_MIN_ASPECT (where it
#: saves most) and for those whose smaller side is at least GRAM_MIN_DIM (where the Gram
#: eigenvalues plus a refinement of the bottom of the spectrum beat gesdd); small
#: near-square matrices go to gesdd.
GRAM_MIN_ASPECT = 2.0
GRAM_MIN_DIM = 512


def auto_takes_gram(m: int, n: int) -> bool:
    """Whether ``--svd-route auto`` tries the Gram route first for an ``m x n`` matrix."""
    k = min(m, n)
    return max(m, n) >= GRAM_MIN_ASPECT * k or k >= GRAM_MIN_DIM

from spectrum_cli.core.linear_operator import Operator
from spectrum_cli.core.results import Eigenvalues, Estimate, SingularValues

WHICH = ("all", "largest", "smallest")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can compute. Each ``which`` tuple lists the supported ends."""

    singular_values: tuple[str, ...] = ()
    eigenvalues_symmetric: tuple[str, ...] = ()
    eigenvalues: tuple[str, ...] = ()
    trace_functions: bool = False
    matrix_free: bool = False
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("float64",)
    accuracy: str = "exact"

    def describe(self) -> str:
        parts = []
        for label, which in (("svd", self.singular_values), ("eigsh", self.eigenvalues_symmetric),
                             ("eig", self.eigenvalues)):
            if which:
                parts.append(f"{label}:{'/'.join(which)}")
        if self.trace_functions:
            parts.append("trace-functions")
        if self.matrix_free:
            parts.append("matrix-free")
        return ", ".join(parts)


@runtime_checkable
class Backend(Protocol):
    name: str
    description: str
    capabilities: Capabilities

    def available(self) -> tuple[bool, str]:
        """Whether the backend can run here, and why not."""
        ...

    def singular_values(self, op: Operator, k: int | None = None, which: str = "all",
                        **options: Any) -> SingularValues: ...


def check_which(which: str, supported: tuple[str, ...], what: str, backend: str) -> None:
    if which not in WHICH:
        raise ValueError(f"which: expected one of {WHICH}, got {which!r}")
    if which not in supported:
        raise NotImplementedError(f"backend {backend!r} cannot compute the {which} {what} "
                                  f"(it supports: {', '.join(supported) or 'none'})")


__all__ = ["Backend", "Capabilities", "Eigenvalues", "Estimate", "SingularValues", "WHICH",
           "check_which"]
