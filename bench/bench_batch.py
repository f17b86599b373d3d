"""spectrum batch on the SGD sample run: --jobs 1 vs --jobs 2, then a resume, in one run.

    python bench/bench_batch.py [--dir sample_checkpoints/sgd-momentum] [--runs 3]

Whole processes (``python -m spectrum_cli batch DIR --json``), each full run with its own
empty cache directory; the resume re-runs the unchanged directory on the cache of the
last --jobs 1 run. Prints median wall times and the ratios the batch issue targets.
BLAS threads: the parent sets none (batch divides the cores among its workers: one
thread each with --jobs 2 on 2 cores, all of them with --jobs 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=str(HERE.parent / "sample_checkpoints" / "sgd-momentum"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    base = [sys.executable, "-m", "spectrum_cli", "batch", args.dir, "--json", "--no-progress"]
    work = Path(tempfile.mkdtemp(prefix="spectrum-bench-"))
    one, two, resume = [], [], []
    try:
        for i in range(args.runs):
            for jobs, out in ((1, one), (2, two)):
                cache = work / f"cache-{jobs}-{i}"
                out.append(timed(base + ["--jobs", str(jobs), "--cache-dir", str(cache)]))
            resume.append(timed(base + ["--jobs", "1", "--cache-dir",
                                        str(work / f"cache-1-{i}")]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m1, m2, mr = (statistics.median(x) for x in (one, two, resume))
    n = len([p for p in os.listdir(args.dir) if p.endswith(".pt")])
    print(f"{args.dir}: {n} checkpoints, {os.cpu_count()} cores, median of {args.runs} runs")
    print(f"  --jobs 1      {m1:7.2f} s  ({min(one):.2f}-{max(one):.2f})")
    print(f"  --jobs 2      {m2:7.2f} s  ({min(two):.2f}-{max(two):.2f})")
    print(f"  resume        {mr:7.2f} s  ({min(resume):.2f}-{max(resume):.2f})")
    print(f"  speed-up with two jobs   {m1 / m2:5.2f}x   target >= 1.8x")
    print(f"  resume / full run        {100 * mr / m1:5.1f}%   target < 5%")


if __name__ == "__main__":
    main()
