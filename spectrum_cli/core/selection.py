"""Tensor selection by glob or regular expression (``--include`` / ``--exclude``).

Globs use :func:`fnmatch.fnmatchcase`, in which ``*`` also crosses dots
(``*.attention.*`` matches ``encoder.layer.0.attention.self.query.weight``). A pattern
starting with ``re:`` is a Python regular expression, matched with ``re.search``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Sequence

from spectrum_cli.core.errors import UsageError


def compile_pattern(pattern: str, option: str = "pattern") -> Callable[[str], bool]:
    """A predicate for one glob or ``re:`` pattern."""
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as exc:
            raise UsageError(f"{option}: invalid regular expression {pattern[3:]!r} ({exc})")
        return lambda name: rx.search(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


class Selector:
    """True for names matching any include (all names when there is none) and no exclude."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self._include = [compile_pattern(p, "--include") for p in include]
        self._exclude = [compile_pattern(p, "--exclude") for p in exclude]

    def __call__(self, name: str) -> bool:
        if self._include and not any(m(name) for m in self._include):
            return False
        return not any(m(name) for m in self._exclude)
