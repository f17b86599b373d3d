"""Command-line options derived from the settings schema (:mod:`spectrum_cli.settings`).

``@with_settings(...)`` appends the named settings to a command's signature as typer
options, each declared once for every command that takes it (as huggingface_hub's CLI
does with its shared ``Annotated`` aliases); the command receives them in ``**settings``.
Configurable settings default to ``None`` ("not given") so that ``SPECTRUM_*`` variables
and configuration files can fill them in; the help shows the effective default.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from spectrum_cli.settings import BY_NAME, RUN, SETTINGS, Setting

_PY = {"str": str, "int": int, "float": float}
#: Choices longer than this (joined by |) are shown as a name, listed in the help text.
CHOICES_INLINE = 14


def _annotation(s: Setting) -> tuple[Any, Any]:
    """(Annotated type, default) of one setting as a typer option."""
    extra: dict[str, Any] = {"rich_help_panel": s.panel, "show_default": False}
    help_text = s.help
    if s.kind == "bool":
        return Annotated[bool, typer.Option(s.flag, help=help_text, metavar="",
                                            **extra)], False
    if s.default is not None and not s.choices:
        help_text += f" \\[default: {s.default}]"
    if s.choices:
        base: Any = Literal[s.choices]  # typer lists them as <a|b|c>
        if len("|".join(s.choices)) > CHOICES_INLINE:
            # a long <a|b|c> is folded mid-word in an 80-column help: name it, list them
            extra["metavar"] = s.metavar or "MODE"
            if not all(f"'{c}'" in help_text for c in s.choices):
                help_text += f" One of: {', '.join(s.choices)}."
        if s.default is not None:
            help_text += f" \\[default: {s.default}]"
    elif s.kind == "list":
        base = list[str]
    else:
        base = _PY[s.kind]
    if s.metavar:
        extra["metavar"] = s.metavar
    if s.minimum is not None:
        extra["min"] = s.minimum
    return Annotated[Optional[base], typer.Option(s.flag, help=help_text, **extra)], None


def with_settings(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Append the named settings (all of a panel when a panel title is given) to a
    command function that takes ``**settings``."""
    chosen = [s for s in SETTINGS if s.name in names or s.panel in names]
    unknown = set(names) - {s.name for s in chosen} - {s.panel for s in chosen}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = []
        for s in chosen:
            annotation, default = _annotation(s)
            added.append(inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY,
                                           annotation=annotation, default=default))

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            return fn(**kwargs)

        command.__signature__ = sig.replace(parameters=own + added)  # type: ignore
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        del command.__wrapped__  # typer must see the new signature, not fn's
        return command

    return decorate


def setting(name: str) -> Setting:
    return BY_NAME[name]


def _untagged(params: list[Any]) -> list[Any]:
    """Flags take no value: show them without typer's ``<bool>`` type tag. Arguments are
    spelled one way, in capitals, in the usage line and in the panel (``PATH``)."""
    for p in params:
        if getattr(p, "is_flag", False) and not getattr(p, "metavar", None):
            p.metavar = ""
        if getattr(p, "param_type_name", "") == "argument" and not p.metavar:
            p.metavar = p.name.upper()
    return params


class Command(TyperCommand):
    """typer's command, its flags (``--help`` included) shown without a ``<bool>`` tag."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _untagged(super().get_params(ctx))


class Group(TyperGroup):
    """typer's group, its flags shown without a ``<bool>`` tag."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201
        return _untagged(super().get_params(ctx))


# ---- options of the run commands (batch, watch) that the schema does not hold --------

CacheDir = Annotated[Optional[Path], typer.Option(
    help="Where per-checkpoint results are cached (by content hash and settings; shared "
    "by batch and watch). \\[default: $SPECTRUM_CACHE_DIR or ~/.cache/spectrum/batch]",
    rich_help_panel=RUN)]
NoCache = Annotated[bool, typer.Option(
    "--no-cache", metavar="", help="Recompute everything; write no cache.",
    rich_help_panel=RUN)]
SpikeFactor = Annotated[float, typer.Option(
    help="Unstable when loss > FACTOR x min of the previous WINDOW checkpoints.",
    rich_help_panel=RUN)]
SpikeWindow = Annotated[int, typer.Option(help="See --spike-factor.", min=1,
                                          rich_help_panel=RUN)]
