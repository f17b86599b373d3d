"""Stochastic Lanczos quadrature: estimates land inside their own error bars in at
least 95% of seeded trials (the bars claim 99%)."""

import numpy as np

from spectrum_backends.lanczos import LanczosBackend
from tests.helpers import with_spectrum


def test_slq_entropy_coverage():
    backend = LanczosBackend()
    rng = np.random.default_rng(2026)
    inside = total = 0
    for trial in range(60):
        m, n = [(150, 60), (60, 150), (120, 120), (300, 40)][trial % 4]
        k = min(m, n)
        profile = trial % 3
        if profile == 0:
            s = np.geomspace(1, 10 ** rng.uniform(-4, -1), k)
        elif profile == 1:
            s = rng.uniform(0.1, 1.0, k)
        else:
            s = 1.0 / (1 + np.arange(k)) ** rng.uniform(0.3, 1.5)
        a = with_spectrum(rng, (m, n), s)
        p = s**2 / np.sum(s**2)
        exact = float(-np.sum(p * np.log(p)))
        est = backend.spectral_entropy(a, float(np.sum(s**2)), seed=trial)
        assert est.confidence == 0.99 and est.error_bar > 0
        inside += abs(est.value - exact) <= est.error_bar
        total += 1
    assert inside / total >= 0.95, f"{inside}/{total} inside their error bars"


def test_slq_is_exact_when_steps_exhaust_the_space():
    rng = np.random.default_rng(0)
    s = np.array([3.0, 2.0, 1.0, 0.5])
    a = with_spectrum(rng, (30, 4), s)
    p = s**2 / np.sum(s**2)
    est = LanczosBackend().spectral_entropy(a, float(np.sum(s**2)), probes=8, steps=10)
    # 4 steps span the space: every probe's quadrature is exact, only sampling remains.
    assert abs(est.value + np.sum(p * np.log(p))) <= est.error_bar
