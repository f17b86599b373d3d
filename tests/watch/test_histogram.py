"""The singular-value histogram a batch/watch record carries (for TensorBoard)."""

from __future__ import annotations

import numpy as np

from spectrum_cli.api import analyze_arrays
from spectrum_cli.runs.indicators import SV_HIST_BINS, SV_HIST_HI, SV_HIST_LO, sv_histogram
from spectrum_cli.runs.watch import sv_values


def test_counts_of_log10_sigma_in_fixed_bins():
    exps = [-9.0, -2.975, 0.025, 1.025, 5.0]  # below, three bin centres, above
    result = analyze_arrays({"d": np.diag([10.0 ** e for e in exps]),
                             "z": np.zeros((2, 3))}).result  # σ = 0 twice: below the range
    h = sv_histogram(result)
    assert (h["lo"], h["hi"], len(h["counts"])) == (SV_HIST_LO, SV_HIST_HI, SV_HIST_BINS)
    width = (SV_HIST_HI - SV_HIST_LO) / SV_HIST_BINS
    want = np.zeros(SV_HIST_BINS, dtype=int)
    for e in exps[1:4]:
        want[int((e - SV_HIST_LO) // width)] += 1
    assert h["counts"] == want.tolist()
    assert (h["below"], h["above"]) == (3, 1)
    values = np.sort(sv_values(h))  # each σ at its bin's centre, the rest at the ends
    assert np.allclose(values, [SV_HIST_LO] * 3 + exps[1:4] + [SV_HIST_HI], rtol=0,
                       atol=1e-12)


def test_bad_histograms_give_none():
    for bad in (None, {}, {"lo": 0, "hi": 1, "counts": [-1]}, {"lo": 1, "hi": 0,
                                                               "counts": [1]},
                {"lo": 0, "hi": 1, "counts": ["x"]}, {"lo": 0, "hi": 1, "counts": [0, 0]}):
        assert sv_values(bad) is None
