"""Executors: how the analyses a run needs are computed, and with how many threads.

The ``spectrum.executors`` entry-point group; built-ins ``serial`` (this process) and
``processes`` (a pool of worker processes forked from a server that preloaded torch and
spectrum), registered like a third-party executor. An executor receives picklable tasks
(a function and its arguments) and calls back with each result as it arrives, in any
order; the caller keeps the order it needs.

Workers die with the parent: each asks the kernel for SIGKILL when its parent dies
(Linux) and watches the parent from a thread; a SIGTERM of the parent kills them before
it exits."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence

from spectrum_cli import plugins
from spectrum_cli.runs.plan import Plan
from spectrum_cli.runs.threads import (
    THREAD_ENV,
    environ_set,
    limit_threads,
    steady_malloc,
    threads_limited,
)

#: Set while a pool runs: the forkserver arms its death signal only for this parent.
_MAIN_PID_ENV = "SPECTRUM_BATCH_MAIN_PID"


def _prctl_death_signal() -> None:
    """Linux: SIGKILL this process when the thread that forked it ends."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(parent: int, main: int, every: float) -> None:
    while os.getppid() == parent and _alive(main):
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(main: int, every: float = 0.5) -> None:
    """Make this (worker) process end when its parent or the batch's main process
    ``main`` does: the kernel's parent-death signal where there is one, and a thread
    that polls the parent as a fallback."""
    parent = os.getppid()
    _prctl_death_signal()
    if os.getppid() != parent or not _alive(main):  # it died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent, main, every), daemon=True,
                     name="spectrum-lifeline").start()


def quiet_once_orphaned(main: int, grace: float = 2.0) -> Callable[..., None]:
    """An excepthook for the processes the forkserver forks to become workers: an error
    while one loads what the main process ``main`` sent it (the pool's locks, unlinked
    as the main process exits after a Ctrl-C: ``FileNotFoundError`` in
    ``SemLock._rebuild``) is printed only if ``main`` still runs ``grace`` seconds on.
    The main process has said why it stopped; a worker that could not start then adds
    nothing but a traceback."""
    def hook(exc_type: Any, exc: Any, tb: Any) -> None:
        deadline = time.monotonic() + grace
        while _alive(main):
            if time.monotonic() > deadline:
                sys.__excepthook__(exc_type, exc, tb)
                return
            time.sleep(0.02)
    return hook


def _preloaded_by_forkserver() -> bool:
    """Whether this import runs inside multiprocessing's forkserver preload (its ``main``
    is on the stack), not in any other process that happens to carry the variable."""
    frame = sys._getframe(1)
    while frame is not None:
        if (frame.f_code.co_name == "main"
                and frame.f_globals.get("__name__") == "multiprocessing.forkserver"):
            return True
        frame = frame.f_back
    return False


def _arm_forkserver() -> None:
    """In the forkserver started for a batch (its parent is the batch's main process),
    ask for SIGKILL when that parent dies (it also exits on its own when the parent's
    end of its pipe closes), and keep the workers it forks quiet when they cannot start
    because that parent has gone. A forkserver whose batch ended before this ran (a
    Ctrl-C while it started) exits here: it would otherwise go on to fork the workers
    the batch had asked for. Runs when the forkserver preloads this module; any other
    process that imports it with the variable set (a stale copy in an environment) is
    left alone."""
    main = os.environ.get(_MAIN_PID_ENV, "")
    if not main.isdigit() or not _preloaded_by_forkserver():
        return
    if os.getppid() == int(main):
        _prctl_death_signal()
        sys.excepthook = quiet_once_orphaned(int(main))
    elif not _alive(int(main)):  # gone before, or as, it armed
        os._exit(0)


_arm_forkserver()


def _worker_init(threads: int, main: int, environ: dict[str, str] | None = None) -> None:
    if environ is not None:  # the parent's environment now, not the forkserver's at start
        os.environ.clear()
        os.environ.update(environ)
    die_with_parent(main)
    # Ctrl-C reaches the whole process group: the parent handles it and kills the
    # workers, which must not print a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads(threads)
    steady_malloc()


#: What the forkserver imports once for all its workers; :data:`REMOTE_PRELOAD` too when
#: the run reads object storage (s3fs and its botocore: ~0.35 s of CPU per worker else).
PRELOAD = ["spectrum_cli.runs.executors", "torch", "spectrum_cli.runs.dispatch",
           "spectrum_cli.runs.optimizer", "spectrum_backends.dense"]


REMOTE_PRELOAD = ["spectrum_cli.io.storage", "fsspec", "s3fs"]


