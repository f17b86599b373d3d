"""AlphaPruning's sparsity ratios and TempBalance's learning-rate factors
(spectrum_cli/core/allocation.py): equal to the reference code run on the same
per-layer values (allocation_reference.json, made by allocation_reference_run.py) to
1e-12; the quirks as documented; properties (mean kept at S, band respected,
monotone in α)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrum_cli.core.allocation import alphapruning_ratios, tempbalance_factors

REF = json.loads((Path(__file__).parent / "allocation_reference.json").read_text())
TOL = 1e-12


def test_reference_run_is_documented() -> None:
    for method in ("alphapruning", "tempbalance"):
        ref = REF["references"][method]
        assert ref["repository"].startswith("https://github.com/")
        assert len(ref["commit"]) == 40 and ref["file"] and ref["function"]
    assert "allocation_reference_run.py" in REF["command"]


@pytest.mark.parametrize("case", REF["alphapruning"], ids=lambda c: c["name"])
def test_alphapruning_equals_the_reference(case: dict) -> None:
    a = alphapruning_ratios(case["metrics"], case["params"], case["blocks"],
                            sparsity=case["sparsity_ratio"], epsilon=case["epsilon"],
                            mapping=case["mapping_type"])
    assert np.max(np.abs(np.array(a.ratios) - case["ratios"])) <= TOL
    assert a.weighted_mean == pytest.approx(case["sparsity_ratio"], abs=TOL)
    # quirk 4: the repository's own float32 target is off by at most ~1e-7 (relative)
    r32 = np.array(case["default_dtype_ratios"])
    assert np.max(np.abs(r32 / np.array(a.ratios) - 1)) < 2e-7


def test_the_float32_target_of_the_reference_is_visible_on_llama_7b() -> None:
    case = REF["alphapruning"][0]
    assert case["name"].startswith("llama-7b")
    rel = np.abs(np.array(case["default_dtype_ratios"]) / np.array(case["ratios"]) - 1)
    assert 1e-9 < rel.max() < 1e-7


@pytest.mark.parametrize("case", REF["tempbalance"], ids=lambda c: c["name"])
def test_tempbalance_equals_the_reference(case: dict) -> None:
    t = tempbalance_factors(case["metrics"], case["eigs_num"],
                            lr_min_ratio=case["lr_min_ratio"],
                            lr_max_ratio=case["lr_max_ratio"])
    f = np.array(t.factors)
    assert np.max(np.abs(f - case["lr_untuned_1.0"])) <= TOL
    assert np.max(np.abs(f * 0.1 - case["lr_untuned_0.1"])) <= TOL
    assert sum(t.tuned) == case["tuned_count"]


# ---- quirks and edges ---------------------------------------------------------------

def test_equal_scores_give_the_target_everywhere_not_nan() -> None:
    a = alphapruning_ratios([3.0] * 4, [5, 6, 7, 8], [0, 0, 1, 1], sparsity=0.4)
    assert a.ratios == (0.4,) * 4 and a.degenerate and "quirk 3" in a.notes[0]


def test_unequal_blocks_are_grouped_by_key_and_said() -> None:
    a = alphapruning_ratios([1.0, 3.0, 5.0], [1, 1, 1], ["b0", "b0", "b1"], sparsity=0.5)
    assert a.scores == (2.0, 2.0, 5.0)
    assert any("quirk 1" in n for n in a.notes)


def test_ratios_above_one_are_kept_and_listed() -> None:
    a = alphapruning_ratios([1.0, 9.0], [1, 1], mapping="layer_wise", sparsity=0.9,
                            epsilon=0.5)
    assert a.ratios[1] > 1 and a.out_of_range == (1,)


def test_tempbalance_drops_first_and_last_before_the_eigenvalue_filter() -> None:
    t = tempbalance_factors([5.0, 2.0, 4.0, 3.0, 7.0], [10, 60, 60, 49, 60])
    assert t.tuned == (False, True, True, False, False)
    assert t.reasons[0].startswith("first") and t.reasons[3].startswith("49 eigenvalues")
    assert t.factors == (1.0, 0.5, 1.5, 1.0, 1.0)


def test_tempbalance_leaves_undefined_alpha_untuned() -> None:
    t = tempbalance_factors([1.0, None, float("nan"), 2.0, 3.0, 1.0], [99] * 6)
    assert t.tuned == (False, False, False, True, True, False)
    assert t.reasons[1] == "no finite alpha" and t.factors[3:5] == (0.5, 1.5)


def test_tempbalance_one_tuned_layer_gets_the_top_of_the_band() -> None:
    t = tempbalance_factors([1.0, 4.0, 1.0], [99] * 3)
    assert t.factors == (1.0, 1.5, 1.0) and "quirk 5" in t.notes[0]


@pytest.mark.parametrize("kwargs, word", [
    ({"metrics": [], "params": []}, "metrics"),
    ({"metrics": [1.0, 2.0], "params": [1]}, "params"),
    ({"metrics": [1.0, 2.0], "params": [1, 0]}, "params"),
    ({"metrics": [1.0, float("nan")], "params": [1, 1]}, "metrics"),
    ({"metrics": [1.0, 2.0], "params": [1, 1], "sparsity": 1.5}, "sparsity"),
    ({"metrics": [1.0, 2.0], "params": [1, 1], "epsilon": 1.0}, "epsilon"),
    ({"metrics": [1.0, 2.0], "params": [1, 1], "mapping": "row"}, "mapping"),
    ({"metrics": [1.0, 2.0], "params": [1, 1], "mapping": "block_wise"}, "blocks"),
])
def test_alphapruning_refuses_bad_arguments(kwargs: dict, word: str) -> None:
    args = {"sparsity": 0.5, "mapping": "layer_wise", **kwargs}
    with pytest.raises(ValueError, match=word):
        alphapruning_ratios(args.pop("metrics"), args.pop("params"), **args)


def test_tempbalance_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="eigen_counts"):
        tempbalance_factors([1.0, 2.0], [3])
    with pytest.raises(ValueError, match="lr_min_ratio"):
        tempbalance_factors([1.0], [3], lr_min_ratio=2.0, lr_max_ratio=1.0)


# ---- properties ---------------------------------------------------------------------

layers = st.integers(2, 24).flatmap(lambda n: st.tuples(
    st.lists(st.floats(1.01, 12.0), min_size=n, max_size=n),
    st.lists(st.integers(1, 10**7), min_size=n, max_size=n),
    st.lists(st.integers(0, 3), min_size=n, max_size=n)))


@settings(max_examples=40, deadline=None)
@given(layers, st.floats(0.0, 1.0), st.floats(0.0, 0.9), st.sampled_from(["block_wise",
                                                                           "layer_wise"]))
def test_alphapruning_keeps_the_weighted_mean_and_orders_by_alpha(data, s, eps, mapping):
    alpha, params, blocks = data
    a = alphapruning_ratios(alpha, params, sorted(blocks), sparsity=s, epsilon=eps,
                            mapping=mapping)
    p, r, sc = np.array(params, float), np.array(a.ratios), np.array(a.scores)
    assert np.sum(p * r) / np.sum(p) == pytest.approx(s, abs=1e-12)
    # a larger score (block mean or alpha) never gets a smaller ratio (heavier tail:
    # better trained, pruned less)
    order = np.argsort(sc, kind="stable")
    assert np.all(np.diff(r[order]) >= -1e-12 * max(1.0, r.max()))
    if not a.degenerate and s > 1e-6:  # the band: max/min = (1+ε)/(1-ε)
        assert r.max() / r.min() == pytest.approx((1 + eps) / (1 - eps), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1.01, 12.0), min_size=1, max_size=30),
       st.floats(0.05, 1.0), st.floats(1.0, 3.0), st.data())
def test_tempbalance_stays_in_the_band_and_orders_by_alpha(alpha, lo, hi, data):
    counts = data.draw(st.lists(st.integers(0, 200), min_size=len(alpha),
                                max_size=len(alpha)))
    t = tempbalance_factors(alpha, counts, lr_min_ratio=lo, lr_max_ratio=hi)
    f, a, tuned = np.array(t.factors), np.array(alpha), np.array(t.tuned)
    assert np.all(f[~tuned] == 1.0)
    assert np.all((f[tuned] >= lo) & (f[tuned] <= hi))
    order = np.argsort(a[tuned], kind="stable")
    assert np.all(np.diff(f[tuned][order]) >= -1e-15)
    if tuned.any() and a[tuned].min() < a[tuned].max():
        assert f[tuned].min() == lo and f[tuned].max() == hi
