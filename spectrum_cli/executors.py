"""Executors: how the analyses a run needs are computed, and with how many threads.

The ``spectrum.executors`` entry-point group; built-ins ``serial`` (this process) and
``processes`` (a pool of worker processes forked from a server that preloaded torch and
spectrum), registered like a third-party executor. An executor receives picklable tasks
(a function and its arguments) and calls back with each result as it arrives, in any
order; the caller keeps the order it needs.

Threads: workers x threads <= the cores this process may run on (``threads`` overrides;
else ``OMP/OPENBLAS/MKL_NUM_THREADS`` where they ask for fewer), set in every worker
through threadpoolctl (BLAS/OpenMP) and torch; a single process gets
:func:`default_threads` (``--threads``, else the environment's, else every core). The
one policy for every path (in-process, workers, Dask, the callbacks, ``watch``):

* a process's thread budget: :func:`default_threads` (alone) or :func:`plan` (workers);
  set with :func:`threads_limited` (a block) or :func:`limit_threads` (a worker);
* one matrix: every library call whose rounding depends on its thread count runs on one
  thread (:func:`spectrum_cli.core.measure.single_threaded`, entered by the per-matrix
  measurement itself, so also on Dask and in the callbacks); only the Gram product of a
  big matrix is split, into shape-fixed tiles, among :func:`blas_threads_for` threads of
  the budget. The same tensor gives the same bits whatever the parallelism; the
  crossover and its measurements are in :mod:`spectrum_cli.core.measure`.

Workers die with the parent: each asks the kernel for SIGKILL when its parent dies
(Linux) and watches the parent from a thread; a SIGTERM of the parent kills them before
it exits.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from spectrum_cli.core.errors import UsageError

THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Set while a pool runs: the forkserver arms its death signal only for this parent.
_MAIN_PID_ENV = "SPECTRUM_BATCH_MAIN_PID"


# --------------------------------------------------------------------------- memory

#: glibc's malloc gives every request of at least this many bytes its own mapping, handed
#: back to the system when freed (see :func:`steady_malloc`).
MMAP_THRESHOLD = 1 << 20
_malloc_fixed = False


def steady_malloc() -> None:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (``mallopt(M_MMAP_THRESHOLD)``)
    in a process that measures tensors, unless ``MALLOC_MMAP_THRESHOLD_`` chooses one.
    By default glibc raises the threshold each time a mapped block is freed, up to
    32 MiB; after the first big tensor, read pieces and workspaces of 1-32 MiB come from
    the heap, which fragments and does not shrink. Fixed: 41 MiB less peak on a 2 GB
    TinyLlama-shaped checkpoint read from S3 with ``--jobs 1`` (944 -> 903 MiB), the
    same time. Once per process; nothing where the C library is not glibc."""
    global _malloc_fixed
    if _malloc_fixed or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    _malloc_fixed = True
    import platform

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    import ctypes

    m_mmap_threshold = -3  # <malloc.h>
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(m_mmap_threshold, MMAP_THRESHOLD)


# --------------------------------------------------------------------------- threads


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Plan:
    """How the misses are computed: ``workers`` processes of ``threads`` threads each
    (``workers`` 0: in this process), out of ``jobs`` asked for on ``cores`` cores."""

    jobs: int
    workers: int
    threads: int
    cores: int

    def as_settings(self) -> dict[str, int]:
        return asdict(self)


def env_threads() -> int | None:
    """The smallest thread count the environment asks for (OMP/OpenBLAS/MKL), if any."""
    asked = []
    for name in THREAD_ENV:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            asked.append(int(value))
    return min(asked) if asked else None


def default_threads(explicit: int | None = None) -> int:
    """The thread budget of one process computing alone: ``explicit`` (``--threads``),
    else the smallest of ``OMP/OPENBLAS/MKL_NUM_THREADS``, else every usable core. What
    the in-process path, ``watch`` and the training callbacks pass to
    :func:`threads_limited`."""
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
            raise UsageError(f"--threads: expected at least 1, got {explicit!r}")
        return explicit
    return env_threads() or available_cores()


def threads_from(explicit: int | None = None) -> str:
    """Where the thread budget came from: ``--threads``, ``environment`` (the caller's
    ``*_NUM_THREADS``, not those :func:`threads_limited` sets) or ``cores``."""
    if explicit is not None:
        return "--threads"
    return "environment" if caller_thread_env() else "cores"