def _context(remote: bool = False) -> Any:
    """Workers fork from a server that imported torch and spectrum once (where the
    platform has one): otherwise each worker pays an interpreter start and a ~2 s torch
    import before its first result. BLAS is single-threaded there, so forking is safe.
    The server is started once per process; its preload is the first caller's (a
    module it could not import is skipped by multiprocessing)."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD + (REMOTE_PRELOAD if remote else []))
        _start_forkserver()
        return ctx
    return multiprocessing.get_context("spawn")


def start_early(remote: bool = False) -> None:
    """Start the workers' forkserver now, before the source's headers are read: its
    preload (torch, ~1.5 s) then overlaps that reading instead of following it. Started
    as :func:`worker_pool` starts it: one BLAS thread (workers set theirs when they
    start) and armed to die with this process."""
    with _pool_environ(1):
        _context(remote)


def _pool_environ(threads: int) -> Any:
    """This process's environment while a pool (or its forkserver) starts: ``threads``
    BLAS/OpenMP threads, inherited by the workers, and the pid the forkserver arms its
    death signal for; restored on leaving."""
    return environ_set({**{k: str(threads) for k in THREAD_ENV},
                        _MAIN_PID_ENV: str(os.getpid())})


def _start_forkserver() -> None:
    """Start the forkserver with SIGINT blocked, a mask it keeps through exec and hands
    to the workers it forks: Ctrl-C reaches the whole process group, and the parent
    alone must handle it, not a forkserver in the middle of importing torch (a
    traceback). The parent's own Ctrl-C is held only while it spawns, not lost."""
    from multiprocessing import forkserver, resource_tracker

    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        forkserver.ensure_running()
        return
    # First the tracker: starting it unblocks SIGINT (its own mask dance), which
    # would undo ours if it started within forkserver.ensure_running.
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (running tasks are lost) and shut it down."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        with contextlib.suppress(Exception):
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        with contextlib.suppress(Exception):
            p.join(timeout=2)


class _Terminated(BaseException):
    """SIGTERM arrived while workers ran."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


@contextlib.contextmanager
def worker_pool(workers: int, threads: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers use ``threads`` threads each and die with this
    process. Leaving the block by an exception (Ctrl-C, SIGTERM) kills the workers at
    once; a SIGTERM is then re-delivered to this process under its previous handler."""
    pool: ProcessPoolExecutor | None = None
    previous = _catch_sigterm()
    finished = terminated = False
    try:
        with _pool_environ(threads):
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                       initargs=(threads, os.getpid(), dict(os.environ)),
                                       mp_context=_context())
            yield pool
            pool.shutdown(wait=True)
            finished = True
    except _Terminated:
        terminated = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if pool is not None and not finished:
            kill_pool(pool)
    if terminated:
        signal.raise_signal(signal.SIGTERM)  # the previous handler decides (default: die)
        raise SystemExit(128 + signal.SIGTERM)


def _catch_sigterm() -> Any:
    """Install the SIGTERM handler of a pool; the previous handler (None: not installed,
    from a thread other than the main one or where SIGTERM is ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
        return None
    signal.signal(signal.SIGTERM, _raise_terminated)
    return previous


#: A finished task: (its index in the submitted list, its result or the exception).
Done = Callable[[int, Any], None]


class SerialExecutor:
    """Every task in this process, one after the other, with ``threads`` threads."""

    name = "serial"
    description = "in this process, one task after the other"

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple], chosen: Plan,
            done: Done) -> None:
        with threads_limited(chosen.threads):
            for i, args in enumerate(tasks):
                limit_threads(chosen.threads)  # libraries the last task loaded too
                try:
                    result = fn(*args)
                except Exception as exc:  # noqa: BLE001 - the caller records it
                    result = exc
                done(i, result)


class ProcessExecutor:
    """Tasks in ``chosen.workers`` worker processes of ``chosen.threads`` threads each,
    forked from a server that preloaded torch and spectrum; they die with this process."""

    name = "processes"
    description = "worker processes on this machine (forkserver), largest share of cores"

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple], chosen: Plan,
            done: Done) -> None:
        with worker_pool(max(1, chosen.workers), chosen.threads) as pool:
            pending = {pool.submit(fn, *args): i for i, args in enumerate(tasks)}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    try:
                        result = future.result()
                    except Exception as exc:  # a worker died (OOM, signal) or the task
                        result = exc
                    done(i, result)


@dataclass(frozen=True)
class Cluster:
    """Where a cluster's scheduler is: ``scheduler`` (an address such as
    ``tcp://10.0.0.5:8786``) or ``scheduler_file`` (the file ``dask scheduler
    --scheduler-file`` writes), from the run's settings (``--scheduler``,
    ``--scheduler-file``, ``SPECTRUM_SCHEDULER``, the configuration file). Travels in the
    run's options to the executor; nothing is put in the environment."""

    scheduler: str | None = None
    scheduler_file: str | None = None

    @property
    def named(self) -> bool:
        """Whether a scheduler is named: then ``auto`` sends the tasks there, even with
        one job (the cluster's workers do the work, not this process)."""
        return bool(self.scheduler or self.scheduler_file)


def choose(name: str, chosen: Plan, cluster: Cluster = Cluster()) -> Any:
    """The executor ``name`` from the registry; ``auto``: dask when ``cluster`` names a
    scheduler, else processes when the plan has workers, else serial. An executor with a
    ``with_cluster`` method gets ``cluster`` through it."""
    if name == "auto":
        name = "dask" if cluster.named else "processes" if chosen.workers else "serial"
    runner = plugins.executors.get(name)
    return runner.with_cluster(cluster) if hasattr(runner, "with_cluster") else runner

