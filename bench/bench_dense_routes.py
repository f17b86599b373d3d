"""The dense backend's routes for square matrices: gesdd against the refined Gram route.

    python bench/bench_dense_routes.py [--sizes 1024,2048] [--folder /tmp/llm/tinyllama]

For each size: a heavy-tailed random square matrix (Student t, 3 degrees of freedom,
rounded to bfloat16: the shape of an untrained or lightly trained projection) and, with
``--folder`` (bench/make_llm_shaped.py's output), the first attention projections of that
checkpoint. Each is timed through ``spectrum_backends.dense.singular_values`` with
``route="gesdd"`` and ``route="auto"`` (Gram eigenvalues, then the bottom of the
spectrum refined: ``gram+lu``), one BLAS/torch thread, best of ``--repeat``. Prints the
route taken, how many values were refined, the speed-up, and the largest difference from
gesdd (absolute, over σ_max) and of κ (relative): the contract is 1e-10 and 1e-8.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402


def best(fn, repeat: int) -> tuple[float, object]:
    out, t = None, float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def matrices(sizes: list[int], folder: Path | None):
    import torch

    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_t(3, (n, n)) / np.sqrt(3.0 * n)
        yield f"t3-bf16-{n}", torch.from_numpy(a).to(torch.bfloat16).double().numpy()
    if folder is None:
        return
    from safetensors import safe_open

    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    names = [n for n in index if n.endswith(("q_proj.weight", "o_proj.weight"))][:4]
    for name in names:
        with safe_open(str(folder / index[name]), framework="pt") as fh:
            yield name, fh.get_tensor(name).double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048")
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from spectrum_backends import dense

    print(f"{'matrix':42s} {'route':8s} {'refined':>7s} {'gesdd s':>8s} {'auto s':>7s} "
          f"{'speed-up':>8s} {'|Δσ|/σmax':>10s} {'Δκ/κ':>9s}")
    ratios = []
    for name, a in matrices([int(s) for s in args.sizes.split(",")], args.folder):
        t_ref, ref = best(lambda: dense.singular_values(a, route="gesdd"), args.repeat)
        t_new, new = best(lambda: dense.singular_values(a, route="auto"), args.repeat)
        d = float(np.max(np.abs(new.values - ref.values)) / ref.values[0])
        k_ref = ref.values[0] / ref.values[-1]
        dk = abs(new.values[0] / new.values[-1] - k_ref) / k_ref
        ratios.append(t_ref / t_new)
        print(f"{name[:42]:42s} {new.route:8s} {new.settings.get('refined', 0):7d} "
              f"{t_ref:8.3f} {t_new:7.3f} {t_ref / t_new:7.2f}x {d:10.1e} {dk:9.1e}")
    print(f"median speed-up {np.median(ratios):.2f}x (one thread each, same process)")


if __name__ == "__main__":
    main()
