"""The public Python API (issue 11 item 4): the same documents as the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import spectrum_cli
from spectrum_cli.core.errors import UsageError
from tests.helpers import oracle_svdvals, run_cli, stripped
from tests.conftest import SAMPLES

VOLATILE = ("created", "time_s", "wall_s")


def _stable(doc):
    """The document without wall-clock fields."""
    return stripped(doc, VOLATILE)


@pytest.mark.parametrize("name, extra", [
    ("tiny-mlp/checkpoint.pt", {}),
    ("tiny-mlp/model.safetensors", {"fail_on": ["kappa>10"], "square": "all"}),
])
def test_analyze_gives_the_cli_document(name, extra):
    path = SAMPLES / name
    args = []
    for k, v in extra.items():
        for item in (v if isinstance(v, list) else [v]):
            args += [f"--{k.replace('_', '-')}", item]
    r = run_cli("analyze", path, "--json", *args)
    assert r.exit_code in (0, 1), r.stderr
    out = spectrum_cli.analyze(path, **extra)
    assert _stable(out.document) == _stable(json.loads(r.stdout))
    assert out.exit_code == r.exit_code
    assert [t.name for t in out.tensors] == [t["name"] for t in out.document["tensors"]]


def test_analyze_rejects_unknown_settings():
    with pytest.raises(UsageError, match="unknown setting 'kapa'"):
        spectrum_cli.analyze(SAMPLES / "tiny-mlp/weights.npz", kapa=3)


def test_analyze_matrix_against_numpy(rng):
    a = rng.standard_normal((40, 25))
    t = spectrum_cli.analyze_matrix(a)
    s = oracle_svdvals(a)
    assert abs(t.metrics["kappa"] - s[0] / s[-1]) <= 1e-12 * s[0] / s[-1]
    np.testing.assert_allclose(t.singular_values.values, s, rtol=0, atol=1e-13 * s[0])


def test_pseudospectral_radius_of_a_normal_matrix():
    # For a normal matrix rho_eps = rho + eps exactly (Trefethen & Embree, ch. 2).
    a = np.diag([0.5, -0.9, 0.3])
    r = spectrum_cli.pseudospectral_radius(a, 1e-3)
    assert abs(r.value - 0.901) < 1e-10


def test_trajectory_matches_batch_json(tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for ckpt in sorted((SAMPLES / "sgd-momentum").glob("step-*.pt"))[:4]:
        shutil.copy(ckpt, run_dir / ckpt.name)
    run = spectrum_cli.trajectory(run_dir, use_config=False, include=["*weight*"])
    r = run_cli("batch", run_dir, "--json", "--no-cache",
                "--include", "*weight*", "--model", "spectrum_cli.examples:two_layer_relu",
                "--data", "spectrum_cli.examples:paper_regression")
    assert r.exit_code == 0, r.stderr
    cli = json.loads(r.stdout)
    assert run.document["summary"]["analysed"] == cli["summary"]["analysed"]
    # Without the config file's model there is no operator: fewer indicators, same weights.
    assert set(run.document["indicators"]) < set(cli["indicators"])
    for a, b in zip(run.document["checkpoints"], cli["checkpoints"]):
        for key, value in a["indicators"].items():
            assert b["indicators"][key] == value, key


@pytest.mark.parametrize("arrays, what", [
    ([np.eye(3)], "mapping of names to arrays"),
    ((np.eye(3),), "mapping of names to arrays"),
    (np.eye(3), "mapping of names to arrays"),
    ({"w": [[1.0, 2.0], [3.0]]}, "arrays['w']"),
    ({"w": np.array([["a", "b"], ["c", "d"]])}, "arrays['w']"),
])
def test_analyze_arrays_rejects_what_is_not_named_arrays(arrays, what):
    """Issue 22: a list of arrays was an AttributeError; now a usage error saying what
    was expected (the API's errors are SpectrumError subclasses)."""
    with pytest.raises(UsageError) as info:
        spectrum_cli.analyze_arrays(arrays)
    assert what in str(info.value)


def test_analyze_arrays_numbers_do_not_depend_on_threads(rng):
    a = {"w": rng.standard_normal((1100, 600)), "s": rng.standard_normal((300, 300))}
    one = spectrum_cli.analyze_arrays(a, threads=1)
    two = spectrum_cli.analyze_arrays(a, threads=2)
    for t1, t2 in zip(one.tensors, two.tensors):
        assert np.array_equal(t1.singular_values.values, t2.singular_values.values)
        assert t1.metrics == t2.metrics
    s = oracle_svdvals(a["w"])
    w = one.tensors[0] if one.tensors[0].name == "w" else one.tensors[1]
    np.testing.assert_allclose(w.singular_values.values, s, rtol=0, atol=1e-12 * s[0])


# ---- issue 23: the API as a numpy/xarray user expects it --------------------------------

HEAVY = ("torch", "scipy", "h5py", "safetensors", "matplotlib", "pandas")


def test_dir_lists_the_api_without_importing_it():
    import subprocess
    import sys

    code = ("import sys, spectrum_cli\nnames = dir(spectrum_cli)\n"
            f"print(sorted(m for m in {HEAVY + ('spectrum_cli.api',)!r} if m in sys.modules))\n"
            "print(' '.join(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "[]"
    listed = set(out[1].split())
    public = {"analyze", "analyze_arrays", "analyze_matrix", "pseudospectral_radius",
              "trajectory", "watch", "candidates", "Analysis", "Trajectory", "ExitCode",
              "SpectrumError", "UsageError", "InputError", "CheckpointNotFoundError",
              "__version__"}
    assert public <= listed
    assert all(getattr(spectrum_cli, n) is not None for n in public)
    assert set(spectrum_cli.__all__) <= listed



def test_analyze_arrays_gives_the_document_analyze_gives_for_the_same_arrays(rng, tmp_path):
    """One result type: the arrays' Analysis is the .npz file's, but for the source."""
    arrays = {"a": rng.standard_normal((12, 7)), "b": rng.standard_normal((6, 6)),
              "bias": rng.standard_normal(6)}
    np.savez(tmp_path / "w.npz", **arrays)
    extra = {"fail_on": ["kappa>3"], "square": "all"}
    mem = spectrum_cli.analyze_arrays(arrays, **extra)
    disk = spectrum_cli.analyze(tmp_path / "w.npz", use_config=False, **extra)
    assert isinstance(mem, spectrum_cli.Analysis)
    for key in ("tensors", "skipped", "errors", "fail_on", "settings"):
        assert stripped(mem.document[key]) == stripped(disk.document[key]), key
    assert mem.document["source"]["path"] == "<arrays>"
    assert mem.exit_code == disk.exit_code == 1
    assert [v.tensor for v in mem.violations] == [v.tensor for v in disk.violations]
    assert type(mem.result).__name__ == "AnalysisResult"
    assert mem.tensor("a").metrics == disk.tensor("a").metrics


def test_analyze_arrays_rejects_unknown_settings_naming_the_known_ones():
    with pytest.raises(UsageError, match="unknown setting 'kapa'; known: .*fail_on"):
        spectrum_cli.analyze_arrays({"w": np.eye(2)}, kapa=3)


def test_analyze_matrix_takes_integers_and_booleans():
    t = spectrum_cli.analyze_matrix(np.arange(9).reshape(3, 3))
    s = np.linalg.svd(np.arange(9.0).reshape(3, 3), compute_uv=False)
    assert t.dtype == "float64"
    assert t.metrics["numerical_rank"] == 2
    np.testing.assert_allclose(t.singular_values.values, s, rtol=0, atol=1e-13 * s[0])
    assert spectrum_cli.analyze_matrix(np.eye(3, dtype=bool)).metrics["kappa"] == 1.0


def test_short_reprs():
    a = spectrum_cli.analyze_arrays({"w": np.diag([3.2e4, 1.0]), "v": np.eye(3)},
                                    fail_on=["kappa>10"])
    assert repr(a) == "<Analysis arrays: 2 tensors, 1 violation, kappa max 3.2e4>"
    b = spectrum_cli.analyze(SAMPLES / "tiny-mlp/weights.npz", use_config=False)
    assert repr(b).startswith("<Analysis weights.npz: ") and len(repr(b)) < 100
    run = spectrum_cli.trajectory(SAMPLES / "sgd-momentum/step-0001?.pt", use_config=False,
                                  include=["*weight*"])
    assert repr(run) == "<Trajectory step-0001?.pt: 2 checkpoints, steps 10..15, 0 violations>"


def test_to_pandas_one_row_per_tensor_and_per_checkpoint():
    pd = pytest.importorskip("pandas")
    a = spectrum_cli.analyze_arrays({"w": np.diag([4.0, 1.0]), "z": np.zeros((2, 3)),
                                     "n": np.full((2, 2), np.nan)})
    df = a.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns[:5]) == ["name", "shape", "dtype", "kind", "status"]
    assert df["name"].tolist() == ["w", "z", "n"]
    assert df["shape"].tolist() == [(2, 2), (2, 3), (2, 2)]
    assert df["status"].tolist() == ["ok", "ok", "nonfinite"]
    assert df["kappa"].iloc[0] == 4.0 and df["kappa"].iloc[1] == np.inf
    assert np.isnan(df["kappa"].iloc[2]) and df["kappa"].dtype == np.float64
    assert set(a.tensor("w").metrics) <= set(df.columns)

    run = spectrum_cli.trajectory(SAMPLES / "sgd-momentum/step-0001?.pt", use_config=False,
                                  include=["*weight*"])
    tf = run.to_pandas()
    assert list(tf.columns[:4]) == ["step", "loss", "path", "status"]
    assert tf["step"].tolist() == [10, 15]
    assert tf["loss"].tolist() == [c["loss"] for c in run.document["checkpoints"]]
    assert set(run.document["indicators"]) == set(tf.columns[4:])
    for i, c in enumerate(run.document["checkpoints"]):
        for name, value in c["indicators"].items():
            assert tf[name].iloc[i] == value


def test_to_pandas_without_pandas_says_how_to_install_it(monkeypatch):
    import sys

    a = spectrum_cli.analyze_arrays({"w": np.eye(2)})
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas: ImportError
    with pytest.raises(ImportError, match=r"pip install 'spectrum-cli\[pandas\]'"):
        a.to_pandas()


@pytest.mark.parametrize("call", [
    lambda p: spectrum_cli.analyze(p, use_config=False),
    lambda p: spectrum_cli.trajectory(p, use_config=False),
    lambda p: spectrum_cli.candidates(p),
])
def test_a_missing_path_is_also_a_file_not_found_error(tmp_path, call):
    import errno
    import pickle

    from spectrum_cli.core.errors import CheckpointNotFoundError, InputError

    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as info:
        call(missing)
    err = info.value
    assert isinstance(err, CheckpointNotFoundError) and isinstance(err, InputError)
    assert str(err) == f"{missing}: no such file or directory"
    assert (err.errno, err.filename, int(err.exit_code)) == (errno.ENOENT, str(missing), 2)
    back = pickle.loads(pickle.dumps(err))  # crosses process boundaries (batch workers)
    assert (type(back), str(back), back.filename) == (type(err), str(err), err.filename)


def test_a_missing_path_still_exits_2_on_the_command_line(tmp_path):
    r = run_cli("analyze", tmp_path / "nope.pt")
    assert r.exit_code == 2
    assert "no such file or directory" in r.stderr


def test_exit_code_130_is_public():
    from spectrum_cli.core.errors import ExitCode

    assert ExitCode.INTERRUPTED == 130 and spectrum_cli.ExitCode is ExitCode


def test_watch_returns_after_count_checkpoints(tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for ckpt in sorted((SAMPLES / "sgd-momentum").glob("step-*.pt"))[:3]:
        shutil.copy(ckpt, run_dir / ckpt.name)
    seen = []
    run = spectrum_cli.watch(run_dir, count=2, use_config=False, poll=0.02, settle=0,
                             include=["*weight*"], on_update=seen.append)
    assert isinstance(run, spectrum_cli.Trajectory)
    assert [c["step"] for c in run.document["checkpoints"]] == [5, 10]
    assert [u.record["step"] for u in seen] == [5, 10]
    assert run.exit_code == 0 and run.document["summary"]["analysed"] == 2
    assert run.document["settings"]["watch"]["settle"] == 0
    # Its records are batch's: the same indicators as a batch run of those checkpoints.
    batch = spectrum_cli.trajectory(run_dir / "step-0000[5].pt", use_config=False,
                                    include=["*weight*"])
    assert batch.document["checkpoints"][0]["indicators"] == \
        run.document["checkpoints"][0]["indicators"]


def test_watch_returns_at_the_timeout_and_at_an_alert(tmp_path):
    import shutil
    import time

    t0 = time.monotonic()
    empty = spectrum_cli.watch(tmp_path / "not-yet", timeout=0.3, poll=0.05,
                               use_config=False)
    assert 0.3 <= time.monotonic() - t0 < 5
    assert empty.document["summary"]["checkpoints"] == 0 and empty.exit_code == 2

    for ckpt in sorted((SAMPLES / "sgd-momentum").glob("step-*.pt"))[:3]:
        shutil.copy(ckpt, tmp_path / ckpt.name)
    alerts = []
    run = spectrum_cli.watch(tmp_path, timeout=30, use_config=False, poll=0.02, settle=0,
                             include=["*weight*"], fail_on=["kappa>1"], on_alert=alerts.append)
    assert len(run.document["checkpoints"]) == 1 and alerts  # stopped at the first
    assert run.exit_code == 1


def test_watch_needs_an_end():
    with pytest.raises(UsageError, match="count, timeout or idle_timeout"):
        spectrum_cli.watch(SAMPLES / "sgd-momentum", use_config=False)
    with pytest.raises(UsageError, match="unknown setting 'jobs'"):
        spectrum_cli.watch(SAMPLES / "sgd-momentum", count=1, jobs=2)
    with pytest.raises(UsageError, match="count"):
        spectrum_cli.watch(SAMPLES / "sgd-momentum", count=0)