#: The ``*_NUM_THREADS`` variables as the caller had them before the outermost
#: :func:`threads_limited` block set its own (None: outside any block).
_caller_env: dict[str, str] | None = None


def caller_thread_env() -> dict[str, str]:
    """The thread variables as this process's caller set them (a positive integer each;
    inside :func:`threads_limited`, as they were before it)."""
    env = _caller_env if _caller_env is not None else os.environ
    return {k: env[k] for k in THREAD_ENV
            if env.get(k, "").strip().isdigit() and int(env[k]) > 0}


def blas_threads_for(shape: Sequence[int], budget: int) -> int:
    """Threads one matrix of ``shape`` gets out of a process's ``budget`` (for the
    tiles of its Gram product; everything else on one thread):
    :func:`spectrum_cli.core.measure.blas_threads_for`."""
    from spectrum_cli.core.measure import blas_threads_for as rule

    return rule(tuple(shape), budget)


def thread_settings(threads: int, explicit: int | None = None) -> dict[str, Any]:
    """What a run's settings record about its threads: the budget per process, where it
    came from, the library threads of a matrix's LAPACK/BLAS calls (1) and the size
    from which its Gram product is split among the budget's threads."""
    from spectrum_cli.core.measure import GRAM_TILE, PARALLEL_GRAM_FLOPS

    return {"threads_from": threads_from(explicit), "library_threads": 1,
            "parallel_gram_flops": PARALLEL_GRAM_FLOPS, "gram_tile": GRAM_TILE,
            "environment": caller_thread_env()}


def plan(jobs: int, threads: int | None, misses: int, cores: int | None = None) -> Plan:
    """Worker processes and threads per worker. ``threads`` None: cores // workers, or
    less where OMP/OPENBLAS/MKL_NUM_THREADS ask for less, so workers x threads <= cores.
    One miss (or ``jobs`` 1) is computed in this process (``workers`` 0)."""
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: expected at least 1, got {threads}")
    cores = cores or available_cores()
    workers = min(max(1, jobs), misses)
    share = max(1, cores // max(1, workers))
    chosen = threads or min(share, env_threads() or share)
    return Plan(max(1, jobs), workers if workers > 1 else 0, chosen, cores)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int, what: str = "--max-memory") -> int:
    """Bytes of a size such as ``8GiB``, ``512MB``, ``1.5G`` or ``1000000`` (K, M, G, T
    are powers of 1000, KiB, MiB, GiB, TiB of 1024); UsageError when it is not one."""
    import re

    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise UsageError(f"{what}: expected a positive size, got {text!r}")
        return text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*",
                         str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise UsageError(f"{what}: expected a size such as 8GiB, 512MB or 1000000, "
                             f"got {text!r}")
        value, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(value * _UNITS[unit]):  # 1e400: inf, not a size
        shown = repr(text) if len(str(text)) <= 40 else repr(str(text)[:40] + "...")
        raise UsageError(f"{what}: {shown} is too large for a size in bytes")
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise UsageError(f"{what}: expected a positive size, got {text!r}")
    return size


def fit_memory(chosen: Plan, needs: Sequence[int], limit: int | None,
               threads: int | None = None) -> Plan:
    """``chosen`` with fewer workers where the expected peak (the sum of the largest
    ``workers`` entries of ``needs``, bytes per task) would pass ``limit``; threads per
    worker are re-planned for the workers that remain. UsageError when the largest task
    alone needs more than ``limit``."""
    if limit is None or not needs:
        return chosen
    largest = sorted(needs, reverse=True)
    if largest[0] > limit:
        raise UsageError(f"--max-memory {format_bytes(limit)}: the largest tensor alone is "
                         f"expected to need {format_bytes(largest[0])}")
    workers = max(1, chosen.workers)
    while workers > 1 and sum(largest[:workers]) > limit:
        workers -= 1
    if workers == max(1, chosen.workers):
        return chosen
    fitted = plan(workers, threads, len(needs), chosen.cores)
    return Plan(chosen.jobs, fitted.workers, fitted.threads, chosen.cores)


