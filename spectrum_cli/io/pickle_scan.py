"""Static disassembly of pickles: which globals a pickle names, without running it.

The scanner walks :func:`pickletools.genops` and simulates the unpickler's stack and
memo (pickletools' documented ``stack_before`` / ``stack_after`` for every opcode), so a
``STACK_GLOBAL`` reports the two strings really on the stack, including strings put in
the memo (``MEMOIZE``/``BINPUT``) and fetched back (``BINGET``) with decoys in between;
``GLOBAL``/``INST`` name theirs in the argument, ``EXT1``-``EXT4`` through
:mod:`copyreg`'s extension registry. Nothing is imported or unpickled. Used to name the
offending globals when ``torch.load(weights_only=True)`` refuses a file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

from spectrum_cli.io.base import open_regular
from spectrum_cli.io.storage import ZIP_BLOCK

_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                         "SHORT_BINUNICODE", "BINUNICODE8"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MARK = object()  # a MARK on the simulated stack
_VALUE = object()  # any value other than a string


def _stack_effect(op: Any, stack: list[Any], pushed: Any) -> None:
    """Apply ``op``'s documented stack effect (pickletools' ``stack_before`` /
    ``stack_after``), pushing ``pushed`` for its one result."""
    from pickletools import markobject

    before = op.stack_before
    if markobject in before:  # pops everything down to the MARK, and the MARK
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if stack:
            stack.pop()
        below = before.index(markobject)
    else:
        below = len(before)
    if below:
        del stack[-below:]
    for item in op.stack_after:
        stack.append(_MARK if item is markobject else pushed)


def _scan_one(ops: Iterator[tuple[Any, Any, Any]]) -> list[str]:
    """The globals one pickle names, simulating its stack and memo: STACK_GLOBAL takes the
    two strings actually on the stack, wherever they came from (pushed, or fetched from
    the memo), so strings left lying around as decoys do not fool it."""
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    found: list[str] = []
    for op, arg, _pos in ops:
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            module, qual = stack[-2:] if len(stack) >= 2 else (None, None)
            found.append(f"{module}.{qual}" if isinstance(module, str)
                         and isinstance(qual, str) else "<STACK_GLOBAL of computed names>")
        elif name in ("EXT1", "EXT2", "EXT4"):
            import copyreg

            ref = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
            found.append(".".join(ref) if ref else f"<extension code {arg}>")
        if name in _PUT_OPS or name == "MEMOIZE":
            memo[arg if name in _PUT_OPS else len(memo)] = stack[-1] if stack else None
        elif name in _GET_OPS:
            stack.append(memo.get(arg))
        else:
            _stack_effect(op, stack, arg if name in _STRING_OPS else _VALUE)
    return found


@dataclass
class Scan:
    """What static disassembly found: the globals named, and the error of a pickle that
    started but could not be disassembled to its end (a corrupt or truncated file)."""

    globals: list[str] = field(default_factory=list)
    broken: str | None = None


def scan_pickles(fh: IO[bytes], limit: int = 8) -> Scan:
    """Globals named by up to ``limit`` consecutive pickles in ``fh`` (a legacy torch file
    holds several, then raw storage bytes, where disassembly stops)."""
    import pickletools

    scan = Scan()
    for _ in range(limit):
        started = fh.tell()
        try:
            scan.globals.extend(_scan_one(pickletools.genops(fh)))
        except Exception as exc:  # noqa: BLE001 - end of file, or not a pickle
            if fh.tell() > started + 1:  # not at a boundary: a pickle that broke
                scan.broken = str(exc) or type(exc).__name__
            break
    return scan


def scan_file(path: str) -> Scan:
    """Disassemble a torch file (its ``data.pkl`` for a zip, else the file's pickles)
    with :mod:`pickletools`: nothing is unpickled."""
    with open_regular(path, block=ZIP_BLOCK) as fh:
        if fh.read(4) != b"PK\x03\x04":
            fh.seek(0)
            return scan_pickles(fh)
        fh.seek(0)
        try:
            with zipfile.ZipFile(fh) as zf:
                members = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not members:
                    return Scan()
                with zf.open(members[0]) as pkl:
                    return scan_pickles(pkl, limit=1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            return Scan(broken=str(exc))


def scan_globals(path: str) -> list[str]:
    """Every global a torch file names, by static disassembly (nothing runs)."""
    return scan_file(path).globals
