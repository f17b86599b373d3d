"""The public Python API (issue 11 item 4): the same documents as the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import spectrum_cli
from spectrum_cli.core.errors import UsageError
from tests.helpers import oracle_svdvals, run_cli
from tests.conftest import SAMPLES

VOLATILE = ("created", "time_s", "wall_s")


def _stable(doc):
    """The document without wall-clock fields."""
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


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
