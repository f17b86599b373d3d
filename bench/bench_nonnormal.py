"""Whole-process benchmark of the non-normal analysis (issue 24, goal 1).

    python bench/bench_nonnormal.py [--runs 3] [--pythonpath OLD_TREE] [--keep DIR] [--floor]

Writes two synthetic safetensors checkpoints and times whole `spectrum analyze` processes
(`--threads 1`, OPENBLAS/OMP/MKL_NUM_THREADS=1, `--json` to /dev/null), interleaved:

  crnn    a CRNN (Shi, Bai & Yao 2015): a VGG-style convolutional trunk (7 kernels, 64 to
          512 channels), two bidirectional LSTMs of hidden size 256 (``rnn.{0,1}.rnn.
          weight_hh_l0[_reverse]``, 1024x256 each: 16 square 256x256 gate blocks, which
          ``--square auto`` always analyses) and their input/embedding matrices.
          Target: default run <= 2x the ``--square none`` run.
  minilm  MiniLM-L6-shaped: 25 square 384x384 (q, k, v, attention output of 6 layers and
          the pooler) and 15 non-square (FFN, embeddings). Target: ``--square all`` <= 8x
          the default run (which analyses no 384x384 eigen-structure).

``--floor`` adds two runs of the CRNN that show what no algorithm for the power curve
or the Kreiss bound can go below: the default run with those two replaced by nothing
(``eigen-only``: the Schur factorization, eigenvectors, κ(V), condition numbers and
Henrici's departure of every gate block, as the default computes them) and with the whole
non-normal analysis replaced by ``numpy.linalg.eigvals`` (``eigvals-only``: the
eigenvalues, nothing else). Their ratios to the same baseline are printed; they are
measurements of cost, not results (the runs' reports are wrong by construction).

The gate blocks and square matrices are a mix of what trained networks hold: init-like
(ρ ≈ 0.6), contracting with a transient hump (ρ ≈ 0.95 plus a strong non-normal rank-one
term), growing (ρ ≈ 1.05) and orthogonal-like (ρ ≈ 1, ‖A‖ ≈ 1). Every ratio is measured in
this run against a baseline of the same code; ``--pythonpath`` runs the code of another
tree (e.g. ``git archive HEAD spectrum_cli backends | tar -x -C /tmp/old``) to compare
before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "100"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A float32 safetensors file (the format: u64 header size, JSON header, data)."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        b = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def square_block(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    g = rng.standard_normal((n, n)) / np.sqrt(n)
    if kind == "init":  # PyTorch's LSTM init U(-1/sqrt(h), 1/sqrt(h)): ρ ≈ 0.58
        return rng.uniform(-1, 1, (n, n)) / np.sqrt(n)
    if kind == "hump":  # ρ ≈ 0.95, ‖A‖ ≈ 4: a transient hump before decay
        x, y = rng.standard_normal(n), rng.standard_normal(n)
        return 0.95 * g + 3.0 * np.outer(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))
    if kind == "growing":  # ρ ≈ 1.05: ‖A^k‖ grows without bound
        return 1.05 * g
    if kind == "orthogonal":  # ρ ≈ 1, ‖A‖ ≈ 1 (orthogonal init, slightly perturbed)
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return 0.999 * q * np.sign(np.diag(r)) + 0.01 * g
    raise ValueError(kind)


def crnn(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    chans = [(1, 64, 3), (64, 128, 3), (128, 256, 3), (256, 256, 3), (256, 512, 3),
             (512, 512, 3), (512, 512, 2)]
    for i, (cin, cout, k) in enumerate(chans):
        out[f"cnn.conv{i}.weight"] = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
        out[f"cnn.conv{i}.bias"] = np.zeros(cout)
    kinds = ["init", "hump", "growing", "orthogonal"]
    h = 256
    for layer, (nin, nout) in enumerate([(512, 256), (256, 37)]):
        for sfx in ("", "_reverse"):
            out[f"rnn.{layer}.rnn.weight_ih_l0{sfx}"] = (rng.uniform(-1, 1, (4 * h, nin))
                                                        / np.sqrt(h))
            gates = [square_block(rng, h, kinds[(layer * 2 + j + (sfx != "")) % 4])
                     for j in range(4)]
            out[f"rnn.{layer}.rnn.weight_hh_l0{sfx}"] = np.concatenate(gates)
            out[f"rnn.{layer}.rnn.bias_hh_l0{sfx}"] = np.zeros(4 * h)
        out[f"rnn.{layer}.embedding.weight"] = rng.standard_normal((nout, 2 * h)) / np.sqrt(2 * h)
    return out


def minilm(rng: np.random.Generator) -> dict[str, np.ndarray]:
    d, f = 384, 1536
    out: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": 0.05 * rng.standard_normal((30522, d)),
        "embeddings.position_embeddings.weight": 0.05 * rng.standard_normal((512, d)),
        "embeddings.token_type_embeddings.weight": 0.05 * rng.standard_normal((2, d)),
    }
    kinds = ["init", "hump", "growing", "orthogonal"]
    i = 0
    for layer in range(6):
        p = f"encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            out[p + name + ".weight"] = square_block(rng, d, kinds[i % 4])
            i += 1
        out[p + "intermediate.dense.weight"] = rng.standard_normal((f, d)) / np.sqrt(d)
        out[p + "output.dense.weight"] = rng.standard_normal((d, f)) / np.sqrt(f)
    out["pooler.dense.weight"] = square_block(rng, d, "hump")
    return out


def floor_main(mode: str, argv: list[str]) -> None:
    """The ``--floor`` runs: the CLI with the non-normal analysis cut down to ``mode``."""
    from spectrum_cli.core import measure, nonnormal
    from spectrum_cli.core.eigen import EigenStructure
    from spectrum_cli.core.transient import KreissBound, PowerNorms

    def cut(a, eps=(), eps_relative=False, power_max=200, sigma_max=None):
        if mode == "eigen-only":
            eig = nonnormal.eigenstructure(a)
        else:
            lam = np.linalg.eigvals(a)
            rho = float(np.max(np.abs(lam)))
            eig = EigenStructure(lam, rho, math.nan, False, math.nan, False)
        flat = PowerNorms(np.full(power_max, math.nan), math.nan, 0, False, 0)
        return nonnormal.NonNormal(eig, flat, KreissBound(math.nan, None, 0))

    measure.analyze_square = cut
    from spectrum_cli.cli.entry import main as cli_main

    sys.argv = ["spectrum", *argv]
    cli_main()


def run(path: Path, args: list[str], pythonpath: str | None, floor: str | None = None
        ) -> float:
    env = dict(ENV)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    head = [sys.executable, __file__, "--as-floor", floor] if floor else \
        [sys.executable, "-m", "spectrum_cli"]
    cmd = [*head, "analyze", str(path), "--threads", "1", "--json", "--no-progress", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or b"Traceback" in proc.stderr:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr.decode()}")
    return wall


def main() -> None:
    if sys.argv[1:2] == ["--as-floor"]:  # one of --floor's runs (see floor_main)
        floor_main(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pythonpath", help="run the spectrum_cli of this tree instead")
    ap.add_argument("--keep", type=Path, help="write the checkpoints here (kept)")
    ap.add_argument("--only", choices=("crnn", "minilm"))
    ap.add_argument("--floor", action="store_true",
                    help="also time the CRNN's eigen-only and eigvals-only floors")
    ns = ap.parse_args()
    folder = ns.keep or Path(tempfile.mkdtemp(prefix="bench_nonnormal_"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = {"crnn": (crnn, ["--square", "none"], [], 2.0),
             "minilm": (minilm, [], ["--square", "all"], 8.0)}
    if ns.only:
        cases = {ns.only: cases[ns.only]}
    failed = False
    for name, (make, base_args, test_args, target) in cases.items():
        path = folder / f"{name}.safetensors"
        if not path.exists():
            write_safetensors(path, make(np.random.default_rng(0)))
        floors = ("eigen-only", "eigvals-only") if ns.floor and name == "crnn" else ()
        base, test = [], []
        cut: dict[str, list[float]] = {f: [] for f in floors}
        for _ in range(ns.runs):
            base.append(run(path, base_args, ns.pythonpath))
            test.append(run(path, test_args, ns.pythonpath))
            for f in floors:
                cut[f].append(run(path, test_args, ns.pythonpath, f))
        b, t = statistics.median(base), statistics.median(test)
        for f, times in cut.items():
            m = statistics.median(times)
            print(f"{name:7s} floor {f:13s} {m:7.2f} s [{min(times):.2f}-{max(times):.2f}]"
                  f"   ratio to the baseline {m / b:6.2f}x (not a result)", flush=True)
        ok = t <= target * b
        failed |= not ok
        print(f"{name:7s} baseline {' '.join(base_args) or 'default':15s} "
              f"{b:7.2f} s [{min(base):.2f}-{max(base):.2f}]   "
              f"{' '.join(test_args) or 'default':15s} {t:7.2f} s "
              f"[{min(test):.2f}-{max(test):.2f}]   ratio {t / b:6.2f}x  "
              f"target <= {target:g}x  {'PASS' if ok else 'FAIL'}", flush=True)
    if not ns.keep:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
