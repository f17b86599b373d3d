"""The ``dask`` executor: a run's tasks on an existing Dask cluster.

Registered in the ``spectrum.executors`` group as ``dask`` (optional extra
``spectrum-cli[distributed]``). The client (this process) submits each task, a
module-level function and its picklable arguments such as
``pipeline.measure_task(path, policy, options, tensor, run)`` or
``batch.compute_record(path, job, key)``, to the scheduler; a worker opens the source
itself (shared filesystem or object storage), computes and returns the small result;
this process gathers results as they finish and writes the report. A worker lost
mid-run costs only its tasks: the scheduler reschedules them elsewhere.

Where the scheduler is: ``SPECTRUM_SCHEDULER`` (an address such as
``tcp://10.0.0.5:8786``) or ``SPECTRUM_SCHEDULER_FILE`` (a file written by
``dask scheduler --scheduler-file PATH``), which ``--scheduler`` and
``--scheduler-file`` set. How long to try to connect: Dask's own
``distributed.comm.timeouts.connect`` (``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT``).
Threads per task are the cluster's (Dask's nanny starts workers with one BLAS thread
per worker thread), not this machine's plan.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from spectrum_cli.core.errors import InputError, UsageError

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


def scheduler_target() -> tuple[str, str]:
    """``("address", ADDRESS)`` or ``("scheduler_file", PATH)`` from the environment
    (the address wins when both are set); UsageError when neither is."""
    address = os.environ.get(SCHEDULER_ENV, "").strip()
    if address:
        return "address", address
    path = os.environ.get(SCHEDULER_FILE_ENV, "").strip()
    if path:
        return "scheduler_file", path
    raise UsageError("executor 'dask' needs a scheduler: --scheduler tcp://HOST:PORT, "
                     f"--scheduler-file PATH, or {SCHEDULER_ENV}")


def _check_scheduler_file(path: str) -> None:
    """InputError naming ``path`` unless it is a JSON scheduler file with an address
    (Dask would otherwise wait for it to appear until the connect timeout)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such Dask scheduler file ({SCHEDULER_FILE_ENV} / "
                         "--scheduler-file)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a Dask scheduler file: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("address"), str):
        raise InputError(f"{path}: not a Dask scheduler file (no scheduler address in it)")


def connect() -> Any:
    """A ``distributed.Client`` of the configured scheduler with at least one worker;
    UsageError (exit 2) naming the scheduler when it cannot be reached in Dask's connect
    timeout or has no worker that can import spectrum."""
    distributed = _distributed()
    kind, where = scheduler_target()
    if kind == "scheduler_file":
        _check_scheduler_file(where)
    import dask

    timeout = dask.config.get("distributed.comm.timeouts.connect")
    named = f"{where} ({SCHEDULER_ENV})" if kind == "address" else f"scheduler file {where}"
    try:
        if kind == "address":
            client = distributed.Client(where, timeout=timeout, set_as_default=False)
        else:
            client = distributed.Client(scheduler_file=where, timeout=timeout,
                                        set_as_default=False)
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
        client.run(_worker_probe)
    except Exception as exc:  # noqa: BLE001 - whatever the worker raised
        raise UsageError(f"the Dask workers of {named} cannot run spectrum's tasks (is "
                         f"spectrum-cli installed there?): {type(exc).__name__}: "
                         f"{exc}") from None


def _outcome(future: Any) -> Any:
    """The task's result, or the exception it raised or that ended it (a cancelled
    task, a task that killed its workers too often: ``KilledWorker``)."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - recorded by the caller
        return exc


class DaskExecutor:
    """Every task on an existing Dask cluster (``SPECTRUM_SCHEDULER`` or
    ``SPECTRUM_SCHEDULER_FILE``); results gathered in this process as they finish."""

    name = "dask"
    description = ("tasks on an existing Dask cluster (--scheduler, --scheduler-file or "
                   f"{SCHEDULER_ENV}; {INSTALL_HINT})")

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple], chosen: Any,
            done: Done) -> None:
        """Submit ``fn(*args)`` for every task (first submitted, first scheduled), call
        ``done(index, result_or_exception)`` as each finishes; on the way out (an
        exception, Ctrl-C) the tasks still pending are cancelled."""
        if not tasks:
            return
        distributed = _distributed()
        client = connect()
        futures: list[Any] = []
        try:
            n = len(tasks)
            futures = [client.submit(fn, *args, pure=False, priority=n - i)
                       for i, args in enumerate(tasks)]
            index = {f.key: i for i, f in enumerate(futures)}
            for future in distributed.as_completed(futures, loop=client.loop):
                result = _outcome(future)
                future.release()
                done(index[future.key], result)
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                client.cancel(pending)
            client.close()
