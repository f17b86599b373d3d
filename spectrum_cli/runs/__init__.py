"""Runs: what ``analyze``, ``batch``, ``watch``, ``diff``, the training callbacks and the
Python API do with checkpoints, above the numerics (:mod:`spectrum_cli.core`), the
readers (:mod:`spectrum_cli.io`) and the report writers (:mod:`spectrum_cli.report`).

- :mod:`~spectrum_cli.runs.job`: the job and its settings (command line > environment >
  configuration file) and the run options (workers, threads, memory, cache);
- :mod:`~spectrum_cli.runs.document`: one checkpoint into its analysis document (the one
  assembly every command and the API use); :mod:`~spectrum_cli.runs.dispatch`: its
  tensors over the executors, cached ones first;
- :mod:`~spectrum_cli.runs.cache` and :mod:`~spectrum_cli.runs.codec`: the result cache;
- :mod:`~spectrum_cli.runs.indicators`, :mod:`~spectrum_cli.runs.batch`,
  :mod:`~spectrum_cli.runs.watch`, :mod:`~spectrum_cli.runs.alerts`,
  :mod:`~spectrum_cli.runs.diff`: trajectories, following a run, alerts, comparisons;
- :mod:`~spectrum_cli.runs.plan`, :mod:`~spectrum_cli.runs.threads`,
  :mod:`~spectrum_cli.runs.executors`, :mod:`~spectrum_cli.runs.dask`: workers, threads
  and memory; the built-in executors.

Nothing here imports typer or rich, and nothing prints.
"""
