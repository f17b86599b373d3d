"""The hostile-input suite (issue 10): every case of ``make_cases`` through the installed
console script, in a subprocess, in its own folder. A share of the cases execs the script;
the others fork it from a warm interpreter (:mod:`tests.forkserver`: the same script file,
argv, environment, working directory and streams, without ~0.6 s of start-up each), and
``HOSTILE_EXEC=1`` execs every case.

Each case must: exit with a code its case allows (bad input or usage is 2, never 3), print
no traceback, run no code (no marker file), leave every input byte-identical (and special
files of their kind), stay below a memory bound, finish before its timeout, print valid JSON
when ``--json`` was given, and print no raw ESC byte under ``NO_COLOR``.

Alone, the cases run concurrently (a thread pool of subprocesses, ``HOSTILE_JOBS``,
default 3) once per session, and each test then checks its own case's result. Under
pytest-xdist (the README's test command) each test runs its own case, and the workers
share the cases out. ``HOSTILE_KEEP=1`` keeps the
case folders (their path is printed on failure).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hostile import make_cases as M
from tests.forkserver import ForkServer, forkable
from tests.processes import REAPER

SPECTRUM = Path(sys.executable).parent / "spectrum"
#: The bound asserted on the peak RSS of a case's process tree.
RSS_LIMIT = int(1.5 * 2**30)
#: The watchdog kills a case whose process tree goes beyond this (protects the machine).
RSS_KILL = 2 * 2**30
ROOT = Path(tempfile.gettempdir()) / f"spectrum-hostile-{os.getpid()}"
#: HOSTILE_FULL=1 adds the extended variants (make_cases.EXTENDED).
CASES = M.declare(ROOT, full=os.environ.get("HOSTILE_FULL") == "1")
JOBS = int(os.environ.get("HOSTILE_JOBS", "3"))
#: ``HOSTILE_EXEC=1`` runs every case through an exec of the console script. By default
#: the first case of each issue item and every 16th case do, and the others are forked
#: from a warm interpreter (:mod:`tests.forkserver`), which saves ~0.6 s of start-up each.
EXEC_ALL = os.environ.get("HOSTILE_EXEC") == "1"
EXECED = {c.id for c in CASES[::16]} | set({c.cls: c.id for c in reversed(CASES)}.values())


def forked(case: M.Case) -> bool:
    return not EXEC_ALL and case.id not in EXECED and forkable(case.env)


@dataclass
class Run:
    argv: list[str]
    rc: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    wall_s: float = 0.0
    maxrss: int = 0  # bytes, from wait4 (the child and the descendants it waited for)
    watched_rss: int = 0  # bytes, the largest RSS the watchdog saw in the process tree
    killed: str | None = None  # "timeout" or "rss"


@dataclass
class Outcome:
    case: M.Case
    dir: Path
    setup: list[Run] = field(default_factory=list)
    run: Run | None = None
    before: dict[str, tuple] = field(default_factory=dict)
    after: dict[str, tuple] = field(default_factory=dict)
    error: str | None = None  # the harness failed before the run (setup, mutation)
    skipped: str | None = None


# --------------------------------------------------------------------------- processes


def _env(d: Path, extra: dict[str, str]) -> dict[str, str]:
    home = d / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb",
        "NO_COLOR": "1", "COLUMNS": "80",
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(home / ".mpl"),
        "TMPDIR": os.environ.get("TMPDIR", tempfile.gettempdir()),
    }
    for k, v in extra.items():  # relative paths in a case's environment are in its folder
        env[k] = str(d / v) if k.endswith(("_DIR", "_HOME")) and not os.path.isabs(v) else v
    return env


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc children lists)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            pass
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


#: The fork servers by thread (the session fixture runs cases from a pool of threads).
_servers: dict[int, ForkServer] = {}


def _server() -> ForkServer:
    """This thread's fork server (started on first use, with the cases' base environment)."""
    me = threading.get_ident()
    if me not in _servers:
        ROOT.mkdir(parents=True, exist_ok=True)
        _servers[me] = ForkServer(SPECTRUM, _env(ROOT / f"forkserver-{me}", {}),
                                  ROOT / "forkserver.log")
    return _servers[me]


def _close_servers() -> None:
    while _servers:
        _servers.popitem()[1].close()


def execute(argv: list[str], d: Path, cwd: Path, env: dict[str, str], timeout: float,
            fork: bool = False) -> Run:
    """Run ``spectrum *argv``, exec'd by a small launcher (``fork=False``) or forked from
    :mod:`tests.forkserver`; reap it with wait4 (peak RSS), kill its process group on a
    timeout or when its tree's RSS passes :data:`RSS_KILL`."""
    run = Run(argv=list(argv))
    out_path = d / "home" / f".out-{time.monotonic_ns()}"
    err_path = out_path.with_suffix(".err")
    rss_path = out_path.with_suffix(".rss")
    t0 = time.monotonic()
    if fork:
        server = _server()
        pid = server.start(argv, cwd, env, out_path, err_path)

        def ended(block: bool) -> tuple[int, int] | None:
            return server.poll(None if block else 0.05)
    else:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", REAPER, str(rss_path),
                                     str(SPECTRUM), *argv], cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        pid = proc.pid

        def ended(block: bool) -> tuple[int, int] | None:
            got, st, _ = os.wait4(pid, 0 if block else os.WNOHANG)
            if not got:
                time.sleep(0.05)
                return None
            proc.returncode = os.waitstatus_to_exitcode(st)  # keep Popen from reaping again
            try:
                return st, int(rss_path.read_text())
            except (OSError, ValueError):  # the launcher was killed: polls only
                return st, 0
    deadline = t0 + timeout
    polls = 0
    while (done := ended(False)) is None:
        polls += 1
        if polls % 2 == 0:
            peak = max((_rss(p) for p in _tree(pid)), default=0)
            run.watched_rss = max(run.watched_rss, peak)
            if peak > RSS_KILL:
                run.killed = "rss"
        if time.monotonic() > deadline:
            run.killed = run.killed or "timeout"
        if run.killed:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                os.kill(pid, signal.SIGKILL)  # forked a moment ago: no group of its own yet
            done = ended(True)
            break
    status, run.maxrss = done
    run.wall_s = time.monotonic() - t0
    try:  # stragglers of the group (workers) must not outlive the case
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    run.rc = os.waitstatus_to_exitcode(status)
    run.stdout, run.stderr = out_path.read_bytes(), err_path.read_bytes()
    out_path.unlink()
    err_path.unlink()
    return run


