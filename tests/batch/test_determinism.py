"""Issue 22 items 2 and 6: the same numbers whatever the parallelism, and threads that
honour the environment.

The per-tensor computation is a function of the tensor alone: ``--jobs 1``, ``--jobs 2``,
``--threads 1``, ``--threads 2`` and the thread variables give the same document, bit
for bit (run-dependent fields aside). The matrices are chosen so that today's library
calls differ between one and two threads (OpenBLAS's dgemm/syrk/syevd/getrf/gesdd
already at 300 x 300), and so that every dense route runs: gesdd, the Gram route with
tiles (1200 x 320, 180 x 1100), the Gram route with LU refinement (520 x 520), and the
eigen analysis of square matrices (``--square all``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from spectrum_cli.core import measure
from spectrum_cli.runs.threads import THREAD_ENV, available_cores
from tests.helpers import run_json, stripped

SPECTRUM = str(Path(sys.executable).with_name("spectrum"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(22)
    tensors = {
        "a.attn.weight": rng.standard_normal((300, 300)),
        "b.mlp.weight": rng.standard_normal((1200, 320)),
        "c.square.weight": rng.standard_normal((520, 520)) / 3,
        "d.small.weight": rng.standard_normal((64, 48)),
        "e.wide.weight": rng.standard_normal((180, 1100)),
        "rnn.weight_hh_l0": rng.standard_normal((4 * 96, 96)) / 5,
        "f.eig.weight": rng.standard_normal((160, 160)) / 13,
    }
    path = tmp_path_factory.mktemp("det") / "model.safetensors"
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(path))
    return path


ARGS = ("--json", "--no-cache", "--square", "auto", "--square-max-dim", "300")


def _console(path: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """The document of the installed console script, run as a whole process."""
    base = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    r = subprocess.run([SPECTRUM, "analyze", str(path), *ARGS, *args],
                       env={**base, **(env or {})}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def documents(model):
    """Whole processes: every core in this process (no thread variable), two workers,
    and OMP_NUM_THREADS=1 alone."""
    return {"default": _console(model), "--jobs 2": _console(model, "--jobs", "2"),
            "OMP_NUM_THREADS=1": _console(model, env={"OMP_NUM_THREADS": "1"})}


@pytest.mark.skipif(available_cores() < 2, reason="needs 2 cores")
def test_jobs_and_threads_give_the_same_bits(model, documents):
    """--jobs 1 on every core, --jobs 2, the variables at 1, and (in this process, with
    CliRunner) --threads 1 and --threads 2: the same document, bit for bit."""
    one = documents["default"]
    docs = dict(documents)
    for label, doc in docs.items():
        assert stripped(doc) == stripped(one), label
    # In this process (CliRunner), which may see other metric plugins than the console
    # script (the entry points of the source tree's metadata): among themselves.
    here = {}
    for args in (("--threads", "1"), ("--threads", "2"), ("--threads", "1", "--jobs", "2")):
        doc, result = run_json(model, *ARGS[1:], *args)
        assert result.exit_code == 0, result.stderr
        here[" ".join(args)] = doc
    for label, doc in here.items():
        assert stripped(doc) == stripped(here["--threads 1"]), label
    docs.update(here)
    methods = json.dumps([t["method"] for t in one["tensors"]])
    assert "gram+lu" in methods and '"gram"' in methods and "gesdd" in methods, methods
    assert sum(bool(t.get("nonnormal")) for t in one["tensors"]) >= 3
    run = one["settings"]["run"]
    assert (run["workers"], run["threads"], run["threads_from"]) == (0, available_cores(),
                                                                     "cores")
    assert run["library_threads"] == 1 and run["environment"] == {}
    assert docs["--threads 1"]["settings"]["run"]["threads_from"] == "--threads"
    assert docs["--jobs 2"]["settings"]["run"]["workers"] == 2


def test_the_environment_caps_the_in_process_threads(documents):
    """OMP_NUM_THREADS=1 and nothing else: the in-process path uses one thread (it used
    every core, whatever the variables said), and the settings say so."""
    run = documents["OMP_NUM_THREADS=1"]["settings"]["run"]
    assert run["threads"] == 1 and run["threads_from"] == "environment"
    assert run["environment"] == {"OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("shape", [(3072, 768), (1100, 600), (700, 700)])
def test_gram_tiles_are_the_same_bits_on_any_number_of_threads(rng, shape):
    w = rng.standard_normal(shape)
    with measure.single_threaded():
        tiles = [measure.gram_tiles(w, t) for t in (1, 2, 3)]
        whole = w.T @ w
    assert all(np.array_equal(tiles[0], t) for t in tiles[1:])
    assert np.array_equal(tiles[0], tiles[0].T)
    # Against an independent product: float64 rounding of a dot product of length m.
    ref = np.einsum("ij,ik->jk", w, w)
    bound = shape[0] * np.finfo(np.float64).eps * np.abs(w).T @ np.abs(w)
    assert np.all(np.abs(tiles[0] - ref) <= bound)
    assert np.all(np.abs(whole - ref) <= bound)


def test_the_per_matrix_rule():
    rule = measure.blas_threads_for
    assert rule((500, 500), 2) == 1  # 1.25e8 multiply-adds: below the crossover
    assert rule((512, 512), 2) == 2  # 2^27: from here
    assert rule((768, 3072), 2) == 2 and rule((3072, 768), 8) == 3  # 3 tile rows
    assert rule((2048, 2048), 1) == 1 and rule((2048, 2048), 4) == 4
    assert rule((64, 4096), 2) == 1 and rule((10,), 4) == 1


def test_single_threaded_sets_and_restores_the_libraries():
    import threadpoolctl

    with threadpoolctl.threadpool_limits(2):
        before = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
        with measure.single_threaded():
            inside = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
            with measure.single_threaded():  # re-entrant
                pass
            again = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
        after = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    assert set(inside) == set(again) == {1}
    assert after == before
