"""Helpers of tests that watch processes: peak memory of a command, whether one still runs."""

from __future__ import annotations

import time

#: Runs a command as its grandchild and writes the grandchild's peak RSS. Linux carries a
#: process's RSS high-water mark across fork and exec, so a child forked straight from a
#: (large) pytest process would report pytest's own peak; a grandchild forked from this
#: small launcher starts from the launcher's. ``python -c REAPER RSS_FILE COMMAND...``
REAPER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "with open(sys.argv[1], 'w') as fh:\n"
    "    fh.write(str(usage.ru_maxrss * 1024))\n"
    "sys.exit(os.waitstatus_to_exitcode(status) % 256)\n"
)


def running(pid: int, grace: float = 10.0) -> bool:
    """Whether ``pid`` still runs ``grace`` seconds from now at the latest (a kill is
    delivered asynchronously; a zombie waiting for its reaper does not run)."""
    deadline = time.monotonic() + grace
    while True:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except (FileNotFoundError, ProcessLookupError):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
