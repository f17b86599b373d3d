"""Console-script runs forked from a warm interpreter: the hostile corpus's fast path.

A hostile case is one run of the installed ``spectrum`` script; ~0.6 s of each run is the
interpreter starting and importing numpy, typer, rich and spectrum's command layer before
the input is even opened. A :class:`ForkServer` is a small Python process, started once
per test process, that imports those modules and then forks one child per run. The child
becomes the console script as exec would leave it: its own session (process group), the
case's working directory, environment (``os.environ`` replaced, so C code sees it too),
standard streams on the case's files, ``sys.argv`` and ``sys.path[0]`` as the script's
own, and then the installed script file itself runs as ``__main__`` and the interpreter
exits through its normal shutdown (atexit handlers, thread joins) with the script's code.

What the child does not get afresh is what the interpreter reads at start-up (locale,
``PYTHON*`` variables, BLAS thread variables read when numpy loads): :func:`forkable`
says which case environments may differ from the server's only in variables read later.
``tests/hostile/test_hostile.py`` still runs a share of the corpus (and all of it with
``HOSTILE_EXEC=1``) through a real ``exec`` of the script.

Protocol (one JSON document per line): the test process writes ``{"argv", "cwd", "env",
"stdout", "stderr"}``; the server answers ``{"pid"}`` once the child runs, then
``{"status", "maxrss"}`` (``os.wait4``'s status and peak RSS in bytes) once it has
ended. The caller watches and kills the child (``os.killpg(pid, SIGKILL)``) as it would
a child of its own; only the server can reap it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

#: Imported by the server before it forks: what most runs of the corpus import (torch and
#: scipy, which few of them need, are left to the runs; nothing here starts a thread).
PRELOAD = ("numpy", "threadpoolctl", "h5py", "typer", "typer._adapters", "rich.console", "spectrum_cli.cli.entry",
           "spectrum_cli.api", "spectrum_cli.io.readers", "spectrum_cli.runs.optimizer",
           "spectrum_cli.core.esd_metrics", "spectrum_cli.core.esd_estimators",
           "spectrum_cli.report.hdf5", "spectrum_backends.dense")
#: Variables of a case's environment that a forked child honours (read at call time).
LATE_VARIABLES = ("SPECTRUM_", "XDG_", "HOME")


def forkable(extra_env: dict[str, str]) -> bool:
    """Whether a run whose environment adds ``extra_env`` to the server's may be forked."""
    return all(k.startswith(LATE_VARIABLES) for k in extra_env)


class ForkServer:
    """The test process's side: start the server, run the script, collect the status."""

    def __init__(self, script: Path, env: dict[str, str], log: Path) -> None:
        self.script = Path(script)
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.script)], env=env, cwd="/",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, bufsize=0)
        ready = self._read()
        if ready.get("ready") is not True:
            raise RuntimeError(f"the fork server did not start: {ready}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()  # unbuffered: select() sees what is unread
        if not line:
            raise RuntimeError(f"the fork server ended (rc {self.proc.poll()}); see {self._log.name}")
        return json.loads(line)

    def start(self, argv: list[str], cwd: Path, env: dict[str, str], stdout: Path,
              stderr: Path) -> int:
        """Fork the script with ``argv``; the child's pid (and process group). One run
        at a time: :meth:`poll` until it gives the status."""
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": env,
               "stdout": str(stdout), "stderr": str(stderr)}
        self.proc.stdin.write(json.dumps(req).encode() + b"\n")
        return int(self._read()["pid"])

    def poll(self, timeout: float) -> tuple[int, int] | None:
        """The status and peak RSS (bytes) of the child :meth:`start` forked, or None if
        it still runs after ``timeout`` seconds."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        done = self._read()
        return int(done["status"]), int(done["maxrss"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# --------------------------------------------------------------------------- the server


def _send(doc: dict) -> None:
    os.write(1, json.dumps(doc).encode() + b"\n")


def _serve() -> dict:
    """Preload, then fork one child per request; return the request in the child."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import typer

    from spectrum_cli.cli.app import build
    typer.main.get_command(build())  # every command module, and typer's reading of them
    sys.stdout.flush()
    sys.stderr.flush()
    _send({"ready": True, "pid": os.getpid()})
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(0, 1 << 16)  # no file object: its finalizer would close fd 0
            if not chunk:
                raise SystemExit(0)
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        req = json.loads(line)
        tasks = os.listdir("/proc/self/task")
        if len(tasks) != 1:  # a fork must not leave a lock held by another thread
            raise RuntimeError(f"the fork server has {len(tasks)} threads")
        pid = os.fork()
        if pid == 0:
            return req
        _send({"pid": pid})
        _, status, usage = os.wait4(pid, 0)
        _send({"status": status, "maxrss": usage.ru_maxrss * 1024})


def _become(script: str, req: dict) -> None:
    """In the forked child: turn into ``spectrum *argv`` as exec would start it."""
    import runpy
    import tempfile

    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (out, 1), (err, 2)):  # first: what fails below is seen
        os.dup2(fd, target)
        os.close(fd)
    os.setsid()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    sys.argv = [script, *req["argv"]]
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    _script = sys.argv[1]
    _request = _serve()
    _become(_script, _request)
