"""Tensor selection by glob or regular expression (``--include`` / ``--exclude``).

Globs use :func:`fnmatch.fnmatchcase`, in which ``*`` also crosses dots
(``*.attention.*`` matches ``encoder.layer.0.attention.self.query.weight``). A pattern
starting with ``re:`` is a Python regular expression with ``re.search`` semantics.

Patterns may come from a configuration file beside a stranger's checkpoint, and names
from the checkpoint itself, so matching must end in time whatever both are. Python's
``re`` backtracks: ``re:(a+)+$`` against a long name of ``a``s runs for ages, and even
``.*.*.*x`` is polynomial of high degree. So ``re:`` patterns are parsed by Python's own
parser (same syntax, same errors) and matched by a Thompson automaton (a set of states
advanced one character at a time, as RE2 and Go's regexp do): the time is linear in the
name's length, whatever the pattern. What the automaton cannot do in linear time is
refused up front, as a usage error: backreferences, lookahead/lookbehind, conditional,
atomic groups and possessive repeats. Patterns are limited to :data:`MAX_PATTERN`
characters and :data:`MAX_STATES` automaton states (``a{1000}{1000}`` is refused).
Glob matching is linear too (``fnmatch`` compiles ``*`` without nested backtracking).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Sequence

from spectrum_cli.core.errors import UsageError

try:  # Python 3.11+
    from re import _constants as _C
    from re import _parser as _P
except ImportError:  # Python 3.10
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _P  # type: ignore[no-redef]

#: The longest pattern accepted (glob or ``re:``), in characters.
MAX_PATTERN = 1024
#: The most automaton states a ``re:`` pattern may need (counted repeats are unrolled).
MAX_STATES = 4096
_CACHE_LIMIT = 50_000  # transitions remembered per pattern before the cache restarts

_CATEGORIES = {
    _C.CATEGORY_DIGIT: r"\d", _C.CATEGORY_NOT_DIGIT: r"\D",
    _C.CATEGORY_SPACE: r"\s", _C.CATEGORY_NOT_SPACE: r"\S",
    _C.CATEGORY_WORD: r"\w", _C.CATEGORY_NOT_WORD: r"\W",
}
_CHAR_FLAGS = re.IGNORECASE | re.UNICODE | re.ASCII | re.DOTALL | re.LOCALE
_REFUSED = {
    "GROUPREF": "backreferences", "GROUPREF_EXISTS": "conditional groups",
    "GROUPREF_IGNORE": "backreferences", "ASSERT": "lookahead/lookbehind",
    "ASSERT_NOT": "lookahead/lookbehind", "ATOMIC_GROUP": "atomic groups",
    "POSSESSIVE_REPEAT": "possessive repeats",
}


class _Refused(Exception):
    pass


class _Automaton:
    """A Thompson NFA over a parsed pattern. States: ``("char", pred, next)``,
    ``("split", (a, b, ...))``, ``("at", code, next)``, ``("match",)``."""

    def __init__(self, parsed: Any) -> None:
        self.states: list[tuple[Any, ...]] = [("match",)]
        self._words = False  # whether \b or \B needs the word-ness of neighbours
        self._preds: dict[tuple[str, int], Callable[[str], bool]] = {}
        flags = parsed.state.flags
        self.start = self._seq(list(parsed), 0, flags)
        self._word = re.compile(r"\w", flags & _CHAR_FLAGS & ~re.DOTALL)
        self._closures: dict[tuple[frozenset[int], tuple[bool, ...]], frozenset[int]] = {}
        self._steps: dict[tuple[frozenset[int], str, tuple[bool, ...]], frozenset[int]] = {}

    # ---- construction: right to left, each piece given the state that follows it ------

    def _add(self, state: tuple[Any, ...]) -> int:
        if len(self.states) >= MAX_STATES:
            raise _Refused(f"more than {MAX_STATES} automaton states (simplify the "
                           "pattern, e.g. smaller {m,n} counts)")
        self.states.append(state)
        return len(self.states) - 1

    def _pred(self, source: str, flags: int) -> Callable[[str], bool]:
        key = (source, flags & _CHAR_FLAGS)
        if key not in self._preds:
            rx = re.compile(source, key[1])
            self._preds[key] = lambda ch, m=rx.fullmatch: m(ch) is not None
        return self._preds[key]

    def _seq(self, items: list[Any], nxt: int, flags: int) -> int:
        for op, av in reversed(items):
            nxt = self._item(op, av, nxt, flags)
        return nxt

    def _item(self, op: Any, av: Any, nxt: int, flags: int) -> int:
        name = getattr(op, "name", str(op))
        if name in _REFUSED:
            raise _Refused(f"{_REFUSED[name]} cannot be matched in linear time")
        if op is _C.LITERAL:
            return self._add(("char", self._pred(re.escape(chr(av)), flags), nxt))
        if op is _C.NOT_LITERAL:
            return self._add(("char", self._pred(f"[^{re.escape(chr(av))}]", flags), nxt))
        if op is _C.ANY:
            return self._add(("char", self._pred(".", flags), nxt))
        if op is _C.IN:
            return self._add(("char", self._pred(self._set(av), flags), nxt))
        if op is _C.AT:
            return self._add(("at", self._anchor(av, flags), nxt))
        if op is _C.BRANCH:
            return self._add(("split", tuple(self._seq(list(b), nxt, flags) for b in av[1])))
        if op is _C.SUBPATTERN:
            _group, add, remove, body = av
            return self._seq(list(body), nxt, (flags | add) & ~remove)
        if op in (_C.MAX_REPEAT, _C.MIN_REPEAT):
            low, high, body = av
            body = list(body)
            if high == _C.MAXREPEAT:
                loop = self._add(("split", ()))
                first = self._seq(body, loop, flags)
                self.states[loop] = ("split", (first, nxt))
                tail = loop
            else:
                tail = nxt
                for _ in range(high - low):
                    tail = self._add(("split", (self._seq(body, tail, flags), nxt)))
            for _ in range(low):
                tail = self._seq(body, tail, flags)
            return tail
        raise _Refused(f"{name} is not supported")

    @staticmethod
    def _set(items: list[Any]) -> str:
        parts = []
        for op, av in items:
            if op is _C.NEGATE:
                parts.insert(0, "^")
            elif op is _C.LITERAL:
                parts.append(re.escape(chr(av)))
            elif op is _C.RANGE:
                parts.append(f"{re.escape(chr(av[0]))}-{re.escape(chr(av[1]))}")
            elif op is _C.CATEGORY and av in _CATEGORIES:
                parts.append(_CATEGORIES[av])
            else:
                raise _Refused(f"character set item {getattr(op, 'name', op)} is not supported")
        return "[" + "".join(parts) + "]"

    def _anchor(self, code: Any, flags: int) -> str:
        multiline = bool(flags & re.MULTILINE)
        if code is _C.AT_BEGINNING:
            return "bol" if multiline else "bos"
        if code is _C.AT_BEGINNING_STRING:
            return "bos"
        if code is _C.AT_END:
            return "eol" if multiline else "eos_nl"
        if code is _C.AT_END_STRING:
            return "eos"
        if code is _C.AT_BOUNDARY:
            self._words = True
            return "b"
        if code is _C.AT_NON_BOUNDARY:
            self._words = True
            return "B"
        raise _Refused(f"anchor {getattr(code, 'name', code)} is not supported")

    # ---- matching --------------------------------------------------------------------

    @staticmethod
    def _holds(kind: str, ctx: tuple[bool, ...]) -> bool:
        at_start, after_nl, at_end, before_nl, last, word_before, word_after = ctx
        if kind == "bos":
            return at_start
        if kind == "bol":
            return at_start or after_nl
        if kind == "eos":
            return at_end
        if kind == "eos_nl":
            return at_end or (last and before_nl)
        if kind == "eol":
            return at_end or before_nl
        if kind == "b":
            return word_before != word_after
        # "B"; as Python's re (before 3.14), never on an empty string
        return word_before == word_after and not (at_start and at_end)

    def _closure(self, seeds: frozenset[int], ctx: tuple[bool, ...]) -> frozenset[int]:
        key = (seeds, ctx)
        found = self._closures.get(key)
        if found is not None:
            return found
        out: set[int] = set()
        todo = list(seeds)
        seen: set[int] = set()
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            state = self.states[s]
            kind = state[0]
            if kind == "split":
                todo.extend(state[1])
            elif kind == "at":
                if self._holds(state[1], ctx):
                    todo.append(state[2])
            else:
                out.add(s)
        result = frozenset(out)
        if len(self._closures) > _CACHE_LIMIT:
            self._closures.clear()
        self._closures[key] = result
        return result

    def _context(self, text: str, i: int) -> tuple[bool, ...]:
        n = len(text)
        before = text[i - 1] if i > 0 else ""
        after = text[i] if i < n else ""
        if not self._words:
            return (i == 0, before == "\n", i == n, after == "\n", i == n - 1, False, False)
        return (i == 0, before == "\n", i == n, after == "\n", i == n - 1,
                bool(before) and self._word.fullmatch(before) is not None,
                bool(after) and self._word.fullmatch(after) is not None)

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text`` (``re.search`` semantics for
        a yes/no answer), in time linear in ``len(text)``."""
        start = frozenset((self.start,))
        current = self._closure(start, self._context(text, 0))
        for i, ch in enumerate(text):
            if 0 in current:
                return True
            ctx = self._context(text, i + 1)
            key = (current, ch, ctx)
            following = self._steps.get(key)
            if following is None:
                moved = {st[2] for st in map(self.states.__getitem__, current)
                         if st[0] == "char" and st[1](ch)}
                following = self._closure(frozenset(moved) | start, ctx)
                if len(self._steps) > _CACHE_LIMIT:
                    self._steps.clear()
                self._steps[key] = following
            current = following
        return 0 in current


