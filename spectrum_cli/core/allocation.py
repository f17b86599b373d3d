"""Layer-wise allocations from per-layer heavy-tail metrics: AlphaPruning's sparsity
ratios and TempBalance's learning-rate factors.

Both map a per-layer α (the heavy-tail exponent of the layer's ESD, λ = σ(W)² of the
weight as stored: :mod:`spectrum_cli.core.esd_estimators`) linearly into a band. A
smaller α means a heavier-tailed, better-trained layer: it is pruned less and trained
with a smaller learning rate. The functions take the per-layer values (and parameter
counts, block keys, eigenvalue counts) and return typed results; they reproduce the
reference code to rounding (``tests/core/allocation_reference.json`` records the
reference run; equal to 1e-12).

``alphapruning_ratios``
    Lu et al., "AlphaPruning: using heavy-tailed self regularization theory for improved
    layer-wise pruning of large language models", NeurIPS 2024; github
    haiquanlu/AlphaPruning, ``lib/prune.py`` ``ww_sparsity`` (lines 152-189, commit
    5f0e9845). With the scores s_i (block means of α, or α itself), the band
    [s1, s2] = [1 - ε, 1 + ε] (``prune_*_ww``, lines 407-408, 416-417, 424-425) and the
    parameter counts P_i:

        r_i = s1 + (s_i - min s) / (max s - min s) · (s2 - s1)
        ratio_i = r_i · S · Σ_j P_j / Σ_j P_j r_j,

    so that the parameter-weighted mean Σ P_i ratio_i / Σ P_i is the target sparsity S.
    Defaults (``main.py`` lines 40-43): metric ``alpha_peak``, ε = 0.3, mapping
    ``block_wise``; S has no default (``--sparsity_ratio``; the scripts use 0.7).

``tempbalance_factors``
    Zhou et al., "Temperature balancing, layer-wise weight analysis, and neural network
    training", NeurIPS 2023; github YefanZhou/TempBalance, ``tempbalance.py``
    ``Tempbalance.build_optimizer_param_group`` (lines 123-209) and ``get_layer_temps``
    (``tb_linear_map``, lines 329-337, commit 9f0d9c7e). The first and the last layer
    (``remove_first_layer``/``remove_last_layer``, default True) and the layers with
    fewer than 50 eigenvalues (``eigs_thresh``) keep the global learning rate (factor 1);
    the others get

        f_i = np.interp(α_i, [min α, max α], [lr_min_ratio, lr_max_ratio])

    (min and max over the tuned layers; band 0.5-1.5 by default, lines 25-26). The
    factor multiplies the global (scheduled) learning rate: the reference computes
    ``np.interp(α, range, [lr_min_ratio·lr, lr_max_ratio·lr])``, the same up to one
    rounding. Its default metric is ``alpha_hill`` (``pl_fitting='median'``).

Quirks of the reference code, reproduced unless said otherwise:

1. **Block means by fixed-size chunks** (AlphaPruning, ``lib/prune.py`` lines 162-170):
   ``ww_sparsity`` does not know the blocks of a layer; it averages consecutive chunks
   of ``int(n_layers / n_blocks)`` values. That is the block mean when every block has
   the same number of layers (every model the repository prunes); otherwise the chunks
   straddle blocks (or the list's length changes and the product with the parameter
   counts fails). Here the means are taken over the layers that share a block key, and
   :attr:`SparsityAllocation.notes` says so when the blocks differ in size.
2. **Ratios outside [0, 1] are kept** (AlphaPruning, lines 181-184): the band is
   rescaled after the mapping, so the ratios lie in scaler·[1 - ε, 1 + ε]; nothing
   clips them (with S = 0.8, ε = 0.3 a ratio can exceed 1). Reproduced; the caller may
   warn (:attr:`SparsityAllocation.out_of_range`).
3. **All scores equal** (AlphaPruning, line 181): max s = min s divides 0 by 0, every
   ratio is NaN and the pruning functions fail (``int(n · nan)``). Not reproduced:
   every layer gets S (the limit of the mapping: any constant r is rescaled to S), and
   :attr:`SparsityAllocation.degenerate` is True.
4. **The target in float32** (AlphaPruning, line 182): ``torch.sum(prunables) *
   args.sparsity_ratio`` multiplies an int64 tensor by a Python float, which gives
   torch's default dtype, float32, so the reference's ratios carry a relative error of
   up to 6e-8 (6.3e-8 on LLaMA-7B at S = 0.7) and their weighted mean misses S by as
   much. spectrum computes in float64; the reference JSON holds both runs.
5. **The top of the band when all α are equal** (TempBalance, line 337): ``np.interp``
   with ``xp = [a, a]`` returns ``fp[1]``, so every tuned layer gets ``lr_max_ratio``
   (also when a single layer is tuned). Reproduced; :attr:`LearningRateAllocation.notes`
   says so.
6. **Order of the exclusions** (TempBalance, lines 136-147): the first and the last
   layer are dropped by position before the eigenvalue filter, so a first layer with
   few eigenvalues does not make the second one "first". Reproduced.
7. **Undefined α**: the references would carry NaN or inf (or their 0.0 placeholder)
   into the min/max and spoil every layer. Here a layer without a finite α is untuned
   (TempBalance: factor 1, with the reason) or refused (AlphaPruning: ``ValueError``
   naming the layers), never mapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

#: AlphaPruning's defaults (``main.py`` lines 40-43).
ALPHAPRUNING_METRIC = "alpha_peak"
ALPHAPRUNING_EPSILON = 0.3
MAPPINGS = ("block_wise", "layer_wise")
#: TempBalance's defaults (``tempbalance.py`` lines 20-26).
TEMPBALANCE_METRIC = "alpha_hill"
LR_MIN_RATIO, LR_MAX_RATIO = 0.5, 1.5
EIGS_THRESH = 50


@dataclass(frozen=True)
class SparsityAllocation:
    """AlphaPruning's per-layer sparsity ratios (``ratios[i]`` for layer i).

    ``scores`` are the values mapped (block means or the layers' α), ``band`` is
    (1 - ε, 1 + ε) and ``scaler`` the factor that keeps the parameter-weighted mean at
    ``sparsity``; ``weighted_mean`` is that mean as computed (S to rounding)."""

    ratios: tuple[float, ...]
    scores: tuple[float, ...]
    sparsity: float
    epsilon: float
    mapping: str
    band: tuple[float, float]
    scaler: float
    weighted_mean: float
    degenerate: bool = False
    notes: tuple[str, ...] = ()

    @property
    def out_of_range(self) -> tuple[int, ...]:
        """Layers whose ratio is outside [0, 1] (quirk 2: kept as the reference keeps
        them)."""
        return tuple(i for i, r in enumerate(self.ratios) if not 0.0 <= r <= 1.0)


@dataclass(frozen=True)
class LearningRateAllocation:
    """TempBalance's per-layer learning-rate factors (``factors[i]`` for layer i; 1.0
    where untuned, ``reasons[i]`` saying why)."""

    factors: tuple[float, ...]
    tuned: tuple[bool, ...]
    reasons: tuple[str | None, ...]
    band: tuple[float, float]
    score_range: tuple[float, float] | None
    eigs_thresh: int
    notes: tuple[str, ...] = ()


def _iv_values(name: str, values: Sequence[float | None]) -> np.ndarray:
    """``values`` as float64 (None as NaN); ValueError naming the argument."""
    try:
        out = np.array([math.nan if v is None else float(v) for v in values],
                       dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a sequence of numbers, got {values!r}") from None
    return out


def alphapruning_ratios(metrics: Sequence[float], params: Sequence[int],
                        blocks: Sequence[Hashable] | None = None, *, sparsity: float,
                        epsilon: float = ALPHAPRUNING_EPSILON,
                        mapping: str = "block_wise") -> SparsityAllocation:
    """AlphaPruning's layer-wise sparsity ratios (module docstring, quirks 1-4).

    Args:
        metrics: each layer's α (``alpha_peak`` in the reference), in module order.
        params: each layer's parameter count (``weight.numel()``).
        blocks: each layer's block key (needed for ``block_wise``); the layers of one
            block are averaged together, in their order.
        sparsity: the target S, the parameter-weighted mean of the ratios, in [0, 1].
        epsilon: the half-width ε of the band [1 - ε, 1 + ε], in [0, 1).
        mapping: ``block_wise`` (block means) or ``layer_wise`` (each layer's own α).

    Raises:
        ValueError: an argument out of range or of the wrong length, or a layer with no
            finite α (named by position).

    >>> a = alphapruning_ratios([2.0, 4.0, 3.0, 5.0], [10, 10, 10, 10], [0, 0, 1, 1],
    ...                         sparsity=0.5)
    >>> [round(r, 12) for r in a.ratios], round(a.weighted_mean, 12)
    ([0.35, 0.35, 0.65, 0.65], 0.5)
    """
    s = _iv_values("metrics", metrics)
    p = np.asarray(params)
    n = s.size
    if n == 0:
        raise ValueError("metrics: expected at least one layer, got none")
    if p.shape != (n,) or p.dtype.kind not in "iu" or (p <= 0).any():
        raise ValueError(f"params: expected {n} positive integers, got {list(params)!r}")
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping: expected one of {MAPPINGS}, got {mapping!r}")
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity <= 1.0):
        raise ValueError(f"sparsity: expected a number in [0, 1], got {sparsity!r}")
    if not (isinstance(epsilon, (int, float)) and 0.0 <= epsilon < 1.0):
        raise ValueError(f"epsilon: expected a number in [0, 1), got {epsilon!r}")
    bad = [i for i in range(n) if not math.isfinite(s[i])]
    if bad:
        raise ValueError(f"metrics: layers {bad} have no finite value (quirk 7)")
    notes: list[str] = []
    if mapping == "block_wise":
        if blocks is None or len(blocks) != n:
            raise ValueError(f"blocks: expected {n} block keys for mapping='block_wise', "
                             f"got {None if blocks is None else len(blocks)}")
        members: dict[Hashable, list[int]] = {}
        for i, b in enumerate(blocks):
            members.setdefault(b, []).append(i)
        scores = np.empty(n)
        for idx in members.values():
            scores[idx] = np.mean(s[idx])  # as the reference: np.mean of the chunk
        sizes = {len(v) for v in members.values()}
        if len(sizes) > 1:
            notes.append(f"blocks of {min(sizes)} to {max(sizes)} layers: means over each "
                         "block's layers (the reference averages fixed-size chunks of "
                         "consecutive layers, which straddle such blocks: quirk 1)")
    else:
        scores = s
    s1, s2 = 1.0 - epsilon, 1.0 + epsilon  # as prune_*_ww computes them
    lo, hi = float(scores.min()), float(scores.max())
    total = float(p.sum())
    if hi == lo:
        ratios = np.full(n, float(sparsity))
        notes.append("all scores are equal: every layer gets the target sparsity (the "
                     "reference divides 0 by 0 here: NaN ratios, quirk 3)")
        scaler, degenerate = math.nan, True
    else:
        r = ((scores - lo) / (hi - lo)) * (s2 - s1) + s1
        scaler = total * sparsity / float(np.sum(p * r))
        ratios = r * scaler
        degenerate = False
    mean = float(np.sum(p * ratios)) / total
    return SparsityAllocation(tuple(float(x) for x in ratios), tuple(float(x) for x in scores),
                              float(sparsity), float(epsilon), mapping, (s1, s2),
                              float(scaler), mean, degenerate, tuple(notes))


def tempbalance_factors(metrics: Sequence[float | None], eigen_counts: Sequence[int], *,
                        lr_min_ratio: float = LR_MIN_RATIO,
                        lr_max_ratio: float = LR_MAX_RATIO,
                        eigs_thresh: int = EIGS_THRESH, remove_first: bool = True,
                        remove_last: bool = True) -> LearningRateAllocation:
    """TempBalance's learning-rate factors (module docstring, quirks 5-7).

    Args:
        metrics: each layer's α (``alpha_hill`` in the reference), in module order;
            None or NaN: undefined (the layer is untuned).
        eigen_counts: each layer's number of eigenvalues (``len(eigs)``).
        lr_min_ratio, lr_max_ratio: the band of factors (0 < min <= max).
        eigs_thresh: layers with fewer eigenvalues are untuned.
        remove_first, remove_last: leave the first / last layer untuned.

    Raises:
        ValueError: an argument out of range or of the wrong length.

    >>> t = tempbalance_factors([9.0, 2.0, 3.0, 4.0, 9.0], [64] * 5)
    >>> t.factors, t.tuned
    ((1.0, 0.5, 1.0, 1.5, 1.0), (False, True, True, True, False))
    """
    s = _iv_values("metrics", metrics)
    n = s.size
    counts = np.asarray(eigen_counts)
    if counts.shape != (n,) or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"eigen_counts: expected {n} non-negative integers, got "
                         f"{list(eigen_counts)!r}")
    if not (isinstance(lr_min_ratio, (int, float)) and isinstance(lr_max_ratio, (int, float))
            and 0.0 < lr_min_ratio <= lr_max_ratio and math.isfinite(lr_max_ratio)):
        raise ValueError(f"lr_min_ratio, lr_max_ratio: expected 0 < min <= max, got "
                         f"{lr_min_ratio!r}, {lr_max_ratio!r}")
    if not (isinstance(eigs_thresh, int) and eigs_thresh >= 0):
        raise ValueError(f"eigs_thresh: expected a non-negative integer, got {eigs_thresh!r}")
    reasons: list[str | None] = [None] * n
    if n and remove_first:
        reasons[0] = "first layer (remove_first_layer)"
    if n and remove_last and reasons[n - 1] is None:
        reasons[n - 1] = "last layer (remove_last_layer)"
    for i in range(n):
        if reasons[i] is None and counts[i] < eigs_thresh:
            reasons[i] = f"{int(counts[i])} eigenvalues < {eigs_thresh}"
        if reasons[i] is None and not math.isfinite(s[i]):
            reasons[i] = "no finite alpha"
    tuned = [r is None for r in reasons]
    factors = np.ones(n)
    notes: list[str] = []
    score_range = None
    if any(tuned):
        x = s[tuned]
        score_range = (float(min(x)), float(max(x)))  # as get_layer_temps: min(), max()
        factors[tuned] = np.interp(x, score_range, [lr_min_ratio, lr_max_ratio])
        if score_range[0] == score_range[1]:
            notes.append(f"all tuned layers have the same alpha: np.interp gives each the "
                         f"top of the band, {lr_max_ratio:g} (the reference's behaviour, "
                         "quirk 5)")
    return LearningRateAllocation(tuple(float(f) for f in factors), tuple(tuned),
                                  tuple(reasons), (float(lr_min_ratio), float(lr_max_ratio)),
                                  score_range, eigs_thresh, tuple(notes))
