"""An executor plugin: every task in this process, last one first (so order-independence
of the caller is tested), and a record of what it ran."""

import os


class ReversedExecutor:
    name = "reversed"
    description = "in this process, last task first (test plugin)"

    def run(self, fn, tasks, plan, done):
        log = os.environ.get("FAKE_EXECUTOR_LOG")
        for i in reversed(range(len(tasks))):
            if log:
                with open(log, "a") as fh:
                    fh.write(f"{i}\n")
            try:
                result = fn(*tasks[i])
            except Exception as exc:  # noqa: BLE001
                result = exc
            done(i, result)
