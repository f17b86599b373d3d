"""A third-party backend, as someone outside this repository would write it: only the
protocol of spectrum_cli.core.backend, registered through an entry point in the tests."""

from __future__ import annotations

import time

import numpy as np

from spectrum_cli.core.backend import Capabilities, check_which
from spectrum_cli.core.linear_operator import as_operator
from spectrum_cli.core.results import SingularValues


class GramTopBackend:
    """σ_max (k = 1) as the square root of the top eigenvalue of the Gram matrix."""

    name = "fake-gram"
    description = "test plugin: sigma_max from the Gram matrix"
    capabilities = Capabilities(singular_values=("largest",), accuracy="exact")

    def available(self):
        return True, ""

    def singular_values(self, op, k=None, which="largest", **_):
        check_which(which, ("largest",), "singular values", self.name)
        if (k or 1) > 1:
            raise NotImplementedError("fake-gram computes only sigma_max (k = 1)")
        a = as_operator(op).dense()
        if a is None:
            raise NotImplementedError("fake-gram needs an explicit matrix")
        a = np.asarray(a.numpy() if hasattr(a, "numpy") else a, dtype=np.float64)
        t0 = time.perf_counter()
        g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
        sigma = float(np.sqrt(np.linalg.eigvalsh(g)[-1]))
        return SingularValues(np.array([sigma]), self.name, "gram-eigvalsh", "exact",
                              4 * np.finfo(float).eps * sigma, time.perf_counter() - t0,
                              which="largest")


class Broken:
    def __init__(self):
        raise RuntimeError("this plugin cannot start")
