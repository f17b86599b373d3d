"""The fake third-party distribution of ``tests/plugins/site`` (a dist-info with
entry_points.txt: nothing installed, nothing in spectrum edited), and the installed
console script run with it on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent / "site"
SCRIPT = Path(sys.executable).parent / "spectrum"


def spectrum(*args, cwd=None, env=None):
    """The installed console script, in a subprocess."""
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100",
                               **(env or {})})
