"""The ``dask`` executor: a run's tasks on an existing Dask cluster.

Registered in the ``spectrum.executors`` group as ``dask`` (optional extra
``spectrum-cli[distributed]``). The client (this process) submits each task, a
module-level function and its picklable arguments such as
``pipeline.measure_task(path, policy, options, tensor, run)`` or
``batch.compute_record(path, job, key)``, to the scheduler; a worker opens the source
itself (shared filesystem or object storage), computes and returns the small result;
this process gathers results as they finish and writes the report. A worker lost
mid-run costs only its tasks: the scheduler reschedules them elsewhere.

Where the scheduler is: the run's :class:`~spectrum_cli.runs.executors.Cluster`, from
its settings: ``--scheduler`` / ``SPECTRUM_SCHEDULER`` (an address such as
``tcp://10.0.0.5:8786``) or ``--scheduler-file`` / ``SPECTRUM_SCHEDULER_FILE`` (a file
written by ``dask scheduler --scheduler-file PATH``); it travels in the run's options,
never through this process's environment. How long to try to connect: Dask's own
``distributed.comm.timeouts.connect`` (``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT``).
Threads per task are the cluster's (Dask's nanny starts workers with one BLAS thread
per worker thread), not this machine's plan.

Every wait on the network has a deadline: the scheduler must answer a handshake within
the connect timeout (one that accepts connections and never answers is exit 2 naming
it), the workers' probe too. A scheduler file must be a regular file of at most
:data:`MAX_SCHEDULER_FILE` bytes (a FIFO or ``/dev/zero`` is refused before it is read).

Storage: each task carries this process's storage settings (``--storage-option``, the
``AWS_*``-style variables, the pinned versions of the objects read:
:func:`spectrum_cli.io.storage.snapshot`); the worker applies them around the task and
restores its own afterwards (workers may serve other clients). A failure of the store
seen on a worker (no credentials, refused, unreachable, an object replaced mid-run) would
fail every task alike: it ends the run once, naming the worker.

Lost workers: Dask reruns the tasks of a worker that died, up to its
``distributed.scheduler.allowed-failures``, then the task fails (``KilledWorker``) and
its tensors are reported failed (exit 2); when no worker is left for the connect timeout,
the tasks still pending fail the same way instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import time
import uuid
from typing import Any, Callable, Sequence

from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.runs.executors import Cluster
from spectrum_cli.io import storage
from spectrum_cli.io.base import open_regular

SCHEDULER_ENV = "SPECTRUM_SCHEDULER"
SCHEDULER_FILE_ENV = "SPECTRUM_SCHEDULER_FILE"
INSTALL_HINT = "pip install 'spectrum-cli[distributed]'"

#: A finished task: (its index in the submitted list, its result or the exception).
Done = Callable[[int, Any], None]


def _distributed() -> Any:
    """The ``distributed`` module; UsageError with the install hint when it is absent."""
    try:
        import distributed
    except ImportError as exc:
        raise UsageError(f"executor 'dask' needs dask.distributed ({exc}); install it with "
                         f"{INSTALL_HINT}") from None
    return distributed


def scheduler_target(cluster: Cluster) -> tuple[str, str]:
    """``("address", ADDRESS)`` or ``("scheduler_file", PATH)`` of ``cluster`` (the
    address wins when both are set); UsageError when neither is."""
    address = (cluster.scheduler or "").strip()
    if address:
        return "address", address
    path = (cluster.scheduler_file or "").strip()
    if path:
        return "scheduler_file", path
    raise UsageError("executor 'dask' needs a scheduler: --scheduler tcp://HOST:PORT, "
                     f"--scheduler-file PATH, or {SCHEDULER_ENV}")


#: A scheduler file is a small JSON document; anything bigger is refused unread.
MAX_SCHEDULER_FILE = 1 << 20


def _check_scheduler_file(path: str) -> str:
    """The scheduler address in the file ``path``; InputError naming ``path`` unless it
    is a regular file (not a FIFO, a device: refused before it is opened) of at most
    :data:`MAX_SCHEDULER_FILE` bytes holding JSON with an address (Dask would otherwise
    wait for it to appear until the connect timeout)."""
    try:
        with open_regular(path) as fh:
            raw = fh.read(MAX_SCHEDULER_FILE + 1)
    except InputError as exc:
        if not os.path.lexists(path):
            raise InputError(f"{path}: no such Dask scheduler file ({SCHEDULER_FILE_ENV} / "
                             "--scheduler-file)") from None
        raise InputError(f"Dask scheduler file {exc}") from None
    except OSError as exc:
        raise InputError(f"{path}: not a Dask scheduler file: {exc}") from None
    if len(raw) > MAX_SCHEDULER_FILE:
        raise InputError(f"{path}: not a Dask scheduler file (larger than "
                         f"{MAX_SCHEDULER_FILE} bytes)")
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not a Dask scheduler file: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("address"), str):
        raise InputError(f"{path}: not a Dask scheduler file (no scheduler address in it)")
    return info["address"]


def _seconds(value: Any) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="seconds") or 30)


async def _handshake(address: str, seconds: float) -> None:
    """Open a connection to the scheduler and ask its identity, all within ``seconds``
    (Dask's own client waits forever on a server that accepts and never answers)."""
    from distributed.comm import connect as comm_connect

    comm = await asyncio.wait_for(comm_connect(address, timeout=seconds), seconds)
    try:
        await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), seconds)
        await asyncio.wait_for(comm.read(), seconds)
    finally:
        comm.abort()


