"""Projected time of `spectrum analyze` on Llama-2-7B and 70B shapes, from measured costs.

    .venv/bin/python bench/project_llm.py [--shapes tinyllama,llama7b,llama70b]
                                          [--workers 8,32,128]
                                          [--save-costs costs.json | --costs costs.json]

For each architecture (dims from bench/make_llm_shaped.py; ``--describe`` there lists
them) it writes ONE matrix of every distinct shape, with the generator's structure, as
bf16 into a safetensors file in a temporary folder, runs ``spectrum analyze FILE --json
--no-cache --threads 1`` (BLAS at one thread: OMP/OPENBLAS/MKL_NUM_THREADS=1, default
numerics, so ``--backend auto`` picks dense or lanczos by size as it would on the real
model) and takes each tensor's ``time_s`` (read + measure) as that shape's cost.

tinyllama is there to check the model against bench/bench_llm.py's measured runs.
Then, PROJECTIONS, not measurements:
  serial       sum over shapes of count x cost (one worker of one thread)
  N workers    max(serial / N, largest single cost): perfect scaling over tensors,
               bounded by the largest single tensor; also the greedy largest-first list
               schedule of the measured costs over N workers (what spectrum and Dask do
               with tasks submitted largest first), which is never below it
for this machine (N = the cores in os.sched_getaffinity, 1 thread per worker) and for N
Dask workers of 1 thread each (default 8, 32, 128) on cores like this machine's. Not
modelled: reading the bytes (local disk or object storage), process start-up, the
scheduler's overhead, and memory: each worker needs the largest tensor's expected peak
(spectrum's rule, printed from ``settings.run.memory_rule``). Measuring llama70b's five
shapes takes ~4 minutes of one core and 1.6 GB of disk; ``--save-costs`` keeps them.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_llm_shaped as gen  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def shape_name(shape: tuple[int, int]) -> str:
    return f"shape_{shape[0]}x{shape[1]}.weight"


def measure(arch: gen.Arch, spectrum: str, workdir: Path, seed: int) -> dict:
    """Per-shape costs of ``arch``: one matrix of each distinct shape, one spectrum run."""
    shapes = sorted(gen.matrix_counts(arch), key=lambda s: -s[0] * s[1])
    path = workdir / f"{arch.name}-shapes.safetensors"
    t0 = time.perf_counter()
    arrays = {shape_name(s): gen.matrix_bf16(s, gen.rng_for(seed, shape_name(s)))
              for s in shapes}
    gen._serialize(arrays, path)
    del arrays
    made = time.perf_counter() - t0
    env = {**os.environ, **ONE_THREAD, "NO_COLOR": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([spectrum, "analyze", str(path), "--json", "--no-cache",
                           "--no-progress", "--threads", "1"],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    path.unlink()
    if done.returncode not in (0, 1):
        sys.exit(f"spectrum analyze failed (exit {done.returncode}): {done.stderr[-2000:]}")
    doc = json.loads(done.stdout)
    costs = {}
    for t in doc["tensors"]:
        m, n = t["matrix_shape"]
        costs[f"{m}x{n}"] = {"seconds": t["time_s"], "backend": t["method"]["backend"],
                             "route": t["method"].get("route"),
                             "converged": t.get("converged")}
    return {"arch": arch.name, "costs": costs, "made_s": made, "process_wall_s": wall,
            "threads": doc["settings"]["run"]["threads"],
            "memory_rule": doc["settings"]["run"]["memory_rule"]}


def expected_bytes(shape: tuple[int, int], backend: str) -> int:
    """spectrum's memory rule (``settings.run.memory_rule``) for a bf16 matrix: its stored
    bytes + 8·m·n·(1 + W), W = 2 for a dense SVD, 0.5 for an iterative backend."""
    m, n = shape
    w = 2.0 if backend == "dense" else 0.5
    return int(2 * m * n + 8 * m * n * (1 + w))


def greedy(costs: list[float], workers: int) -> float:
    """Makespan of the largest-first list schedule of ``costs`` on ``workers``."""
    loads = [0.0] * min(workers, max(1, len(costs)))
    for c in sorted(costs, reverse=True):
        heapq.heapreplace(loads, loads[0] + c)
    return max(loads)


def fmt_time(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def project(arch: gen.Arch, measured: dict, workers: list[int], cores: int) -> dict:
    counts = gen.matrix_counts(arch)
    rows, tasks = [], []
    for (m, n), count in sorted(counts.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        c = measured["costs"][f"{m}x{n}"]
        rows.append(((m, n), count, c))
        tasks += [c["seconds"]] * count
    serial = sum(tasks)
    largest = max(tasks)
    peak = max(expected_bytes(s, c["backend"]) for s, _, c in rows)
    print(f"\n{arch.name}: {sum(counts.values())} matrices, {gen.parameters(arch):.3g} "
          f"parameters (costs measured at {measured['threads']} BLAS thread; generated in "
          f"{measured['made_s']:.0f} s, measured in one process of "
          f"{measured['process_wall_s']:.0f} s)")
    print(f"  {'shape':>15s} {'count':>6s}  {'backend/route':18s} {'cost (1 thread)':>15s}"
          f" {'count x cost':>13s}  memory/worker (rule)")
    for (m, n), count, c in rows:
        route = f"{c['backend']}/{c['route']}" if c["route"] else c["backend"]
        if c.get("converged") is False:
            route += " (not converged)"
        print(f"  {m:>7d} x {n:<5d} {count:6d}  {route:18s} {c['seconds']:13.2f} s "
              f"{fmt_time(count * c['seconds']):>13s}  "
              f"{expected_bytes((m, n), c['backend']) / 2**30:.2f} GiB")
    out = {"arch": arch.name, "serial_s": serial, "largest_s": largest,
           "peak_bytes_per_worker": peak, "workers": {}}
    print(f"  PROJECTED (perfect scaling over tensors, bounded by the largest tensor, "
          f"{fmt_time(largest)}; greedy = largest-first schedule):")
    print(f"    {'1 worker (serial)':34s} {fmt_time(serial):>10s}")
    for label, n in [(f"this machine: {cores} workers x 1 thread", cores)] + \
            [(f"{n} Dask workers x 1 thread", n) for n in workers]:
        ideal = max(serial / n, largest)
        lpt = greedy(tasks, n)
        out["workers"][str(n)] = {"ideal_s": ideal, "greedy_s": lpt}
        print(f"    {label:34s} {fmt_time(ideal):>10s}   greedy {fmt_time(lpt):>10s}")
    print(f"    memory: each worker needs up to {peak / 2**30:.2f} GiB (the largest tensor "
          f"by spectrum's rule: {measured['memory_rule']})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="tinyllama,llama7b,llama70b",
                    help="comma-separated architectures (make_llm_shaped.py --describe)")
    ap.add_argument("--workers", default="8,32,128")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--costs", type=Path, help="use costs saved by --save-costs instead "
                                               "of measuring")
    ap.add_argument("--save-costs", type=Path)
    ap.add_argument("--workdir", type=Path, help="where the temporary file goes "
                                                 "(default: the system's temp folder)")
    ap.add_argument("--spectrum", default=str(Path(sys.executable).parent / "spectrum"))
    args = ap.parse_args()
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [n for n in names if n not in gen.ARCHS]
    if unknown:
        ap.error(f"--shapes: unknown {unknown}; known: {sorted(gen.ARCHS)}")
    workers = [int(w) for w in args.workers.split(",")]
    cores = len(os.sched_getaffinity(0))
    saved = json.loads(args.costs.read_text()) if args.costs else {}
    measured = {}
    for name in names:
        if name in saved:
            measured[name] = saved[name]
            continue
        with tempfile.TemporaryDirectory(prefix="spectrum-proj-", dir=args.workdir) as tmp:
            print(f"measuring {name}'s distinct shapes at 1 BLAS thread ...", flush=True)
            measured[name] = measure(gen.ARCHS[name], args.spectrum, Path(tmp), args.seed)
    if args.save_costs:
        args.save_costs.write_text(json.dumps({**saved, **measured}, indent=2) + "\n")
    print(f"PROJECTIONS from per-shape costs measured on this machine ({cores} cores in "
          f"sched_getaffinity); N workers of 1 thread on cores like these; reading, start-up "
          f"and scheduling not modelled")
    for name in names:
        project(gen.ARCHS[name], measured[name], workers, cores)


if __name__ == "__main__":
    main()
