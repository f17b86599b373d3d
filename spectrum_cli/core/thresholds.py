"""``--fail-on`` conditions, one grammar for every command.

Per-tensor conditions (``analyze``, ``batch``, ``watch``, the callbacks): ``METRIC OP
NUMBER`` optionally scoped by ``@PATTERN``: ``kappa>1e4``,
``spectral_entropy_normalized<0.5@*.attention.*``, ``nonfinite_count>0``. Trajectory
conditions (``watch``), told apart by their left-hand side: ``INDICATOR OP NUMBER`` on a
dotted indicator of the trajectory (``tensors.max_kappa>1e4``) or ``loss``;
``INDICATOR>threshold`` against the scorecard's threshold; ``spike``. Several conditions
may be given in one value, separated by commas, or by repeating the option. A metric
that is undefined for a tensor (``None``) never violates a condition; ``inf`` compares
as infinity; a comparison with NaN is refused.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.metrics import METRICS, OPERATOR_METRICS
from spectrum_cli.core.selection import compile_pattern

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}
_OP = r"(?P<op>>=|<=|==|!=|>|<)"
_COND = re.compile(
    rf"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*{_OP}\s*(?P<value>[^@\s]+)\s*(?:@(?P<scope>.+))?$")
#: An indicator of a trajectory: ``loss`` or a dotted name (``tensor.kappa[NAME]``).
_INDICATOR = r"(?:loss|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+(?:\[[^\]]*\])?)"
_TRAJ = re.compile(rf"^\s*(?P<name>{_INDICATOR})\s*{_OP}\s*(?P<value>\S+)\s*$")
#: A comma that starts another condition (not one inside a scope pattern).
_SPLIT = re.compile(r",(?=\s*(?:spike\s*(?:,|$)|[A-Za-z_][A-Za-z0-9_.]*(?:\[[^\]]*\])?"
                    r"\s*(?:>=|<=|==|!=|>|<)))")
_LEADING_OP = re.compile(rf"^\s*[a-z][a-z0-9_]*\s*{_OP}")


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float
    scope: str | None = None

    def __str__(self) -> str:
        text = f"{self.metric}{self.op}{self.value:g}"
        return f"{text}@{self.scope}" if self.scope else text


@dataclass(frozen=True)
class Violation:
    condition: Condition
    tensor: str
    value: float


@dataclass(frozen=True)
class TrajectoryCondition:
    """A condition on a run's indicators (see the module); ``value`` None compares with
    the scorecard threshold."""

    indicator: str
    op: str = ">"
    value: float | None = None

    def __str__(self) -> str:
        if self.indicator == "spike":
            return "spike"
        rhs = "threshold" if self.value is None else f"{self.value:g}"
        return f"{self.indicator}{self.op}{rhs}"


def _number(raw: str, part: str, expected: str = "not a number") -> float:
    """The number of a condition ``part`` (``inf`` included); UsageError saying ``raw``
    is ``expected`` for anything else, and for NaN, with which every comparison is
    false."""
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--fail-on: {raw!r} in {part!r} is {expected}") from None
    if math.isnan(value):
        raise UsageError(f"--fail-on: {part!r} compares with NaN, which is never true")
    return value


def split_conditions(specs: Iterable[str]) -> tuple[list[str], list[TrajectoryCondition]]:
    """``--fail-on`` values -> (the per-tensor conditions, as text for
    :func:`parse_conditions`, and the trajectory conditions, parsed)."""
    per_tensor: list[str] = []
    trajectory: list[TrajectoryCondition] = []
    for spec in specs:
        for part in _SPLIT.split(str(spec)):
            if part.strip() == "spike":
                trajectory.append(TrajectoryCondition("spike"))
                continue
            m = _TRAJ.match(part)
            if m is None:
                per_tensor.append(part)
                continue
            if m["value"] == "threshold":
                trajectory.append(TrajectoryCondition(m["name"], m["op"], None))
                continue
            value = _number(m["value"], part.strip(), "neither a number nor 'threshold'")
            trajectory.append(TrajectoryCondition(m["name"], m["op"], value))
    return per_tensor, trajectory


def condition_op(text: str) -> str:
    """The comparison of a per-tensor condition as written (``kappa>1e4`` -> ``>``)."""
    m = _LEADING_OP.match(text)
    return m["op"] if m else "=="


def parse_conditions(specs: Iterable[str], extra_metrics: Iterable[str] = ()
                     ) -> list[Condition]:
    """Parse ``--fail-on`` values; a bad one raises :class:`UsageError` naming it.
    ``extra_metrics`` are the names of registered metric plugins."""
    extra = tuple(extra_metrics)
    out = []
    for spec in specs:
        for part in _SPLIT.split(spec):
            m = _COND.match(part)
            if not m:
                raise UsageError(f"--fail-on: cannot parse {part!r}; expected METRIC OP NUMBER"
                                 " like 'kappa>1e4' or 'kappa>1e4@*.attention.*'")
            metric = m["metric"]
            if metric not in METRICS and metric not in OPERATOR_METRICS and metric not in extra:
                raise UsageError(f"--fail-on: unknown metric {metric!r}; known: "
                                 + ", ".join(dict.fromkeys([*METRICS, *OPERATOR_METRICS,
                                                            *extra])))
            value = _number(m["value"], part)
            scope = m["scope"].strip() if m["scope"] else None
            if scope:
                compile_pattern(scope, "--fail-on")  # validate now, not per tensor
            out.append(Condition(metric, m["op"], value, scope))
    return out


def evaluate(conditions: Sequence[Condition], tensors: Iterable[Any]) -> list[Violation]:
    """Violations of ``conditions`` by tensors (objects with ``name`` and ``metrics``)."""
    matchers = [compile_pattern(c.scope) if c.scope else None for c in conditions]
    found = []
    for t in tensors:
        for cond, match in zip(conditions, matchers):
            if match is not None and not match(t.name):
                continue
            value = t.metrics.get(cond.metric)
            if value is None:
                continue
            if OPS[cond.op](float(value), cond.value):
                found.append(Violation(cond, t.name, float(value)))
    return found


def parse_eps(specs: Iterable[str]) -> tuple[float, ...]:
    """``--eps`` values: numbers, repeated or comma-separated, each > 0."""
    out = []
    for spec in specs:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                value = float(part)
            except ValueError:
                raise UsageError(f"--eps: {part!r} is not a number") from None
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"--eps: expected positive numbers, got {part!r}")
            out.append(value)
    return tuple(out)