def _probe_scheduler(address: str, named: str, seconds: float) -> None:
    """UsageError naming the scheduler when it does not answer within ``seconds``."""
    try:
        asyncio.run(_handshake(address, seconds))
    except (asyncio.TimeoutError, TimeoutError):
        raise UsageError(f"cannot reach the Dask scheduler at {named}: no answer within "
                         f"{seconds:g} s (distributed.comm.timeouts.connect)") from None
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {named}: "
                         f"{type(exc).__name__}: {exc}") from None


def connect(cluster: Cluster) -> Any:
    """A ``distributed.Client`` of the configured scheduler with at least one worker;
    UsageError (exit 2) naming the scheduler when it cannot be reached in Dask's connect
    timeout or has no worker that can import spectrum."""
    distributed = _distributed()
    kind, where = scheduler_target(cluster)
    address = _check_scheduler_file(where) if kind == "scheduler_file" else where
    import dask

    timeout = dask.config.get("distributed.comm.timeouts.connect")
    named = (f"{where} ({SCHEDULER_ENV})" if kind == "address"
             else f"{address} (scheduler file {where})")
    _probe_scheduler(address, named, _seconds(timeout))
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    else:
        try:
            _check_workers(client, named, timeout)
        except BaseException:
            client.close()
            raise
        return client
    # The half-made client is garbage now: collect it while its event loop still runs
    # (at interpreter exit its close would time out and print a traceback).
    gc.collect()
    raise UsageError(f"cannot reach the Dask scheduler at {named}: {failure}")


def _worker_probe() -> str:
    """Runs on each worker: spectrum's version there (fails where it cannot import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spectrum-cli")
    except PackageNotFoundError:  # pragma: no cover - a source tree on the path
        return "unknown"


def _check_workers(client: Any, named: str, timeout: Any) -> None:
    """UsageError when the cluster has no worker within ``timeout`` or its workers
    cannot import spectrum (tasks would otherwise wait forever or all fail alike)."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"the Dask scheduler at {named} has no workers: {exc}") from None
    try:
        client.run(_worker_probe, callback_timeout=_seconds(timeout))
    except (TimeoutError, asyncio.TimeoutError):
        raise UsageError(f"the Dask workers of {named} did not answer within "
                         f"{_seconds(timeout):g} s (distributed.comm.timeouts.connect)"
                         ) from None
    except Exception as exc:  # noqa: BLE001 - whatever the worker raised
        raise UsageError(f"the Dask workers of {named} cannot run spectrum's tasks (is "
                         f"spectrum-cli installed there?): {type(exc).__name__}: "
                         f"{exc}") from None


def _outcome(future: Any) -> Any:
    """The task's result, or the exception it raised or that ended it (a cancelled
    task, a task that killed its workers too often: ``KilledWorker``)."""
    try:
        return future.result()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded by the caller (CancelledError too)
        return exc