def compile_regex(source: str, option: str = "pattern") -> Callable[[str], bool]:
    """A linear-time ``re.search`` predicate for a regular expression (UsageError for an
    invalid one or one that needs backtracking)."""
    try:
        re.compile(source)  # Python's own syntax errors, said as Python says them
        parsed = _P.parse(source, 0)
    except (re.error, RecursionError, OverflowError) as exc:
        raise UsageError(f"{option}: invalid regular expression {source!r} ({exc})") \
            from None
    try:
        automaton = _Automaton(parsed)
    except (_Refused, RecursionError) as exc:
        why = str(exc) if isinstance(exc, _Refused) else "nested too deeply"
        raise UsageError(f"{option}: regular expression {source!r} refused: {why} "
                         "(spectrum matches re: patterns with a linear-time automaton, so "
                         "that no pattern can hang a run)") from None
    return automaton.search


def compile_pattern(pattern: str, option: str = "pattern") -> Callable[[str], bool]:
    """A predicate for one glob or ``re:`` pattern."""
    if not isinstance(pattern, str):
        raise UsageError(f"{option}: expected a pattern string, got {pattern!r}")
    if len(pattern) > MAX_PATTERN:
        raise UsageError(f"{option}: pattern of {len(pattern)} characters; at most "
                         f"{MAX_PATTERN} are accepted")
    if pattern.startswith("re:"):
        return compile_regex(pattern[3:], option)
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
