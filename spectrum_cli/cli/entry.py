"""The console script's entry point, kept import-light on purpose.

The ``spectrum`` script imports this module before anything heavy, so a Ctrl-C that
arrives while typer, rich or numpy are still being imported ends the process with
exit 130 and one line, not a traceback. :func:`spectrum_cli.cli.app.run` does the rest.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the ``spectrum`` command and exit with its code (never a traceback)."""
    try:
        from spectrum_cli.cli.app import run

        code = run()
    except KeyboardInterrupt:
        sys.stderr.write("spectrum: interrupted\n")
        code = 130
    sys.exit(code)
