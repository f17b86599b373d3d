"""Threads on a busy machine (issue 22 item 2): ``spectrum analyze`` beside two CPU burners.

    python bench/bench_threads.py [--repeats 2] [--model PATH] [--src DIR]

Writes a MiniLM-shaped checkpoint (all-MiniLM-L6-v2's 40 matrices, 22.6M parameters:
word/position/token-type embeddings, 6 layers of q/k/v/o 384 x 384, intermediate
1536 x 384 and output 384 x 1536, the pooler; random weights with a low-rank signal,
float32 safetensors) unless ``--model`` names one, starts two pure-Python busy loops
(the "other work" of a 2-core machine), and times ``spectrum analyze MODEL --json
--no-cache`` as whole processes, default against ``--threads 1``:

* with ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=1`` (goal: default /
  ``--threads 1`` <= 1.3x);
* with none of them set (goal: <= 2x).

Each configuration runs ``--repeats`` times, alternating; the ratio is of the medians of
wall time (CPU time printed beside). ``--src DIR``: run the ``spectrum_cli`` of another
source tree (``git archive`` of an older commit, with ``spectrum_backends`` linked to its
``backends``) for a before/after comparison on the same machine in the same run.
Prints PASS/FAIL per goal; exits 1 if one failed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
GOALS = {"set to 1": 1.3, "none set": 2.0}


def make_minilm(path: Path, seed: int = 0) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)

    def w(m: int, n: int) -> np.ndarray:
        r = max(4, min(m, n) // 16)
        noise = rng.standard_normal((m, n)) / np.sqrt(n)
        signal = (rng.standard_normal((m, r)) * (1.0 / np.sqrt(np.arange(1, r + 1)))) @ \
            rng.standard_normal((r, n)) / np.sqrt(m * n) * 4
        return (0.05 * (noise + signal)).astype(np.float32)

    h, ff = 384, 1536
    t = {"embeddings.word_embeddings.weight": w(30522, h),
         "embeddings.position_embeddings.weight": w(512, h),
         "embeddings.token_type_embeddings.weight": w(2, h),
         "pooler.dense.weight": w(h, h)}
    for i in range(6):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            t[p + name + ".weight"] = w(h, h)
        t[p + "intermediate.dense.weight"] = w(ff, h)
        t[p + "output.dense.weight"] = w(h, ff)
    save_file(t, str(path))


def burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_once(model: Path, extra: list[str], env: dict[str, str],
             src: str | None) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one whole analyze process."""
    if src:
        cmd = [sys.executable, "-m", "spectrum_cli"]
        env = {**env, "PYTHONPATH": src}
    else:
        cmd = [str(Path(sys.executable).with_name("spectrum"))]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd + ["analyze", str(model), "--json", "--no-cache", *extra],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):
        raise SystemExit(f"analyze failed ({r.returncode}): {r.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--src", help="another source tree to time instead of the installed one")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        model = Path(tmp.name) / "minilm.safetensors"
        make_minilm(model)
    base = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    envs = {"set to 1": {**base, **{k: "1" for k in THREAD_ENV}}, "none set": base}
    burners = [burner(), burner()]
    failed = False
    try:
        print(f"model {model} ({model.stat().st_size / 2**20:.0f} MiB), 2 CPU burners, "
              f"{os.cpu_count()} CPUs, src {args.src or 'installed'}")
        for label, env in envs.items():
            times: dict[str, list[tuple[float, float]]] = {"default": [], "--threads 1": []}
            for _ in range(args.repeats):
                for name, extra in (("default", []), ("--threads 1", ["--threads", "1"])):
                    times[name].append(run_once(model, extra, env, args.src))
            med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
            ratio = med["default"] / med["--threads 1"]
            ok = ratio <= GOALS[label]
            failed |= not ok
            print(f"variables {label:8s}: default {med['default']:6.1f} s wall "
                  f"{cpu['default']:5.1f} s CPU | --threads 1 {med['--threads 1']:6.1f} s wall "
                  f"{cpu['--threads 1']:5.1f} s CPU | ratio {ratio:.2f} "
                  f"(goal <= {GOALS[label]}) {'PASS' if ok else 'FAIL'}", flush=True)
    finally:
        for b in burners:
            b.kill()
            b.wait()
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
