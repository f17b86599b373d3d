"""The console script's entry point, kept import-light on purpose.

The ``spectrum`` script imports this module before anything heavy, so a Ctrl-C that
arrives while typer, rich or numpy are still being imported ends the process with
exit 130 and one line, not a traceback. :func:`spectrum_cli.cli.app.run` does the rest.

Before anything else, :func:`drop_working_directory` takes the working directory off
``sys.path`` where the interpreter put it (``python -m spectrum_cli`` puts it first): a
folder holding ``h5py.py`` or ``numpy.py`` must not shadow what spectrum imports, late
ones included. The user's own ``--model``/``--data``/``--loss`` modules are found by
:mod:`spectrum_cli.io.usercode`, after the installed packages.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from typing import Any


def drop_working_directory() -> None:
    """Remove ``''`` (the working directory, wherever it is at the time of an import) and
    the interpreter's ``sys.path[0]`` when it is the working directory (``python -m``,
    ``python -c``) from ``sys.path``. Entries a user put there on purpose
    (``PYTHONPATH``, ``.pth`` files) are kept."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the working directory was removed: '' resolves to nothing
        cwd = None
    kept = [p for p in sys.path if p not in ("", ".")]
    if sys.path and sys.path[0] not in ("", ".") and cwd is not None:
        try:
            first_is_cwd = os.path.realpath(sys.path[0]) == cwd
        except (OSError, ValueError):
            first_is_cwd = False
        if first_is_cwd and kept and kept[0] == sys.path[0]:
            kept = kept[1:]
    sys.path[:] = kept


#: Packages whose C++ code calls back into Python (pybind11): a KeyboardInterrupt raised
#: in such a callback is a C++ exception thrown where none may be, and the process
#: aborts (``terminate called after throwing ... KeyboardInterrupt``, exit -6). Seen
#: with Ctrl-C during ``import torch``.
NATIVE_CALLBACKS = frozenset({"torch"})
#: How long a deferred Ctrl-C waits before it is delivered again.
DEFER_S = 0.05


def _on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C as ``KeyboardInterrupt``, except inside a package of
    :data:`NATIVE_CALLBACKS`: there the signal is sent again a moment later, until it
    lands in a frame of spectrum's (or of any other Python code)."""
    f = frame
    while f is not None:
        if str(f.f_globals.get("__name__", "")).partition(".")[0] in NATIVE_CALLBACKS:
            timer = threading.Timer(DEFER_S, os.kill, (os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
            return
        f = f.f_back
    raise KeyboardInterrupt


def main() -> None:
    """Run the ``spectrum`` command and exit with its code (never a traceback).

    Before it exits, the process moves every object still alive to the collector's
    permanent generation (:func:`gc.freeze`): the interpreter's shutdown otherwise runs
    one last full collection over every object the run imported (typer, rich, numpy,
    pydantic: ~0.15 s of each run, a sixth of ``spectrum --help``) only to free memory
    the operating system takes back anyway. The shutdown itself still happens: atexit
    handlers run, threads are joined, streams flushed, modules cleared.
    """
    try:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, _on_sigint)
        drop_working_directory()
        from spectrum_cli.cli.app import run

        code = run()
    except KeyboardInterrupt:
        sys.stderr.write("spectrum: interrupted\n")
        from spectrum_cli.core.errors import ExitCode  # light: an enum and exceptions
        code = int(ExitCode.INTERRUPTED)
    gc.freeze()
    sys.exit(code)
