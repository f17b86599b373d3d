"""spectrum model's two costly parts, in one run.

    OPENBLAS_NUM_THREADS=1 python bench/bench_model.py

1. Hessian spectral density of a ~2k-parameter MLP (20-64-8, 1864 parameters): SLQ
   (16 probes x 60 Lanczos steps, HVPs) against the dense Hessian + eigvalsh, timed, and
   the relative errors of the first four moments tr(H^j)/n (with SLQ's own standard
   errors beside them).
2. Empirical NTK Gram for 256 samples of a ~100k-parameter MLP (64-256-256-10, 85k
   parameters, 10 outputs: a 2560 x 2560 Gram), built one parameter tensor at a time.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch


def main() -> None:
    from spectrum_cli.core.hessian import build_problem
    from spectrum_cli.model_spectra import ntk_gram, sample_inputs, slq_density

    print(f"BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
          f", torch threads {torch.get_num_threads()}")
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 20, generator=g), torch.randn(64, 8, generator=g)
    p = build_problem(net, (x, y), "mse", [n for n, _ in net.named_parameters()])
    t0 = time.perf_counter()
    lam = np.linalg.eigvalsh(p.dense())
    t_dense = time.perf_counter() - t0
    exact = [float(np.mean(lam**j)) for j in range(1, 5)]
    h = 0.01 * float(np.abs(lam).max())
    t0 = time.perf_counter()
    d = slq_density(p, p.n, probes=16, steps=60, seed=0, bandwidth=h, lam_scale=lam.max())
    t_slq = time.perf_counter() - t0
    print(f"[1] Hessian density, n = {p.n}: dense (torch.func.hessian + eigvalsh) {t_dense:.2f} s"
          f", SLQ {t_slq:.2f} s ({d['hvps']} HVPs), dense/SLQ time {t_dense / t_slq:.2f}x")
    for j in range(4):
        rel = abs(d["moments"][j] - exact[j]) / abs(exact[j])
        print(f"    moment {j + 1}: exact {exact[j]:.6g}, SLQ {d['moments'][j]:.6g} "
              f"± {d['moments_se'][j]:.2g} (relative error {rel:.1e})")
    torch.manual_seed(0)
    big = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(),
                              torch.nn.Linear(256, 256), torch.nn.Tanh(),
                              torch.nn.Linear(256, 10))
    xb = torch.randn(256, 64, generator=g)
    pb = build_problem(big, (xb, torch.randn(256, 10, generator=g)), "mse",
                       [n for n, _ in big.named_parameters()])
    xs, _ = sample_inputs(pb, 256)
    t0 = time.perf_counter()
    k = ntk_gram(pb, xs)
    t_ntk = time.perf_counter() - t0
    t0 = time.perf_counter()
    lam_k = np.linalg.eigvalsh(k)
    t_eig = time.perf_counter() - t0
    print(f"[2] NTK Gram, 256 samples x 10 outputs of a {pb.n}-parameter MLP: {k.shape[0]}x"
          f"{k.shape[1]} built in {t_ntk:.2f} s (float64), eigvalsh {t_eig:.2f} s, "
          f"λmax {lam_k[-1]:.4g}, λmin {lam_k[0]:.3g}")


if __name__ == "__main__":
    main()