# --------------------------------------------------------------------------- snapshots


def _fingerprint(path: Path) -> tuple:
    """What must not change: the kind of file, and for regular files the sha256, for
    symlinks the target, for devices the device number."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ("missing",)
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return ("symlink", os.readlink(path))
    if stat.S_ISREG(mode):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return ("file", h.hexdigest(), stat.S_IMODE(mode))
    if stat.S_ISDIR(mode):
        return ("dir",)
    if stat.S_ISFIFO(mode):
        return ("fifo",)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return ("device", st.st_rdev)
    return ("other", stat.S_IFMT(mode))


def snapshot(d: Path, paths: list[str]) -> dict[str, tuple]:
    return {p: _fingerprint(d / p) for p in paths}


# --------------------------------------------------------------------------- one case


def run_case(case: M.Case, fork: bool | None = None) -> Outcome:
    """Run ``case`` in a fresh folder (forked or exec'd as :func:`forked` says, unless
    ``fork`` does)."""
    fork = forked(case) if fork is None else fork
    d = ROOT / case.id
    oc = Outcome(case=case, dir=d)
    if case.skip:
        oc.skipped = case.skip
        return oc
    try:
        if d.exists():
            shutil.rmtree(d)
        M.materialize(case, ROOT)
    except OSError as exc:
        if case.requires_root:
            oc.skipped = f"cannot create the special file ({exc})"
        else:
            oc.error = f"materialize: {exc!r}"
        return oc
    env = _env(d, case.env)
    cwd = d / case.cwd
    try:
        for argv in case.setup:
            oc.setup.append(execute(list(argv), d, d, env, max(case.timeout, 120),
                                    fork=fork))
        M.apply_mutations(case, d)
    except Exception as exc:  # noqa: BLE001 - reported as the case's failure
        oc.error = f"setup/mutation failed: {exc!r}; setup runs: " + "; ".join(
            f"{' '.join(r.argv)} -> {r.rc} {r.stderr.decode(errors='replace')[-300:]!r}"
            for r in oc.setup)
        return oc
    paths = M.inventory(d, case)
    oc.before = snapshot(d, paths)
    oc.run = execute(case.argv, d, cwd, env, case.timeout, fork=fork)
    oc.after = snapshot(d, paths)
    return oc


def problems(oc: Outcome) -> list[str]:
    """Everything the contract forbids that this outcome shows (empty: the case passes)."""
    case, run = oc.case, oc.run
    if oc.error:
        return [oc.error]
    assert run is not None
    out = run.stdout.decode("utf-8", errors="replace")
    err = run.stderr.decode("utf-8", errors="replace")
    both = out + "\n" + err
    found: list[str] = []
    if run.killed == "timeout":
        found.append(f"HANG: killed after {case.timeout:.0f} s")
    elif run.killed == "rss":
        found.append(f"RSS: killed at {run.watched_rss / 2**30:.2f} GiB (limit {RSS_LIMIT / 2**30:.1f})")
    elif run.rc not in case.expect:
        found.append(f"EXIT {run.rc}, expected {'/'.join(map(str, case.expect))}")
    if "Traceback (most recent call last)" in both:
        found.append("TRACEBACK in output")
    peak = max(run.maxrss, run.watched_rss)
    if peak > RSS_LIMIT and run.killed != "rss":
        found.append(f"RSS: peak {peak / 2**30:.2f} GiB > {RSS_LIMIT / 2**30:.1f} GiB")
    markers = [m for m in case.markers if os.path.lexists(oc.dir / m)]
    markers += [str(p.relative_to(oc.dir)) for p in oc.dir.rglob(M.MARKER + "*")
                if str(p.relative_to(oc.dir)) not in markers]
    if markers:
        found.append(f"MARKER: code ran (created {', '.join(markers)})")
    changed = [p for p in oc.before if oc.before[p] != oc.after.get(p)]
    if changed:
        found.append("MODIFIED: " + ", ".join(f"{p} {oc.before[p][0]}->{oc.after[p][0]}"
                                             for p in changed[:6]))
    if b"\x1b" in run.stdout or b"\x1b" in run.stderr:
        found.append("RAW ESC byte in " + " and ".join(
            n for n, s in (("stdout", run.stdout), ("stderr", run.stderr)) if b"\x1b" in s))
    if case.wants_json and run.rc in (0, 1, 2) and run.killed is None and out.strip():
        try:
            json.loads(out)
        except ValueError as exc:
            found.append(f"JSON: stdout is not one JSON document ({exc})")
    if case.wants_json and run.rc in (0, 1) and not out.strip():
        found.append("JSON: --json run succeeded with an empty stdout")
    for s in case.stderr_contains:
        if s.lower() not in err.lower():
            found.append(f"MESSAGE: stderr lacks {s!r}")
    for s in case.output_contains:
        if s.lower() not in both.lower():
            found.append(f"MESSAGE: output lacks {s!r}")
    for s in case.output_absent:
        if s.lower() in both.lower():
            found.append(f"MESSAGE: output contains {s!r}")
    prose = re.sub(r"(`+)[^`\n]*?\1", "``", out)  # Markdown code spans render literally
    for pattern in case.stdout_absent_re:
        if re.search(pattern, prose, re.M):
            found.append(f"INJECTION: stdout matches {pattern!r}")
    for pattern in case.forbidden_globs:
        left = [str(p.relative_to(oc.dir)) for p in oc.dir.rglob("*")
                if fnmatch.fnmatch(str(p.relative_to(oc.dir)), pattern)]
        if left:
            found.append(f"LEFTOVER: {', '.join(left[:4])}")
    return found


def describe(oc: Outcome, found: list[str]) -> str:
    run = oc.run
    lines = [f"case {oc.case.id} (issue item {oc.case.cls}) in {oc.dir}",
             f"  spectrum {' '.join(map(repr, oc.case.argv))}"]
    if oc.case.description:
        lines.append(f"  ({oc.case.description})")
    lines += [f"  - {f}" for f in found]
    if run is not None:
        lines.append(f"  rc={run.rc} wall={run.wall_s:.1f}s peak_rss="
                     f"{max(run.maxrss, run.watched_rss) / 2**20:.0f} MiB")
        lines.append("  stderr tail: " + run.stderr.decode(errors="replace")[-1500:])
        lines.append("  stdout head: " + run.stdout.decode(errors="replace")[:600])
    return "\n".join(lines)


# --------------------------------------------------------------------------- pytest


def _selected_ids(session) -> list[str]:
    ids = []
    for item in session.items:
        cs = getattr(item, "callspec", None)
        if cs is not None and isinstance(cs.params.get("case"), M.Case):
            ids.append(cs.params["case"].id)
    return ids


@pytest.fixture(scope="session")
def hostile_outcomes(request) -> dict[str, Outcome]:
    """Run every selected case once, concurrently; the results by case id. None under
    pytest-xdist: there each test runs its own case (a session fixture would run every
    case in every worker)."""
    if not SPECTRUM.exists():
        pytest.skip(f"the console script is not installed at {SPECTRUM}")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield None
        _close_servers()
        _remove(ROOT)
        return
    wanted = set(_selected_ids(request.session))
    todo = [c for c in CASES if c.id in wanted]
    ROOT.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # slow cases first so that the pool stays busy to the end
    todo.sort(key=lambda c: -(c.timeout + 60 * len(c.setup)))
    with ThreadPoolExecutor(max_workers=max(1, JOBS)) as pool:
        results = {oc.case.id: oc for oc in pool.map(run_case, todo)}
    wall = time.monotonic() - t0
    summary = ROOT / "summary.json"
    summary.write_text(json.dumps({
        "wall_s": wall, "cases": len(todo),
        "runs": {i: {"rc": oc.run.rc, "wall_s": round(oc.run.wall_s, 2),
                     "setup_s": round(sum(r.wall_s for r in oc.setup), 2),
                     "peak_rss_mib": max(oc.run.maxrss, oc.run.watched_rss) >> 20}
                 for i, oc in results.items() if oc.run is not None},
        "failures": {i: problems(oc) for i, oc in results.items()
                     if not oc.skipped and problems(oc)}}, indent=1))
    sys.stderr.write(f"\nhostile suite: {len(todo)} cases in {wall:.0f} s ({JOBS} at a time); "
                     f"summary in {summary}\n")
    _close_servers()
    yield results
    _remove(ROOT)


def _remove(root: Path) -> None:
    """The case folders, unless ``HOSTILE_KEEP=1``."""
    if os.environ.get("HOSTILE_KEEP") == "1" or not root.exists():
        return
    for p in [root, *root.rglob("*")]:  # read-only folders would stop rmtree
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
    shutil.rmtree(root, ignore_errors=True)


def test_enough_cases_across_every_class():
    by_class: dict[int, int] = {}
    for c in CASES:
        by_class[c.cls] = by_class.get(c.cls, 0) + 1
    assert len(CASES) >= 200, by_class
    for item in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 19):
        assert by_class.get(item, 0) >= 2, (item, by_class)
    assert len({c.id for c in CASES}) == len(CASES)


#: Cases whose forked run must equal their exec'd one: a document on stdout, a refusal, a
#: variable of the case's environment, a setup run and a cache it wrote, a report written.
TWINS = ("huge-entries-1e300-square-json", "st-header-invalid-json", "config-env-int-1e400",
         "cache-entry-array", "report-onto-input-relative-spelling")


@pytest.mark.parametrize("case_id", TWINS)
def test_a_forked_run_is_the_execd_run(case_id: str) -> None:
    """The fork server's child is the console script as exec starts it: same exit code,
    same streams (the document's creation time and timings masked), same contract."""
    if not SPECTRUM.exists():
        pytest.skip(f"the console script is not installed at {SPECTRUM}")
    case = next(c for c in CASES if c.id == case_id)
    ROOT.mkdir(parents=True, exist_ok=True)
    try:
        runs = [run_case(case, fork=fork) for fork in (False, True)]
    finally:
        _close_servers()

    def masked(b: bytes) -> str:
        return re.sub(r'("(created|time_s|wall_s)": )[^,\n]+', r"\1_", b.decode(errors="replace"))

    execd, forked_ = (oc.run for oc in runs)
    assert (forked_.rc, masked(forked_.stdout), masked(forked_.stderr)) == (
        execd.rc, masked(execd.stdout), masked(execd.stderr)), describe(runs[1], [])
    assert [problems(oc) for oc in runs] == [[], []]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: M.Case, hostile_outcomes: dict[str, Outcome] | None) -> None:
    if hostile_outcomes is None:
        ROOT.mkdir(parents=True, exist_ok=True)
        oc = run_case(case)
    else:
        oc = hostile_outcomes[case.id]
    if oc.skipped:
        pytest.skip(oc.skipped)
    found = problems(oc)
    assert not found, describe(oc, found)
