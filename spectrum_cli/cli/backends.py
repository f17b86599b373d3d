"""``spectrum backends``: the installed numerical backends and what each can do."""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from spectrum_cli.cli.console import escape, exit_codes, stderr_console, stdout_console
from spectrum_cli.plugins import list_backends


def backends(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
    = False,
) -> None:
    """List the numerical backends (entry-point group `spectrum.backends`)."""
    err = stderr_console()
    with exit_codes(err):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            infos = list_backends()
        for w in caught:
            err.print(f"[yellow]warning:[/] {escape(str(w.message))}")
        rows = []
        for info in infos:
            b = info.backend
            rows.append({
                "name": info.name, "entry_point": info.target, "available": info.available,
                "reason": info.reason,
                "description": getattr(b, "description", ""),
                "capabilities": b.capabilities.describe() if b is not None else "",
                "accuracy": b.capabilities.accuracy if b is not None else "",
                "devices": (b.device_support() if hasattr(b, "device_support")
                            else ", ".join(b.capabilities.devices)) if b is not None else "",
            })
        if json_out:
            import json

            print(json.dumps({"backends": rows}, indent=2))
            return
        from rich.text import Text

        console = stdout_console()
        for r in rows:
            state = "available" if r["available"] else f"not available: {r['reason']}"
            console.print(Text.assemble((r["name"], "bold"), f"  [{r['accuracy']}; "
                                        f"{r['devices']}; {state}]"))
            console.print(f"  {r['description']}", highlight=False, markup=False)
            if r["capabilities"]:
                console.print(f"  {r['capabilities']}", style="dim", highlight=False,
                              markup=False)
