"""``spectrum trust``: consent to a configuration file that names code to import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spectrum_cli import config
from spectrum_cli import trust as T
from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console
from spectrum_cli.core.errors import UsageError


def trust(
    files: Annotated[Optional[list[Path]], typer.Argument(
        help="spectrum.toml or pyproject.toml files to trust as they are now.",
        show_default=False)] = None,
    revoke: Annotated[bool, typer.Option(
        "--revoke", help="Withdraw the consent to FILES instead.")] = False,
    list_: Annotated[bool, typer.Option(
        "--list", help="List the trusted files and whether they changed since.")] = False,
) -> None:
    """Allow a configuration file to name your model, data and loss code, or a Dask
    scheduler (whose pickles spectrum would unpickle).

    A spectrum.toml (or \\[tool.spectrum]) beside a checkpoint may have been downloaded
    with it, so code it names is imported only after this consent, recorded by the
    file's SHA-256 in $XDG_DATA_HOME/spectrum/trust.json: any edit withdraws it.
    """
    err = stderr_console()
    with exit_codes(err):
        _run(files or [], revoke, list_, err)


def _run(files: list[Path], revoke: bool, list_: bool, err) -> None:
    if list_:
        out = stdout_console()
        for path, sha in sorted(T.trusted_files().items()):
            try:
                state = "ok" if T.digest(path) == sha else "changed since"
            except Exception:  # noqa: BLE001 - a vanished file is listed as such
                state = "missing"
            out.print(f"{escape(path)}  sha256:{sha[:16]}  {state}", highlight=False)
        return
    if not files:
        raise UsageError("name at least one configuration file (or use --list)")
    for f in files:
        if revoke:
            found = T.revoke(f)
            err.print(("revoked " if found else "was not trusted: ") + escape(str(f)))
            continue
        table = config.read_table(f)
        names = {k: v for k, v in table.items()
                 if T.names_code(k.replace("-", "_"), v)}
        sha = T.trust(f)
        what = ", ".join(f"{k} = {v!r}" for k, v in names.items()) or "no code"
        err.print(f"trusted {escape(str(f))} (sha256:{sha[:16]}; names {escape(what)})")
