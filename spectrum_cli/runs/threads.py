"""Threads: workers x threads <= the cores this process may run on (``threads`` overrides;
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
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Mapping, Sequence

from spectrum_cli.core import measure
from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.measure import GRAM_TILE, PARALLEL_GRAM_FLOPS, set_matrix_threads
from spectrum_cli.core.measure import blas_threads_for as rule

THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


#: glibc's malloc gives every request of at least this many bytes its own mapping, handed
#: back to the system when freed (see :func:`steady_malloc`).
MMAP_THRESHOLD = 4 << 20
#: ... and keeps up to this much free memory at the top of its heap instead of handing
#: it back (and faulting it in again on the next request).
TRIM_THRESHOLD = 32 << 20
#: ``mallopt`` parameters (<malloc.h>) and the variables that choose them instead.
_MALLOPT = (("MALLOC_MMAP_THRESHOLD_", -3, MMAP_THRESHOLD),
            ("MALLOC_TRIM_THRESHOLD_", -1, TRIM_THRESHOLD))
#: A process that builds loss Hessians (autograd over the whole batch) frees and
#: reallocates temporaries of 20-130 MiB for every checkpoint: they come from the heap
#: below this size, and up to HESSIAN_TRIM_THRESHOLD of free heap is kept for the next
#: checkpoint (see :func:`hessian_malloc`).
HESSIAN_MMAP_THRESHOLD = 128 << 20
HESSIAN_TRIM_THRESHOLD = 256 << 20
_HESSIAN_MALLOPT = (("MALLOC_MMAP_THRESHOLD_", -3, HESSIAN_MMAP_THRESHOLD),
                    ("MALLOC_TRIM_THRESHOLD_", -1, HESSIAN_TRIM_THRESHOLD))


_malloc_fixed: set[str] = set()


def _mallopt(which: str, settings: tuple[tuple[str, int, int], ...]) -> None:
    """``mallopt`` each setting its ``MALLOC_*_`` variable does not choose, once per
    process for ``which``; nothing where the C library is not glibc."""
    if which in _malloc_fixed:
        return
    _malloc_fixed.add(which)
    chosen = [(param, value) for name, param, value in settings if name not in os.environ]
    if not chosen:
        return
    import platform

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        for param, value in chosen:
            libc.mallopt(param, value)


def steady_malloc() -> None:
    """Fix glibc's mmap and trim thresholds (``mallopt``) in a process that measures
    tensors, each unless its ``MALLOC_*_`` variable chooses it.

    - glibc's default raises the mmap threshold each time a mapped block is freed, up to
      32 MiB; after the first big tensor, read pieces and workspaces of up to 32 MiB
      come from the heap, which fragments and does not shrink. Fixed (first at 1 MiB):
      41 MiB less peak on a 2 GB TinyLlama-shaped checkpoint read from S3 with ``--jobs
      1`` (944 -> 903 MiB).
    - Fixing it switches off the dynamic trim threshold too, leaving glibc's 128 KiB:
      each freed temporary at the heap's top went back to the system and the next
      one faulted its pages in again, and every 1 MiB workspace (a 256x256 complex
      matrix of the non-normal analysis) got a fresh mapping. On the CRNN of
      ``bench/bench_nonnormal.py``: 313,000 page faults and 1.1 s of system time in a
      6.2 s run; with :data:`MMAP_THRESHOLD` 4 MiB and :data:`TRIM_THRESHOLD` 32 MiB,
      27,000 and 0.2 s. The same TinyLlama shape from local disk
      (``--jobs 1``): 3.38 -> 1.82 million page faults, 20 -> 15 s of system time,
      peak RSS 888 -> 910 MiB.

    Once per process; nothing where the C library is not glibc."""
    _mallopt("steady", _MALLOPT)


def hessian_malloc() -> None:
    """Raise the thresholds of :func:`steady_malloc` for the rest of a process that
    analyses optimizers with a Hessian source (``analyze``/``batch`` with ``--model``;
    not the training callbacks, whose process is the host's): each checkpoint's
    Hessian frees and reallocates temporaries of 20-130 MiB, each a fresh mapping whose
    pages fault in again. Measured with the ``torch.func`` Hessian of the time,
    ``spectrum batch sample_checkpoints/sgd-momentum --jobs 1`` (120 checkpoints):
    2.63 million -> 129,000 page faults, 11.1 -> 1.3 s of system time, 33.5 -> 28.3 s
    wall, peak RSS 599 -> 578 MB. Once per process, each
    setting unless its ``MALLOC_*_`` variable chooses it (an API caller's process gets
    it as it gets :func:`steady_malloc`)."""
    _mallopt("hessian", _HESSIAN_MALLOPT)
    _malloc_fixed.add("steady")  # a later steady_malloc() must not lower them again


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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
    return rule(tuple(shape), budget)


def thread_settings(threads: int, explicit: int | None = None) -> dict[str, Any]:
    """What a run's settings record about its threads: the budget per process, where it
    came from, the library threads of a matrix's LAPACK/BLAS calls (1) and the size
    from which its Gram product is split among the budget's threads."""
    return {"threads_from": threads_from(explicit), "library_threads": 1,
            "parallel_gram_flops": PARALLEL_GRAM_FLOPS, "gram_tile": GRAM_TILE,
            "environment": caller_thread_env()}


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