class WorkersLost(RuntimeError):
    """The cluster lost every worker and got none back: the task was never finished."""


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError, AttributeError):  # not on a worker
        return "?"


def _on_worker(snapshot: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """A task as the worker runs it: ``fn(*args)`` with the client's storage settings
    applied (and the worker's own restored afterwards). A failure of the store, raised
    or recorded as a tensor's error, is raised naming the worker it happened on."""
    before, _ = storage.store_errors()
    try:
        with storage.applied(snapshot):
            result = fn(*args)
    except storage.StoreError as exc:
        raise type(exc)(f"on Dask worker {_worker_address()}: {exc}") from None
    after, latest = storage.store_errors()
    if after != before and latest is not None:
        raise type(latest)(f"on Dask worker {_worker_address()}: {latest}")
    return result


def _check_alive(client: Any, named: str, pending: Sequence[Any], since: list[float],
                 grace: float) -> BaseException | None:
    """A :class:`WorkersLost` for the tasks still pending when the cluster has had no
    worker for ``grace`` seconds (``since[0]``: when none was first seen), else None."""
    try:
        workers = client.scheduler_info().get("workers") or {}
    except Exception:  # noqa: BLE001 - the scheduler itself is gone: Dask cancels them
        workers = {}
    if workers:
        since[0] = 0.0
        return None
    now = time.monotonic()
    if not since[0]:
        since[0] = now
    if now - since[0] < grace:
        return None
    return WorkersLost(f"the Dask scheduler at {named} lost every worker and got none "
                       f"back within {grace:g} s; {len(pending)} task(s) not finished")


class DaskExecutor:
    """Every task on an existing Dask cluster (``SPECTRUM_SCHEDULER`` or
    ``SPECTRUM_SCHEDULER_FILE``); results gathered in this process as they finish."""

    name = "dask"
    description = ("tasks on an existing Dask cluster (--scheduler, --scheduler-file or "
                   f"{SCHEDULER_ENV}; {INSTALL_HINT})")

    def __init__(self, cluster: Cluster = Cluster()) -> None:
        self.cluster = cluster

    def with_cluster(self, cluster: Cluster) -> "DaskExecutor":
        """This executor for the scheduler ``cluster`` names (the run's settings)."""
        return DaskExecutor(cluster)

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple], chosen: Any,
            done: Done) -> None:
        """Submit ``fn(*args)`` for every task (first submitted, first scheduled), call
        ``done(index, result_or_exception)`` as each finishes; on the way out (an
        exception, Ctrl-C) the tasks still pending are cancelled."""
        if not tasks:
            return
        _distributed()  # the install hint when it is absent

        client = connect(self.cluster)
        import dask

        grace = _seconds(dask.config.get("distributed.comm.timeouts.connect"))
        named = self.cluster.scheduler or self.cluster.scheduler_file or ""
        futures: list[Any] = []
        try:
            n = len(tasks)
            snap = storage.snapshot()  # small: options, variables, a few pins
            name = getattr(fn, "__name__", "task")  # the key's prefix, as Dask names it
            futures = [client.submit(_on_worker, snap, fn, *args, pure=False,
                                     priority=n - i, key=f"{name}-{uuid.uuid4().hex}")
                       for i, args in enumerate(tasks)]
            index = {f.key: i for i, f in enumerate(futures)}
            finished: queue.Queue = queue.Queue()
            for future in futures:
                future.add_done_callback(finished.put)
            pending = {f.key for f in futures}
            since = [0.0]
            while pending:
                try:
                    future = finished.get(timeout=min(grace, 2.0))
                except queue.Empty:
                    lost = _check_alive(client, named, list(pending), since, grace)
                    if lost is not None:
                        for key in sorted(pending, key=index.__getitem__):
                            done(index[key], lost)
                        break
                    continue
                if future.key not in pending:
                    continue
                pending.discard(future.key)
                result = _outcome(future)
                future.release()
                if isinstance(result, storage.StoreError):
                    raise result  # every task would fail alike: once, not per task
                done(index[future.key], result)
        finally:
            left = [f for f in futures if not f.done()]
            if left:
                client.cancel(left)
            client.close()
