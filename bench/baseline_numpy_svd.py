"""Baseline: the plain numpy float64 SVD loop a user would write for a sharded checkpoint.

    python bench/baseline_numpy_svd.py FOLDER [--sample K]

For every 2-D tensor of the folder's safetensors shards: load it (``safetensors`` with
torch, since numpy has no bfloat16), ``.to(float64).numpy()``, ``np.linalg.svd(w,
compute_uv=False)`` (LAPACK gesdd), one after the other, BLAS threads as the environment
leaves them (the machine's default: every core). ``--sample K`` times only the first K
tensors of each distinct shape and extrapolates each shape's mean time by its count.

Prints one JSON document on stdout: the matrices, the loop's measured seconds, the
per-shape means and counts, the extrapolated loop time (sample mode), and the BLAS
thread pools (threadpoolctl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path


def shards(folder: Path) -> dict[str, Path]:
    """tensor name -> shard file, from the index (or every *.safetensors file)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / fname for name, fname in weight_map.items()}
    from safetensors import safe_open

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            out.update({name: path for name in fh.keys()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--sample", type=int, default=0,
                    help="time K tensors per distinct shape and extrapolate (0: all)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    import numpy as np
    import torch
    from safetensors import safe_open
    from threadpoolctl import threadpool_info

    where = shards(args.folder)
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name, path in where.items():
        by_file[path].append(name)
    times: dict[tuple[int, int], list[float]] = defaultdict(list)
    counts: dict[tuple[int, int], int] = defaultdict(int)
    loop = 0.0
    kappa = {}
    for path, names in sorted(by_file.items()):
        with safe_open(str(path), framework="pt") as fh:
            for name in names:
                shape = tuple(fh.get_slice(name).get_shape())
                if len(shape) != 2:
                    continue
                counts[shape] += 1
                if args.sample and len(times[shape]) >= args.sample:
                    continue
                t0 = time.perf_counter()
                w = fh.get_tensor(name).to(torch.float64).numpy()
                s = np.linalg.svd(w, compute_uv=False)
                dt = time.perf_counter() - t0
                kappa[name] = float(s[0] / s[-1])
                times[shape].append(dt)
                loop += dt
    per_shape = [{"shape": list(k), "count": counts[k], "timed": len(times[k]),
                  "mean_s": sum(times[k]) / len(times[k])} for k in counts]
    doc = {
        "matrices": sum(counts.values()),
        "timed": sum(len(v) for v in times.values()),
        "loop_s": loop,
        "extrapolated": bool(args.sample) and any(p["timed"] < p["count"] for p in per_shape),
        "loop_extrapolated_s": sum(p["mean_s"] * p["count"] for p in per_shape),
        "per_shape": per_shape,
        "startup_s": None,  # filled below: imports and index, before the loop
        "threadpools": [{"api": i.get("internal_api"), "num_threads": i["num_threads"]}
                        for i in threadpool_info()],
        "torch_threads": torch.get_num_threads(),
        "kappa": kappa,
    }
    doc["startup_s"] = time.perf_counter() - t_start - loop
    json.dump(doc, sys.stdout)
    print()


if __name__ == "__main__":
    main()
