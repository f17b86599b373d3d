"""The ``spectrum`` command. Subcommands live one per module; none imports torch,
scipy or h5py at import time, so ``spectrum --help`` stays fast."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer

from spectrum_cli import __version__
from spectrum_cli.cli.console import reserved_stdout
from spectrum_cli.cli.options import Command, Group
from spectrum_cli.report.output import printable

#: The subcommands in the order of the help, each ``spectrum_cli.cli.<name>.<name>``
#: ("report" is the group of ``spectrum_cli.cli.report``'s commands). A process builds
#: only the one its command line names (:func:`build`): the other modules and typer's
#: reading of every signature cost ~0.1 s of each run.
COMMANDS = ("analyze", "batch", "diff", "model", "backends", "pseudospectrum", "trust",
            "esd", "allocate", "watch", "report")
REPORT_COMMANDS = ("show",)


def _version(value: bool) -> None:
    if value:
        print(f"spectrum {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def build(only: str | None = None) -> typer.Typer:
    """The ``spectrum`` command with every subcommand, or with ``only`` that one."""
    root = typer.Typer(
        name="spectrum",
        cls=Group,
        help="What the spectra of your training state say about stability.\n\n"
             "Exit codes: 0 ok, 1 a --fail-on threshold was violated, 2 usage, I/O or "
             "refused input, 3 internal error, 5 no tensor matched.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    root.callback()(_root)
    for name in COMMANDS if only is None else (only,):
        module = importlib.import_module(f"spectrum_cli.cli.{name}")
        if name != "report":
            root.command(name, cls=Command)(getattr(module, name))
            continue
        group = typer.Typer(help="Read reports back.", no_args_is_help=True, cls=Group)
        for sub in REPORT_COMMANDS:
            group.command(sub, cls=Command)(getattr(module, sub))
        root.add_typer(group, name="report")
    return root


def _named(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names first, or None (no subcommand, a root option, an
    unknown name: the whole command answers those)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole command (what tests invoke through CliRunner), built once."""
    if name == "app":
        globals()["app"] = built = build()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code; never lets a traceback through.

    Usage errors (missing argument, unknown option or command, a value out of range)
    print typer's usage message and give exit 2, as click's standalone mode does; any
    other exception that escapes a command is a bug (exit 3). Standard output is
    reserved for spectrum's own document for the whole run (see
    :func:`~spectrum_cli.cli.console.reserved_stdout`).
    """
    argv = sys.argv[1:] if argv is None else argv
    cli = build(_named(argv))
    # typer vendors click from 0.29 on; its exception classes are reachable through
    # typer's public ones, whichever click is underneath.
    click_exception = next(c for c in type.mro(typer.BadParameter)
                           if c.__name__ == "ClickException")
    with reserved_stdout():
        try:
            code = cli(args=argv, standalone_mode=False, prog_name="spectrum")
        except typer.Exit as exc:
            code = exc.exit_code
        except click_exception as exc:
            if getattr(exc, "ctx", "n/a") is None:  # a parser error: give it the usage too
                exc.ctx = _usage_context(cli, argv)
            exc.show()
            code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            print("spectrum: interrupted", file=sys.stderr)
            code = 130
        except Exception as exc:  # a bug of ours
            if os.environ.get("SPECTRUM_DEBUG"):
                traceback.print_exc(file=sys.stderr)
            print(f"spectrum: internal error: {type(exc).__name__}: {printable(str(exc))}\n"
                  "  This is a bug "
                  "in spectrum; rerun with SPECTRUM_DEBUG=1 for a traceback and report it.",
                  file=sys.stderr)
            code = 3
    return int(code or 0)


def _usage_context(cli: typer.Typer, argv: list[str]) -> typer.Context | None:
    """A context for the (sub)command named in ``argv``, for its usage line."""
    try:
        group = typer.main.get_command(cli)
        path, cmd = ["spectrum"], group
        for word in argv:
            sub = getattr(cmd, "commands", {}).get(word)
            if sub is None:
                if not word.startswith("-"):
                    break
                continue
            path.append(word)
            cmd = sub
        return typer.Context(cmd, info_name=" ".join(path))
    except Exception:  # noqa: BLE001 - the message alone is still right
        return None


def main() -> None:
    """Console-script entry point (see :mod:`spectrum_cli.cli.entry`)."""
    sys.exit(run())
