"""Pseudospectral radius: criss-cross against a plain grid method, in one run.

    OPENBLAS_NUM_THREADS=1 python bench/bench_pseudospectra.py [--sizes 100 200 500]

Matrix: A = G/sqrt(n) with G standard normal (seeded), plus a strictly upper-triangular
shift 2/sqrt(n) on the first superdiagonal for non-normality; ε = 1e-2.

criss-cross    spectrum_cli.core.pseudospectra.criss_cross (Mengi-Overton, polished).
grid           σ_min (dense SVD) on a uniform 60 x 60 grid over the box
               [-ρ_ε_cc-0.1, ρ_ε_cc+0.1]²; the 5 best separated points (largest |z| with
               σ_min <= ε) are each refined by 9 x 9 local grids whose spacing halves each
               level (a faster shrink loses the tangential drift of the maximum), until the spacing is below 1e-10·ρ (equal accuracy). Its error is
               reported against criss-cross (a grid value can only be a lower bound).
Prints wall times, σ_min evaluations, achieved relative difference and the speed ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from spectrum_cli.core.pseudospectra import criss_cross, sigma_min


def grid_radius(a: np.ndarray, eps: float, box: float, target: float,
                starts: int = 5) -> tuple[float, int]:
    """Uniform grid, then local refinement around the ``starts`` best separated points
    (one start would often lock onto a protrusion that is not the outermost)."""
    xs = np.linspace(-box, box, 60)
    h0 = xs[1] - xs[0]
    inside = []
    for x in xs:
        for y in xs:
            z = complex(x, y)
            if sigma_min(z, a) <= eps:
                inside.append(z)
    evals = xs.size**2
    inside.sort(key=abs, reverse=True)
    seeds: list[complex] = []
    for z in inside:
        if all(abs(z - s) > 3 * h0 for s in seeds):
            seeds.append(z)
        if len(seeds) == starts:
            break
    best = max((abs(z) for z in seeds), default=-1.0)
    for center in seeds:
        local, h = abs(center), h0
        while h > target:
            h /= 2
            for dx in np.arange(-4, 5) * h:
                for dy in np.arange(-4, 5) * h:
                    z = center + complex(dx, dy)
                    if abs(z) <= local:
                        continue
                    evals += 1
                    if sigma_min(z, a) <= eps:
                        local, center = abs(z), z
        best = max(best, local)
    return best, evals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 500])
    ap.add_argument("--eps", type=float, default=1e-2)
    ap.add_argument("--grid-max-n", type=int, default=200,
                    help="skip the (slow) grid method above this n")
    args = ap.parse_args()
    print(f"BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"{'n':>5s} {'criss-cross s':>14s} {'grid s':>9s} {'grid evals':>10s} "
          f"{'ratio':>7s} {'|grid-cc|/cc':>13s} {'σ_min(z*)/ε-1':>14s}")
    for n in args.sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n)) / np.sqrt(n) + np.diag(np.full(n - 1, 2 / np.sqrt(n)), 1)
        t0 = time.perf_counter()
        cc = criss_cross(a, args.eps)
        t_cc = time.perf_counter() - t0
        check = sigma_min(cc.argmax, a) / args.eps - 1
        if n > args.grid_max_n:
            print(f"{n:5d} {t_cc:14.2f} {'skipped':>9s} {'':10s} {'':7s} {'':13s} "
                  f"{check:14.1e}", flush=True)
            continue
        t0 = time.perf_counter()
        g, evals = grid_radius(a, args.eps, cc.value + 0.1, 1e-10 * cc.value)
        t_grid = time.perf_counter() - t0
        print(f"{n:5d} {t_cc:14.2f} {t_grid:9.2f} {evals:10d} {t_grid / t_cc:7.1f} "
              f"{abs(g - cc.value) / cc.value:13.1e} {check:14.1e}", flush=True)
    print("ratio = grid time / criss-cross time. A grid value is a lower bound that stops "
          "improving once\nits seeds sit on a protrusion that is not the outermost: where "
          "|grid-cc|/cc stays above\n1e-10, the grid never reached equal accuracy and the "
          "ratio understates the speed-up.")


if __name__ == "__main__":
    main()
