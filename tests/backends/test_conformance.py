"""One conformance suite for every backend (as scipy's svds tests subclass one base):
prescribed spectra, checked against dense float64 LAPACK."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from spectrum_cli import plugins
from tests.helpers import haar, oracle_svdvals, with_spectrum

#: Largest allowed |value - oracle| / σ_max, per working dtype and accuracy class.
#: "bound" results must, in addition, lie inside their own error bounds.
TOLERANCE = {
    "float64": {"exact": 1e-12, "bound": 1e-8},
    "float32": {"exact": 2e-5, "bound": 2e-5},
}


def _spectra(rng) -> dict[str, np.ndarray]:
    def make(shape, s):
        return with_spectrum(rng, shape, np.asarray(s, dtype=float))

    k = 40
    return {
        "clustered": make((80, k), np.r_[np.full(5, 1.0) + 1e-3 * np.arange(5)[::-1],
                                         np.full(k - 5, 0.1)]),
        "decaying": make((90, k), 0.8 ** np.arange(k)),
        "flat": make((60, k), np.full(k, 2.0) - 1e-6 * np.arange(k)),
        "rank_deficient": make((70, k), np.r_[np.linspace(3, 1, k - 6), np.zeros(6)]),
        "tall": make((400, 12), np.linspace(5, 0.5, 12)),
        "wide": make((12, 400), np.linspace(5, 0.5, 12)),
        "tiny": make((3, 2), [2.0, 0.5]),
    }


CASES = ["clustered", "decaying", "flat", "rank_deficient", "tall", "wide", "tiny"]


class BackendConformance:
    """Subclass with ``name`` (the registry name) and ``dtypes``."""

    name: str = ""
    dtypes: tuple[str, ...] = ("float64",)
    #: Cases on which the backend must converge (exact backends always "converge").
    must_converge: tuple[str, ...] = ("decaying", "tall", "wide", "tiny")

    @pytest.fixture
    def backend(self):
        return plugins.get_backend(self.name)

    @pytest.fixture
    def matrices(self):
        return _spectra(np.random.default_rng(7))

    def _check(self, backend, sv, ref, dtype, which, k):
        assert sv.backend == backend.name
        assert sv.which == which
        assert sv.values.shape == (k,)
        assert np.all(np.diff(sv.values) <= 1e-12 * max(ref[0], 1e-300))
        assert sv.accuracy == backend.capabilities.accuracy
        expected = ref[:k] if which == "largest" else ref[-k:]
        err = np.abs(sv.values - expected)
        if sv.accuracy == "bound":
            # Honest bounds always; the tolerance only when the method says it converged
            # (a flat spectrum may defeat subspace iteration: then it must say so).
            assert sv.error_bounds is not None
            assert np.all(err <= sv.error_bounds * (1 + 1e-9) + 1e-15 * ref[0])
            assert sv.n_matvec and sv.n_matvec > 0
            if not sv.converged:
                assert sv.notes and "converge" in sv.notes[0]
                return False
        tol = TOLERANCE[dtype][sv.accuracy] * ref[0]
        assert np.all(err <= tol), (err.max() / ref[0], which)
        if sv.accuracy == "exact" and sv.error_estimate is not None and which == "all":
            # An exact method's stated error bar covers what it got wrong.
            assert err.max() <= sv.error_estimate * (1 + 1e-9), (
                err.max() / sv.error_estimate, dtype)
        return True

    @pytest.mark.parametrize("case", CASES)
    @pytest.mark.parametrize("which", ["largest", "smallest", "all"])
    def test_singular_values(self, backend, matrices, case, which):
        if which not in backend.capabilities.singular_values:
            with pytest.raises(NotImplementedError):
                backend.singular_values(matrices[case], k=1, which=which)
            return
        a = matrices[case]
        ref = oracle_svdvals(a)
        k = ref.size if which == "all" else min(3, ref.size)
        if backend.name == "fake-gram":
            k = 1
        for dtype in self.dtypes:
            sv = backend.singular_values(a, k=None if which == "all" else k, which=which,
                                         dtype=dtype)
            converged = self._check(backend, sv, ref, dtype, which, k)
            if case in self.must_converge:
                assert converged, (case, which, dtype)

    def test_torch_and_scipy_operators(self, backend, matrices):
        a = matrices["decaying"]
        k = 1 if backend.name == "fake-gram" else 2
        ref = oracle_svdvals(a)
        which = "largest" if "largest" in backend.capabilities.singular_values else "all"
        sv = backend.singular_values(torch.from_numpy(a), k=k, which=which)
        assert np.allclose(sv.values[:k], ref[:k], rtol=1e-8)
        lin = spla.aslinearoperator(a)
        if backend.capabilities.matrix_free:
            sv = backend.singular_values(lin, k=k, which=which)
            assert np.allclose(sv.values[:k], ref[:k], rtol=1e-8)
        else:
            with pytest.raises(NotImplementedError):
                backend.singular_values(lin, k=k, which=which)

    def test_seeded_runs_reproduce(self, backend, matrices):
        a = matrices["clustered"]
        which = "largest" if "largest" in backend.capabilities.singular_values else "all"
        k = 1 if backend.name == "fake-gram" else 2
        one = backend.singular_values(a, k=k, which=which, seed=3)
        two = backend.singular_values(a, k=k, which=which, seed=3)
        np.testing.assert_array_equal(one.values, two.values)

    @pytest.mark.parametrize("which", ["largest", "smallest"])
    def test_symmetric_eigenvalues(self, backend, which):
        if which not in backend.capabilities.eigenvalues_symmetric:
            pytest.skip(f"{backend.name} has no symmetric eigensolver for {which}")
        rng = np.random.default_rng(1)
        lam = np.r_[-3.0, -1.0, np.linspace(-0.5, 0.5, 50), 2.0, 4.0]
        q = haar(rng, lam.size, lam.size)
        h = (q * lam) @ q.T
        h = (h + h.T) / 2
        ev = backend.eigenvalues_symmetric(h, k=2, which=which)
        want = np.array([4.0, 2.0]) if which == "largest" else np.array([-1.0, -3.0])
        np.testing.assert_allclose(ev.values, want, atol=1e-9)
        if ev.accuracy == "bound":
            assert np.all(np.abs(ev.values - want) <= ev.error_bounds + 1e-14)

    def test_listed_with_capabilities(self, backend):
        with warnings.catch_warnings():  # the broken test plugins warn: not this test's topic
            warnings.simplefilter("ignore", plugins.BackendWarning)
            rows = {i.name: i for i in plugins.list_backends()}
        assert rows[self.name].available
        assert rows[self.name].backend.capabilities.singular_values


class TestDense(BackendConformance):
    name = "dense"
    dtypes = ("float64", "float32")


class TestLanczos(BackendConformance):
    name = "lanczos"


class TestRandomizedSVD(BackendConformance):
    name = "randomized-svd"
    dtypes = ("float64", "float32")


@pytest.mark.usefixtures("with_plugins")
class TestFakeThirdPartyPlugin(BackendConformance):
    name = "fake-gram"