def expected_peak(chosen: Plan, needs: Sequence[int]) -> int:
    """Bytes the plan's workers are expected to hold at most: its largest tasks'."""
    return sum(sorted(needs, reverse=True)[:max(1, chosen.workers)])


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _set_threads(threads: int) -> None:
    """Thread counts read by libraries loaded from now on, and torch's if loaded."""
    os.environ.update({k: str(threads) for k in THREAD_ENV})
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _blas_controllers() -> list[Any]:
    """threadpoolctl's controllers of the BLAS/OpenMP libraries loaded now."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency
        return []
    return list(ThreadpoolController().lib_controllers)


def limit_threads(threads: int) -> None:
    """Cap BLAS/OpenMP (threadpoolctl) and torch threads of this process at ``threads``,
    for good (a worker's setting); ``threads`` is also what one matrix may use
    (:func:`spectrum_cli.core.measure.set_matrix_threads`)."""
    from spectrum_cli.core.measure import set_matrix_threads

    set_matrix_threads(threads)
    _set_threads(threads)
    for lib in _blas_controllers():
        if lib.num_threads != threads:
            lib.set_num_threads(threads)


@contextlib.contextmanager
def environ_set(values: Mapping[str, str], restore: Sequence[str] = ()) -> Iterator[None]:
    """``values`` in this process's environment for a block; on leaving, those variables
    and ``restore`` (which the block may change) are as they were, absent ones removed."""
    saved = {k: os.environ.get(k) for k in (*values, *restore)}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def threads_limited(threads: int) -> Iterator[None]:
    """:func:`limit_threads` for a block of this process, then back as it was (libraries
    loaded meanwhile get what the environment asks for)."""
    global _caller_env
    from spectrum_cli.core import measure

    outermost = _caller_env is None
    if outermost:
        _caller_env = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    torch = sys.modules.get("torch")
    saved_torch = torch.get_num_threads() if torch is not None else None
    saved_blas = {lib.filepath: lib.num_threads for lib in _blas_controllers()}
    saved_budget = measure._budget
    try:
        with environ_set({}, restore=THREAD_ENV):
            limit_threads(threads)
            yield
    finally:
        fallback = env_threads()
        for lib in _blas_controllers():
            n = saved_blas.get(lib.filepath, fallback)
            if n is not None and lib.num_threads != n:
                lib.set_num_threads(n)
        if saved_torch is not None:
            torch.set_num_threads(saved_torch)
        measure.set_matrix_threads(saved_budget)
        if outermost:
            _caller_env = None


def threads_in_use() -> dict[str, Any]:
    """The thread counts of this process's BLAS/OpenMP libraries and of torch."""
    out: dict[str, Any] = {"pid": os.getpid()}
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        out["threadpools"] = [{"api": i.get("internal_api"), "num_threads": i["num_threads"]}
                              for i in threadpool_info()]
    torch = sys.modules.get("torch")
    out["torch"] = torch.get_num_threads() if torch is not None else None
    return out


# --------------------------------------------------------------------------- workers


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


def _arm_forkserver() -> None:
    """In the forkserver started for a batch (its parent is the batch's main process),
    ask for SIGKILL when that parent dies; it also exits on its own when the parent's
    end of its pipe closes. Runs when the forkserver preloads this module."""
    if os.environ.get(_MAIN_PID_ENV) == str(os.getppid()):
        _prctl_death_signal()


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
PRELOAD = ["spectrum_cli.executors", "torch", "spectrum_cli.pipeline",
           "spectrum_cli.optim.analysis", "spectrum_backends.dense"]
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


# --------------------------------------------------------------------------- executors

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


def choose(name: str, chosen: Plan) -> Any:
    """The executor ``name`` from the registry; ``auto``: dask when a scheduler is named
    (``SPECTRUM_SCHEDULER``/``_FILE``, set from --scheduler), else processes when the plan
    has workers, else serial."""
    from spectrum_cli import plugins

    if name == "auto":
        name = "dask" if scheduler_named() else "processes" if chosen.workers else "serial"
    return plugins.executors.get(name)


def scheduler_named() -> bool:
    """Whether a Dask scheduler is named (``SPECTRUM_SCHEDULER``/``_FILE``, which
    --scheduler and --scheduler-file set): then ``auto`` sends the tasks there, even
    with one job (the cluster's workers do the work, not this process)."""
    return bool(os.environ.get("SPECTRUM_SCHEDULER") or
                os.environ.get("SPECTRUM_SCHEDULER_FILE"))
