"""Loss spikes and how well each indicator separated and anticipated them.

Spike rule (configurable): checkpoint i is *unstable* when its loss exceeds
``factor`` x the minimum loss of the previous ``window`` checkpoints (Cohen et al.,
"Gradient descent on neural networks typically occurs at the edge of stability",
ICLR 2021, describe such non-monotone loss; the rule is ours). Contiguous unstable
checkpoints form an *instability window*; its first checkpoint is the *onset*. The
first ``window`` checkpoints have no history and are neither stable nor unstable.

Scorecard, per indicator (no built-in claim about which works):

- ROC AUC separating unstable from stable checkpoints, the Mann-Whitney statistic
  P(x_unstable > x_stable) + ½ P(tie) (Hanley & McNeil, Radiology 143, 1982); 0.5 is
  chance, values below 0.5 mean the indicator runs the other way.
- Threshold crossings: the threshold is 1 for edge-of-stability ratios and spectral
  radii (their natural boundary), otherwise the 95th percentile of the indicator over the
  stable checkpoints (in-sample: say so when reporting). For each onset, the lead time
  is onset step minus the step of the last upward crossing since the previous window
  ended; an indicator still above its threshold since that point gets a censored lead
  (">="), one below it at the checkpoint before the onset did not warn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

NATURAL_THRESHOLDS = (("eos_ratio", 1.0), ("spectral_radius", 1.0))


@dataclass(frozen=True)
class SpikeRule:
    factor: float = 2.0
    window: int = 10

    def __post_init__(self) -> None:
        if not self.factor > 1.0:
            raise ValueError(f"factor: expected > 1, got {self.factor!r}")
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(f"window: expected a positive integer, got {self.window!r}")


@dataclass(frozen=True)
class Spikes:
    unstable: np.ndarray      # bool per checkpoint
    defined: np.ndarray       # bool: the rule had enough history
    onsets: list[int]         # checkpoint indices
    windows: list[tuple[int, int]]  # [start, end] indices, inclusive


def detect_spikes(loss: Sequence[float], rule: SpikeRule = SpikeRule()) -> Spikes:
    """Apply the spike rule to a loss series (NaN/inf losses count as unstable)."""
    x = np.asarray(loss, dtype=np.float64)
    n = x.size
    unstable = np.zeros(n, dtype=bool)
    defined = np.zeros(n, dtype=bool)
    for i in range(rule.window, n):
        past = x[i - rule.window:i]
        past = past[np.isfinite(past)]
        if past.size == 0:
            continue
        defined[i] = True
        unstable[i] = (not math.isfinite(x[i])) or x[i] > rule.factor * past.min()
    windows, onsets = [], []
    i = 0
    while i < n:
        if unstable[i]:
            j = i
            while j + 1 < n and unstable[j + 1]:
                j += 1
            windows.append((i, j))
            onsets.append(i)
            i = j + 1
        else:
            i += 1
    return Spikes(unstable, defined, onsets, windows)


def roc_auc(values: np.ndarray, positive: np.ndarray) -> float:
    """P(x_pos > x_neg) + ½ P(tie) over finite values; NaN when a class is empty."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    pos, neg = v[ok & positive], v[ok & ~positive]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def threshold_for(name: str, values: np.ndarray, stable: np.ndarray) -> tuple[float, str]:
    for key, value in NATURAL_THRESHOLDS:
        if key in name:
            return value, "natural"
    v = values[stable & np.isfinite(values)]
    if v.size == 0:
        return math.nan, "none"
    return float(np.percentile(v, 95)), "p95 of stable checkpoints"


@dataclass
class Score:
    indicator: str
    auc: float
    threshold: float
    threshold_kind: str
    leads: list[float | None] = field(default_factory=list)  # per onset, in steps
    censored: list[bool] = field(default_factory=list)

    @property
    def warned(self) -> int:
        return sum(1 for lead in self.leads if lead is not None)

    @property
    def median_lead(self) -> float | None:
        leads = [lead for lead in self.leads if lead is not None]
        return float(np.median(leads)) if leads else None


def score(name: str, values: Sequence[float], steps: Sequence[int], spikes: Spikes) -> Score:
    """AUC and lead times of one indicator (see the module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    st = np.asarray(steps)
    stable = spikes.defined & ~spikes.unstable
    auc = roc_auc(v, spikes.unstable & spikes.defined) if spikes.onsets else math.nan
    thr, kind = threshold_for(name, v, stable)
    out = Score(name, auc, thr, kind)
    previous_end = -1
    for (start, end) in spikes.windows:
        lead, censored = None, False
        before = start - 1
        if math.isfinite(thr) and before > previous_end and np.isfinite(v[before]) \
                and v[before] > thr:
            k = before
            while k - 1 > previous_end and np.isfinite(v[k - 1]) and v[k - 1] > thr:
                k -= 1
            censored = k - 1 <= previous_end
            lead = float(st[start] - st[k])
        out.leads.append(lead)
        out.censored.append(censored)
        previous_end = end
    return out
