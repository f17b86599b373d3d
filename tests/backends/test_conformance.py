"""One conformance suite for every backend (as scipy's svds tests subclass one base):
prescribed spectra, checked against dense float64 LAPACK."""

from __future__ import annotations

import math
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


def _rank2(m: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X Yᵀ with small integer factors (exact in float32 and float64) and its singular
    values from the 2 x 2 product R_X R_Yᵀ of the factors' QR (independent of any SVD
    of the big matrix)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, size=(m, 2)).astype(float)
    y = rng.integers(-4, 5, size=(n, 2)).astype(float)
    s = np.linalg.svd(np.linalg.qr(x)[1] @ np.linalg.qr(y)[1].T, compute_uv=False)
    return x @ y.T, s


def _low_rank(case: str) -> tuple[np.ndarray, np.ndarray]:
    """An exactly low-rank matrix and its exact singular values (all min(m, n))."""
    kind, _, shape = case.partition("-")
    m, n = (int(t) for t in shape.split("x"))
    sv = np.zeros(min(m, n))
    if kind == "ones":  # σ₁ = √(mn), closed form
        sv[0] = math.sqrt(m * n)
        return np.ones((m, n)), sv
    if kind == "rank1":  # integer outer product: σ₁ = ‖x‖‖y‖
        x = np.arange(1, m + 1) % 7 - 3.0
        y = np.arange(1, n + 1) % 5 - 2.0
        sv[0] = math.sqrt(float(x @ x) * float(y @ y))
        return np.outer(x, y), sv
    if kind == "zero":
        return np.zeros((m, n)), sv
    a, s = _rank2(m, n)
    sv[:2] = s
    if kind in ("huge", "tiny"):  # 2^±997 times the rank-2 matrix: exact scaling
        e = 997 if kind == "huge" else -997
        return np.ldexp(a, e), np.ldexp(sv, e)
    return a, sv


#: Exactly low-rank inputs (issue 26): Krylov breakdown after rank-many steps.
LOW_RANK = ["ones-300x200", "ones-200x300", "ones-256x256", "rank1-120x90", "rank1-90x120",
            "rank2-300x200", "rank2-200x300", "zero-60x40", "huge-80x60", "tiny-80x60"]


class BackendConformance:
    """Subclass with ``name`` (the registry name) and ``dtypes``."""

    name: str = ""
    dtypes: tuple[str, ...] = ("float64",)
    #: Cases on which the backend must converge (exact backends always "converge").
    must_converge: tuple[str, ...] = ("decaying", "tall", "wide", "tiny")
    #: Whether entries near the float64 limits (1e±300) are within the backend's contract.
    extreme_scale: bool = True

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

    @pytest.mark.parametrize("case", LOW_RANK)
    @pytest.mark.parametrize("which", ["largest", "smallest", "all"])
    def test_exactly_low_rank(self, backend, case, which):
        """The exact answer (σ₁..σ_r from closed forms, the rest 0) within the stated
        accuracy: an iterative backend must converge (an invariant subspace is
        convergence, not failure) and its bounds must hold and be tight."""
        if which not in backend.capabilities.singular_values:
            return
        if case.startswith(("huge", "tiny")) and not self.extreme_scale:
            pytest.skip(f"{backend.name} does not claim entries near the float64 limits")
        a, exact = _low_rank(case)
        k = exact.size if which == "all" else min(3, exact.size)
        if backend.name == "fake-gram":
            k = 1
        want = exact if which == "all" else (exact[:k] if which == "largest" else exact[-k:])
        top = float(exact[0]) if exact[0] > 0 else 1.0
        for dtype in self.dtypes:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # no overflow, no NaN
                sv = backend.singular_values(a, k=None if which == "all" else k,
                                             which=which, dtype=dtype)
            assert sv.values.shape == (k,) and np.all(np.isfinite(sv.values))
            err = np.abs(sv.values - want)
            assert np.all(err <= TOLERANCE[dtype][sv.accuracy] * top), (
                case, which, dtype, err.max() / top)
            if sv.accuracy == "bound":
                assert sv.converged, (case, which, dtype, sv.notes)
                assert not sv.notes, sv.notes
                assert np.all(np.isfinite(sv.error_bounds))
                assert np.all(err <= sv.error_bounds * (1 + 1e-9)), (case, which, dtype)
                assert np.all(sv.error_bounds <= TOLERANCE[dtype]["bound"] * top)
                assert sv.error_estimate <= TOLERANCE[dtype]["bound"] * top
            elif sv.error_estimate is not None and which == "all":
                assert err.max() <= sv.error_estimate * (1 + 1e-9) + 1e-300

    @pytest.mark.parametrize("which", ["largest", "smallest"])
    def test_symmetric_low_rank_and_repeated_eigenvalues(self, backend, which):
        """All ones (eigenvalues n and 0 of multiplicity n-1) and the identity (1, n
        times): the k requested values, not fewer, each within its bound."""
        if which not in backend.capabilities.eigenvalues_symmetric:
            pytest.skip(f"{backend.name} has no symmetric eigensolver for {which}")
        n = 64
        for h, lam in ((np.ones((n, n)), np.r_[float(n), np.zeros(n - 1)]),
                       (np.eye(n), np.ones(n)), (np.zeros((n, n)), np.zeros(n))):
            ev = backend.eigenvalues_symmetric(h, k=3, which=which)
            want = lam[:3] if which == "largest" else lam[-3:]
            assert ev.values.shape == (3,)
            np.testing.assert_allclose(ev.values, want, rtol=0, atol=1e-12 * max(lam[0], 1))
            if ev.accuracy == "bound":
                assert ev.converged
                assert np.all(np.abs(ev.values - want) <= ev.error_bounds * (1 + 1e-9))
                assert np.all(ev.error_bounds <= 1e-12 * max(lam[0], 1))

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
    extreme_scale = False  # squares the entries (AᵀA): 1e±300 over- or underflows
