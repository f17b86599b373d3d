"""WeightWatcher's columns as spectrum metrics (the ``spectrum.metrics`` entry-point group).

Each object here keeps the metric protocol of :class:`spectrum_cli.core.metrics.Metric`
(``name``, ``compute``, ``needs``, ``description``, ``context``) and adds ``explain``:
for a matrix where ``compute`` gives None (undefined), ``explain(values, context)``
says why. The numerics are :mod:`spectrum_cli.core.esd` and
:mod:`spectrum_cli.core.marchenko_pastur` and :mod:`spectrum_cli.core.randomization`;
the fits are memoized there, so the metrics
of one spectrum share one power-law fit and one Marchenko-Pastur fit.

All but ``rand_distance`` need the full spectrum (``needs="singular_values"``): a
backend of extremes lists them as unavailable. ``rand_distance`` needs the matrix and
two more eigen-decompositions (of its Gram matrix and of the permuted one's); beyond the
dense limits of ``--backend auto`` it refuses with :class:`MetricUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from spectrum_cli.core import esd, measure
from spectrum_cli.core.marchenko_pastur import fit_marchenko_pastur
from spectrum_cli.core.randomization import rand_distance as _rand

#: Contract names -> one-line description, in report order.
_DESCRIPTIONS: dict[str, str] = {
    "alpha": "power-law exponent of the ESD tail (Clauset et al. MLE, xmin by min KS)",
    "alpha_xmin": "the eigenvalue where the power-law tail starts",
    "alpha_ks_distance": "KS distance D of the power-law fit",
    "alpha_sigma": "(alpha - 1)/sqrt(n): the MLE's standard error",
    "alpha_tail_count": "eigenvalues >= alpha_xmin",
    "alpha_ci_low": "lower end of the exact 95% interval for alpha at alpha_xmin",
    "alpha_ci_high": "upper end of the exact 95% interval for alpha at alpha_xmin",
    "alpha_weighted": "alpha * log10(lambda_max)",
    "log_norm": "log10 of the sum of the eigenvalues (||W||_F^2)",
    "log_spectral_norm": "log10 lambda_max (sigma_max^2)",
    "log_alpha_norm": "log10 sum lambda_i^alpha",
    "mp_bulk_max": "Marchenko-Pastur bulk edge lambda_+ of the fitted bulk",
    "mp_num_spikes": "eigenvalues beyond lambda_+ plus its Tracy-Widom margin",
    "mp_softrank": "lambda_+ / lambda_max",
    "mp_sigma": "sigma of the Marchenko-Pastur fit (ESD rescaled to mean 1)",
    "rand_distance": "Jensen-Shannon distance to the ESD of the entry-permuted matrix",
}

#: The seed of ``rand_distance``'s permutation when the context carries none.
DEFAULT_SEED = 0


class MetricUnavailable(RuntimeError):
    """This metric cannot be computed for this matrix here (too large, say); the
    registry records the message as the reason (``unavailable`` marks it as such)."""

    unavailable = True


@dataclass(frozen=True)
class ESDMetric:
    """One metric of the ESD (the :class:`~spectrum_cli.core.metrics.Metric` protocol
    plus ``explain``)."""

    name: str
    compute: Callable[..., Any]
    explain: Callable[..., str | None]
    needs: str = "singular_values"
    context: bool = True
    opt_in: str = ""

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self.name]


def _evals(s: np.ndarray) -> np.ndarray:
    return esd.eigenvalues(s)


def _power_law(s: np.ndarray) -> esd.PowerLawFit:
    return esd.fit_power_law(_evals(s))


def _mp(s: np.ndarray, ctx: Any) -> Any:
    return fit_marchenko_pastur(_evals(s), tuple(ctx.shape))


def _fit_field(field: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def compute(s: np.ndarray, ctx: Any) -> float | int | None:
        return getattr(_power_law(s), field)

    def explain(s: np.ndarray, ctx: Any) -> str | None:
        return _power_law(s).reason

    return compute, explain


def _interval_end(end: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def compute(s: np.ndarray, ctx: Any) -> float | None:
        fit = _power_law(s)
        return None if fit.interval is None else fit.interval[end]

    def explain(s: np.ndarray, ctx: Any) -> str | None:
        fit = _power_law(s)
        return fit.reason or (None if fit.interval else "tail too small for an interval")

    return compute, explain


def _norm_field(field: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def compute(s: np.ndarray, ctx: Any) -> float | None:
        return getattr(esd.log_norms(_evals(s), _power_law(s).alpha), field)

    def explain(s: np.ndarray, ctx: Any) -> str | None:
        if esd.log_norms(_evals(s), None).log_norm is None:
            return "zero matrix (or non-finite eigenvalues): no logarithm"
        return _power_law(s).reason if field in ("log_alpha_norm", "alpha_weighted") else None

    return compute, explain


def _mp_field(field: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def compute(s: np.ndarray, ctx: Any) -> float | int | None:
        return getattr(_mp(s, ctx), field)

    def explain(s: np.ndarray, ctx: Any) -> str | None:
        return _mp(s, ctx).reason

    return compute, explain


def _dense_limit(shape: tuple[int, int]) -> str | None:
    m, n = shape
    entries, dim = measure.AUTO_DENSE_MAX_ENTRIES, measure.AUTO_DENSE_MAX_DIM
    if m * n > entries or min(m, n) > dim:
        return (f"a {m}x{n} matrix is beyond the dense limits (m*n <= "
                f"{entries}, min(m, n) <= {dim}); "
                "rand_distance needs two dense eigen-decompositions")
    return None


def _rand_distance(a: np.ndarray, ctx: Any) -> float | None:
    too_big = _dense_limit(a.shape)
    if too_big:
        raise MetricUnavailable(too_big)
    s = getattr(ctx, "singular_values", None)
    evals = None if s is None else _evals(s)
    return _rand(a, int(getattr(ctx, "seed", None) or DEFAULT_SEED), evals)


def _rand_explain(a: np.ndarray, ctx: Any) -> str | None:
    return _dense_limit(a.shape) or "zero matrix: no ESD"


def _make(name: str, pair: tuple[Callable[..., Any], Callable[..., Any]],
          needs: str = "singular_values", opt_in: str = "") -> ESDMetric:
    return ESDMetric(name, pair[0], pair[1], needs, opt_in=opt_in)


alpha = _make("alpha", _fit_field("alpha"))
alpha_xmin = _make("alpha_xmin", _fit_field("xmin"))
alpha_ks_distance = _make("alpha_ks_distance", _fit_field("ks_distance"))
alpha_sigma = _make("alpha_sigma", _fit_field("sigma"))
alpha_tail_count = _make("alpha_tail_count", _fit_field("tail_count"))
alpha_ci_low = _make("alpha_ci_low", _interval_end(0))
alpha_ci_high = _make("alpha_ci_high", _interval_end(1))
alpha_weighted = _make("alpha_weighted", _norm_field("alpha_weighted"))
log_norm = _make("log_norm", _norm_field("log_norm"))
log_spectral_norm = _make("log_spectral_norm", _norm_field("log_spectral_norm"))
log_alpha_norm = _make("log_alpha_norm", _norm_field("log_alpha_norm"))
mp_bulk_max = _make("mp_bulk_max", _mp_field("bulk_max"))
mp_num_spikes = _make("mp_num_spikes", _mp_field("num_spikes"))
mp_softrank = _make("mp_softrank", _mp_field("softrank"))
mp_sigma = _make("mp_sigma", _mp_field("sigma"))
#: One more spectrum per matrix: computed under ``--randomize`` only.
rand_distance = _make("rand_distance", (_rand_distance, _rand_explain), needs="matrix",
                      opt_in="randomize")

#: Every metric of this module, in the order defined.
ALL: tuple[ESDMetric, ...] = tuple(v for v in list(globals().values())
                                   if isinstance(v, ESDMetric))
#: Contract names -> one-line description, in report order (read-only; from ``ALL``).
ESD_METRICS: Mapping[str, str] = MappingProxyType({m.name: m.description for m in ALL})
