"""``--fail-on`` conditions: ``METRIC OP NUMBER`` optionally scoped by ``@PATTERN``.

Examples: ``kappa>1e4``, ``spectral_entropy_normalized<0.5@*.attention.*``,
``nonfinite_count>0``. Several conditions may be given in one value, separated by
commas, or by repeating the option. A metric that is undefined for a tensor (``None``)
never violates a condition; ``inf`` compares as infinity.
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

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}
_COND = re.compile(
    r"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>[^@\s]+)\s*"
    r"(?:@(?P<scope>.+))?$"
)
_SPLIT = re.compile(r",(?=\s*[a-z][a-z0-9_]*\s*(?:>=|<=|==|!=|>|<))")


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
            try:
                value = float(m["value"])
            except ValueError:
                raise UsageError(f"--fail-on: {m['value']!r} in {part!r} is not a number")
            if math.isnan(value):
                raise UsageError(f"--fail-on: {part!r} compares with NaN, which is never true")
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
            if _OPS[cond.op](float(value), cond.value):
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
