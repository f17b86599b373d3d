"""Dense float64 singular values of a 4096 x 4096 matrix: `--device cuda` against the CPU path.

    .venv/bin/python bench/bench_gpu.py [--n 4096] [--runs 3]
    .venv/bin/python bench/bench_gpu.py --device cpu --n 512   # the script's own check

The matrix has exactly known singular values σ_i = 10^(-6 i/(n-1)) (κ = 1e6), built as
C D diag(σ) D' Cᵀ with orthonormal DCTs and random signs (bench/bench_backends.py), so
both paths are checked against the truth, not against each other. Timed, in one run,
median of ``--runs`` after one untimed warm-up each (cuSOLVER's handles, page faults):

  cpu path   DenseBackend().singular_values(A): numpy's LAPACK gesdd (a square matrix
             takes no Gram route), BLAS threads as the environment leaves them (printed)
  cuda f64   DenseBackend().singular_values(A, device="cuda"): torch.linalg.svdvals in
             float64 on the GPU, host-to-device copy and the copy back included
  cuda f32   the same with dtype="float32", for information (not the default)

Prints wall times, the ratio cpu / cuda f64, and each path's largest error
max|σ̃_i - σ_i| / σ_1. Without a CUDA device it says so and exits 2; ``--device cpu``
runs the torch path on the CPU instead, to check this script where there is no GPU
(its ratio is then not a GPU figure, and says so).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def timed(fn, runs: int) -> tuple[object, list[float]]:
    out = fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: run the torch path on the CPU (checks the script only)")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else \
            "a CPU-only build"
        print(f"bench_gpu: no CUDA device here (torch {torch.__version__}, {built}); "
              "nothing to measure. Run it on a machine with a GPU, or with --device cpu "
              "to check the script.", file=sys.stderr)
        return 2
    from threadpoolctl import threadpool_info

    from bench_backends import dct_matrix
    from spectrum_backends.dense import DenseBackend

    n = args.n
    sigma = np.logspace(0, -6, n)
    a = dct_matrix(n, n, sigma, seed=1)
    dense = DenseBackend()
    pools = ", ".join(f"{i.get('internal_api')} {i['num_threads']}" for i in threadpool_info())
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (torch on CPU)"
    print(f"bench_gpu: {n} x {n} float64, σ from 1 to 1e-6 (exact), median of {args.runs} "
          f"after a warm-up; device {gpu}; CPU: {len(os.sched_getaffinity(0))} cores, "
          f"BLAS threads {pools}; torch {torch.__version__}, {torch.get_num_threads()} "
          "threads")
    rows = {}
    cases = [("cpu path", {}), (f"{args.device} f64", {"device": args.device}),
             (f"{args.device} f32", {"device": args.device, "dtype": "float32"})]
    for label, kw in cases:
        if args.device == "cpu" and kw:
            # numpy input on the CPU takes LAPACK: a tensor takes the torch path.
            sv, times = timed(lambda kw=kw: dense.singular_values(torch.from_numpy(a), **kw),
                              args.runs)
        else:
            sv, times = timed(lambda kw=kw: dense.singular_values(a, **kw), args.runs)
        err = float(np.max(np.abs(sv.values - sigma)) / sigma[0])
        rows[label] = statistics.median(times)
        print(f"  {label:10s} {rows[label]:8.3f} s  ({min(times):.3f}-{max(times):.3f})  "
              f"route {sv.route:20s} max|σ̃-σ|/σ1 {err:.1e}")
    f64 = rows[f"{args.device} f64"]
    tag = "" if args.device == "cuda" else "   (torch on the CPU: NOT a GPU figure)"
    print(f"  cpu path / {args.device} f64 wall: {rows['cpu path'] / f64:.2f}x{tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
