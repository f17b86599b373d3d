"""Per-matrix metrics from the singular values (and, for square matrices, eigenvalues).

The names in :data:`METRICS` are the contract for JSON, HDF5 and ``--fail-on``. There is
one registry, the ``spectrum.metrics`` entry-point group: the built-in metrics are
registered there in ``pyproject.toml`` exactly as a plugin's are, each a :class:`Metric`
(or a function, whose docstring's first line is its description). :data:`METRICS` is
derived from it (see :func:`builtin_metrics`) plus the few metrics that
:func:`~spectrum_cli.core.measure.analyze_matrix` computes itself (:data:`COMPUTED`).
Adding a built-in metric is one function (or :class:`Metric`) in a module of this
package plus its entry-point line in ``pyproject.toml``; nothing else lists it.

Definitions and sources:

- ``kappa`` = σ_max/σ_min, ``inf`` when σ_min = 0 (Golub & Van Loan, *Matrix
  Computations*, 4th ed., §2.6.2).
- ``numerical_rank`` = #{σ_i > max(m, n)·eps₆₄·σ_max}: ``numpy.linalg.matrix_rank``'s
  default tolerance (Press et al., *Numerical Recipes*, 3rd ed., §2.6), applied to the
  exactly upcast float64 matrix.
- ``spectral_entropy`` = -Σ p_i ln p_i with p_i = σ_i²/Σσ_j² (nats);
  ``spectral_entropy_normalized`` divides it by ln(numerical_rank), which is
  WeightWatcher's ``entropy`` (Martin & Mahoney, JMLR 22(165), 2021); it is 0 for a
  rank-1 matrix and undefined for a zero matrix.
- ``entropy_effective_rank`` = exp(spectral_entropy) (Roy & Vetterli, "The effective
  rank", EUSIPCO 2007).
- ``stable_rank`` = ‖W‖_F²/σ_max² (Rudelson & Vershynin, J. ACM 54(4), 2007).
- ``effective_rank`` = #{σ_i > τ·σ_max}, τ = 0.01 unless configured.
- ``spectral_gap`` = (σ_1 - σ_2)/σ_1, undefined for a single singular value.
- ``spectral_radius`` = max |λ_i| (square matrices only).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from spectrum_cli.core.scaling import ldexp

EPS64 = float(np.finfo(np.float64).eps)

#: Metrics of update operators (the contract names, beside the per-tensor ones).
OPERATOR_METRICS = {
    "spectral_radius": "ρ(J)",
    "kappa_V": "eigenvector condition number of J in the stated coordinates",
    "kappa_V_euclidean": "κ(V) of Adam's J in the optimizer's own (θ, m) coordinates",
    "max_power_norm": "max_k ‖J^k‖₂, k = 1..power_max",
    "argmax_power": "the k of max_power_norm",
    "power_above_one_until": "last k <= power_max with ‖J^k‖₂ > 1",
    "transient_window": "ln κ(V)/(-ln ρ) when ρ < 1",
    "kreiss_lower_bound": "lower bound of the Kreiss constant of J",
    "hessian_lambda_max": "largest eigenvalue of the (L2-shifted) Hessian",
    "hessian_lambda_min": "smallest eigenvalue of the (L2-shifted) Hessian",
    "eos_ratio_gd": "lr·λ_max/2 (gradient descent's edge of stability at 1)",
    "eos_ratio_momentum": "lr(1-d)λ_max/(2(1+μ)) (heavy ball; Nesterov: lr λ_max (1+2μ)/(2(1+μ)))",
    "eos_ratio_adam": "c(1-β1)λ_max(P⁻¹H)/(2(1+β1)), c = lr/(1-β1^t)",
    "commutator_norm_relative": "‖[P⁻¹, H]‖_F/(‖P⁻¹‖_F‖H‖_F)",
    "preconditioner_spread": "sqrt(max P / min P), a bound on κ(V) of Adam's reduced operator",
}

DEFAULT_EFFECTIVE_RANK_TAU = 0.01


@dataclass(frozen=True)
class SpectrumContext:
    """What a metric may need beside the singular values: the matrix shape and the
    ``effective_rank`` threshold τ."""

    shape: tuple[int, int]
    tau: float = DEFAULT_EFFECTIVE_RANK_TAU
    #: The analysis's seed (``--seed``), for metrics that draw random numbers.
    seed: int = 0
    #: The matrix's full singular spectrum when computed (for metrics of the matrix that
    #: also need it, such as ``rand_distance``); None otherwise.
    singular_values: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Metric:
    """One per-matrix metric, as registered in the ``spectrum.metrics`` entry-point group.

    The simplest plugin is a function of the descending float64 singular values returning
    a float or None (undefined for that matrix); :func:`as_metric` wraps it. A richer
    metric object has ``needs`` (``"singular_values"``: the full spectrum, so a backend of
    extremes lists it as unavailable; ``"eigenvalues"``: the complex eigenvalues of a
    square matrix under ``--square``; ``"matrix"``: the float64 matrix itself),
    ``context`` (True: called as ``compute(values, SpectrumContext)``) and a one-line
    ``description``.
    """

    name: str
    compute: Callable[..., Any]
    needs: str = "singular_values"
    description: str = ""
    context: bool = False
    #: ``explain(values, context)``: why the value is undefined (None) for this input.
    explain: Callable[..., str | None] | None = None
    #: The name of a boolean analysis setting without which the metric is not computed
    #: (a costly one, such as ``rand_distance`` under ``--randomize``).
    opt_in: str = ""

    def reason(self, values: Any, context: "SpectrumContext") -> str | None:
        """Why this metric is undefined here, when it says (None otherwise)."""
        if self.explain is None:
            return None
        try:
            return self.explain(values, context)
        except Exception:  # noqa: BLE001 - an explanation must never cost the analysis
            return None

    def __call__(self, values: np.ndarray, context: SpectrumContext) -> float | int | None:
        value = self.compute(values, context) if self.context else self.compute(values)
        if value is None or isinstance(value, (int, np.integer)) and not isinstance(
                value, (bool, np.bool_)):
            return None if value is None else int(value)
        return float(value)


NEEDS = ("singular_values", "eigenvalues", "matrix")


#: A metric name is an identifier that names nothing else in a report's tensor entry.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TAKEN = frozenset({"name", "dtype", "kind", "status", "shape", "matrix_shape", "time_s",
                    "notes", "method", "accuracy", "unavailable", "nonnormal", "converged",
                    "undefined_metrics", "metric_names"})


def as_metric(name: str, obj: Any) -> Metric:
    """A registered object as a :class:`Metric` named ``name`` (TypeError if it is none,
    or if the name is not a lower-case identifier free in the report's tensor entries)."""
    if not _NAME.fullmatch(name) or name in _TAKEN:
        raise TypeError(f"metric name {name!r}: expected a lower-case identifier that is "
                        f"not one of {sorted(_TAKEN)}")
    if isinstance(obj, Metric):
        return obj if obj.name == name else replace(obj, name=name)
    if hasattr(obj, "needs") and callable(getattr(obj, "compute", None)):
        if obj.needs not in NEEDS:
            raise TypeError(f"metric {name!r}: needs must be one of {NEEDS}, got {obj.needs!r}")
        return Metric(name, obj.compute, obj.needs, getattr(obj, "description", ""),
                      bool(getattr(obj, "context", False)), getattr(obj, "explain", None),
                      str(getattr(obj, "opt_in", "") or ""))
    if callable(obj):
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        return Metric(name, obj, "singular_values", doc[0] if doc else "")
    raise TypeError(f"metric {name!r}: expected a callable or a Metric, got "
                    f"{type(obj).__name__}")


# ---- the built-in metrics of the singular values (each registered in pyproject.toml) ----

def sigma_max(s: np.ndarray) -> float:
    """largest singular value"""
    return float(s[0])


def sigma_min(s: np.ndarray) -> float:
    """smallest of the min(m, n) singular values"""
    return float(s[-1])


def kappa(s: np.ndarray) -> float:
    """condition number sigma_max/sigma_min (inf when sigma_min = 0)"""
    return math.inf if s[-1] == 0.0 else float(s[0] / s[-1])


def _numerical_rank(s: np.ndarray, ctx: SpectrumContext) -> int:
    return 0 if s[0] == 0.0 else int(np.count_nonzero(s > max(ctx.shape) * EPS64 * s[0]))


def _ratios_squared(s: np.ndarray) -> np.ndarray:
    r = s / s[0]  # s/s_max: squaring cannot overflow or underflow
    return r * r


def spectral_entropy(s: np.ndarray) -> float | None:
    """Shannon entropy (nats) of p_i = sigma_i^2/sum sigma_j^2"""
    if s[0] == 0.0:
        return None
    r2 = _ratios_squared(s)
    p = r2[r2 > 0.0] / float(np.sum(r2))
    return max(float(-np.sum(p * np.log(p))), 0.0)


def _entropy_normalized(s: np.ndarray, ctx: SpectrumContext) -> float | None:
    h = spectral_entropy(s)
    if h is None:
        return None
    rank = _numerical_rank(s, ctx)
    return min(h / math.log(rank), 1.0) if rank >= 2 else 0.0


def entropy_effective_rank(s: np.ndarray) -> float | None:
    """exp(spectral_entropy) (Roy & Vetterli)"""
    h = spectral_entropy(s)
    return None if h is None else math.exp(h)


def stable_rank(s: np.ndarray) -> float | None:
    """||W||_F^2 / sigma_max^2"""
    return None if s[0] == 0.0 else float(np.sum(_ratios_squared(s)))


def _effective_rank(s: np.ndarray, ctx: SpectrumContext) -> int:
    return 0 if s[0] == 0.0 else int(np.count_nonzero(s > ctx.tau * s[0]))


def spectral_gap(s: np.ndarray) -> float | None:
    """(sigma_1 - sigma_2)/sigma_1"""
    return None if s[0] == 0.0 or s.size < 2 else float((s[0] - s[1]) / s[0])


numerical_rank = Metric("numerical_rank", _numerical_rank, context=True,
                        description="singular values above max(m, n)*eps64*sigma_max")
spectral_entropy_normalized = Metric(
    "spectral_entropy_normalized", _entropy_normalized, context=True,
    description="spectral_entropy / ln(numerical_rank), in [0, 1]")
effective_rank = Metric("effective_rank", _effective_rank, context=True,
                        description="singular values above tau*sigma_max")

#: The metrics of the singular values that every analysis computes, registry or not
#: (``metrics=None``), in report order: the first columns of reports. Each is a ratio of
#: singular values, or σ_max/σ_min, which :mod:`~spectrum_cli.core.measure` scales back
#: when it analysed 2^-e·A; any other registered metric gets the spectrum of A itself. A
#: new built-in metric need not be here (it is registered: see :func:`builtin_metrics`).
BUILTIN: tuple[Metric, ...] = tuple(as_metric(m.name if isinstance(m, Metric) else m.__name__, m)
                                    for m in (sigma_max, sigma_min, kappa, numerical_rank,
                                              spectral_entropy, spectral_entropy_normalized,
                                              entropy_effective_rank, stable_rank,
                                              effective_rank, spectral_gap))
_ORDER = {m.name: i for i, m in enumerate(BUILTIN)}


def ordered(metrics: Any) -> tuple[Metric, ...]:
    """Registered metrics with the built-ins first, in report order, then by name."""
    return tuple(sorted(metrics, key=lambda m: (_ORDER.get(m.name, len(_ORDER)), m.name)))


def singular_value_metrics(
    s: np.ndarray, shape: tuple[int, int], tau: float = DEFAULT_EFFECTIVE_RANK_TAU,
    metrics: Any = None, failed: dict[str, str] | None = None, seed: int = 0,
    reasons: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Metrics of the descending singular values ``s`` of an m x n matrix: the built-in
    ones, or those of ``metrics`` (the registry's) that need the singular values. A
    metric that raises is recorded in ``failed`` (name -> reason) when given; one that
    is undefined (None) and says why, in ``reasons``."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau: expected a number in (0, 1), got {tau!r}")
    s = np.asarray(s, dtype=np.float64)
    ctx = SpectrumContext(tuple(shape), tau, seed, s)
    chosen = BUILTIN if metrics is None else ordered(
        m for m in metrics if m.needs == "singular_values")
    out: dict[str, Any] = {}
    for m in chosen:
        if failed is None:
            out[m.name] = m(s, ctx)
        else:
            try:
                out[m.name] = m(s, ctx)
            except Exception as exc:  # noqa: BLE001 - a plugin's failure is reported
                failed[m.name] = failure(exc)
                continue
        if out[m.name] is None and reasons is not None:
            why = m.reason(s, ctx)
            if why:
                reasons[m.name] = why
    return out


def failure(exc: BaseException) -> str:
    """How a metric's exception is reported: its message when it says the metric is
    unavailable for this input (an ``unavailable`` attribute), else as a failure."""
    if getattr(exc, "unavailable", False):
        return str(exc)
    return f"metric failed: {type(exc).__name__}: {exc}"


def entry_metrics(a: np.ndarray) -> dict[str, Any]:
    """Frobenius norm and row/column norms, straight from the entries (float64)."""
    row_sq = np.einsum("ij,ij->i", a, a)  # no temporaries of a's size
    total = float(row_sq.sum())
    scale = 0
    if not 1e-290 < total < 1e290:  # squares under- or overflowed: rescale by 2^-e (exact)
        amax = max(float(a.max()), -float(a.min()))
        if amax > 0.0:
            scale = math.frexp(amax)[1]
            a = np.ldexp(a, -scale)
            row_sq = np.einsum("ij,ij->i", a, a)
            total = float(row_sq.sum())
    # Scaled back exactly; a norm past 1.8e308 (entries near the float64 limit) is inf.
    row = ldexp(np.sqrt(row_sq), scale)
    col = ldexp(np.sqrt(np.einsum("ij,ij->j", a, a)), scale)
    return {
        "frobenius_norm": ldexp(math.sqrt(total), scale),
        "row_norm_min": float(row.min()),
        "row_norm_max": float(row.max()),
        "row_norm_mean": float(row.mean()),
        "col_norm_min": float(col.min()),
        "col_norm_max": float(col.max()),
        "col_norm_mean": float(col.mean()),
    }


#: Norms of the entries (:func:`entry_metrics`): name -> description, in report order.
ENTRY_METRICS: Mapping[str, str] = MappingProxyType({
    "frobenius_norm": "||W||_F",
    "row_norm_min": "smallest row 2-norm",
    "row_norm_max": "largest row 2-norm",
    "row_norm_mean": "mean row 2-norm",
    "col_norm_min": "smallest column 2-norm",
    "col_norm_max": "largest column 2-norm",
    "col_norm_mean": "mean column 2-norm",
})

#: The eigen-analysis of square matrices (core/nonnormal.py, ``NonNormal.metrics()``):
#: name -> description, in report order.
SQUARE_METRICS: Mapping[str, str] = MappingProxyType({
    "spectral_radius": "max |eigenvalue| (square matrices with eigen-analysis)",
    "kappa_V": "eigenvector condition number, unit columns (null if not well defined)",
    "kappa_V_well_defined": "1 unless eigenvalues cluster at working precision",
    "kappa_V_cluster_orthonormal": "kappa_V with an orthonormal basis inside each cluster",
    "max_eig_condition": "max 1/|y_i^H x_i| (unit left/right eigenvectors)",
    "henrici": "Henrici departure from normality ||N||_F (complex Schur form)",
    "henrici_relative": "henrici / ||A||_F",
    "kreiss_lower_bound": "lower bound of the Kreiss constant (inf when rho >= 1)",
    "max_power_norm": "max_k ||A^k||_2 over k = 1..power_max",
    "argmax_power": "the k of max_power_norm",
    "power_above_one_until": "last k <= power_max with ||A^k||_2 > 1",
    "transient_window": "ln kappa_V / (-ln rho) when rho < 1",
})

#: Metrics of the non-normal analysis of square matrices (all of SQUARE_METRICS but
#: ``spectral_radius``).
NONNORMAL_METRICS: tuple[str, ...] = tuple(k for k in SQUARE_METRICS if k != "spectral_radius")

#: What :func:`~spectrum_cli.core.measure.analyze_matrix` computes itself, beside the
#: registered metrics: name -> description, in report order.
COMPUTED: Mapping[str, str] = MappingProxyType({
    **ENTRY_METRICS, **SQUARE_METRICS,
    "nonfinite_count": "number of NaN or Inf entries (0 for analysed matrices)",
})


# ---- the one registry: the spectrum.metrics entry-point group -------------------------

#: The entry-point group of per-matrix metrics, built-in and third-party alike.
GROUP = "spectrum.metrics"
#: A registered metric is built in when its object lives in this package.
_PACKAGE = "spectrum_cli."
#: Modules of built-in metrics that the reports present by themselves, beside BUILTIN and
#: COMPUTED (WeightWatcher's columns: the summary's α line, batch's model averages).
#: Every other metric, built in (the heavy-tail estimators) or a plugin, gets a generic
#: line in the summary (``metric NAME: lo … hi``) and a ``tensors.max_NAME`` indicator.
_CORE_MODULES = ("spectrum_cli.core.esd_metrics",)


def _builtin_entry_points() -> list[EntryPoint]:
    """The entry points of :data:`GROUP` whose object lives in this package (the first
    of each name)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.value.startswith(_PACKAGE):
            found.setdefault(ep.name, ep)
    return list(found.values())


def _position(ep: EntryPoint) -> tuple[int, str, int]:
    """Report order of a built-in metric beyond BUILTIN: the core modules first, then by
    module, and within a module in the order the module defines its metrics."""
    names = list(vars(import_module(ep.module)))
    attr = ep.attr.split(".")[0]
    return (0 if ep.module in _CORE_MODULES else 1, ep.module,
            names.index(attr) if attr in names else len(names))


@functools.lru_cache(maxsize=None)
def _registered() -> tuple[tuple[str, Metric], ...]:
    """(module, metric) of every registered built-in beyond BUILTIN, in report order."""
    loaded = []
    for ep in _builtin_entry_points():
        if ep.name not in _ORDER:
            obj = ep.load()
            metric = as_metric(ep.name, obj() if isinstance(obj, type) else obj)
            loaded.append((_position(ep), ep.module, metric))
    return tuple((module, metric) for _, module, metric in sorted(
        loaded, key=lambda pmm: pmm[0]))


def builtin_metrics() -> tuple[Metric, ...]:
    """Every built-in metric of the registry, in report order: :data:`BUILTIN`, then the
    other entry points of :data:`GROUP` into this package, each module's in the order it
    defines them. Loaded once per process (:func:`refresh` forgets them)."""
    return BUILTIN + tuple(metric for _, metric in _registered())


@functools.lru_cache(maxsize=None)
def _tables() -> tuple[Mapping[str, str], Mapping[str, str]]:
    """(every built-in metric, the core ones): name -> description, in report order."""
    core: dict[str, str] = {m.name: m.description for m in BUILTIN}
    core.update(COMPUTED)
    rest: dict[str, str] = {}
    for module, m in _registered():
        (core if module in _CORE_MODULES else rest).setdefault(m.name, m.description)
    return MappingProxyType({**core, **rest}), MappingProxyType(core)


def refresh() -> None:
    """Forget the registered built-ins (for tests that change the entry points)."""
    _registered.cache_clear()
    _tables.cache_clear()


class _Descriptions(Mapping[str, str]):
    """A read-only name -> description view of the registry, in report order, read on
    first use (reading it imports the built-in metric modules)."""

    def __init__(self, name: str, which: int):
        self._name, self._which = name, which

    def _table(self) -> Mapping[str, str]:
        return _tables()[self._which]

    def __getitem__(self, name: str) -> str:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __contains__(self, name: object) -> bool:
        return name in self._table()

    def __repr__(self) -> str:
        return f"{self._name}({dict(self._table())!r})"


#: Every built-in per-matrix metric: name -> description, in report order (BUILTIN, then
#: COMPUTED, then the other registered built-ins). Derived, read-only.
METRICS: Mapping[str, str] = _Descriptions("METRICS", 0)
#: The metrics the reports present by themselves (see ``_CORE_MODULES``): METRICS less the
#: built-ins of other modules (the heavy-tail estimators), in the same order. Derived,
#: read-only.
CORE_METRICS: Mapping[str, str] = _Descriptions("CORE_METRICS", 1)
