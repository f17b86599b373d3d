"""``dask worker --preload`` module for tests/hostile/test_remote_and_cluster.py: the
worker process dies (as if killed) the moment it starts running a spectrum tensor task."""

from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin


class KillOnMeasure(WorkerPlugin):
    def transition(self, key, start, finish, **kwargs):  # noqa: ANN001 - Dask's hook
        if finish == "executing" and str(key).startswith("measure_task"):
            os._exit(1)


async def dask_setup(worker):  # noqa: ANN001 - Dask's hook
    await worker.plugin_add(KillOnMeasure(), name="kill-on-measure")
