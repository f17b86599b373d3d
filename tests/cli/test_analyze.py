"""`spectrum analyze` end to end through typer's CliRunner: JSON, table, report, CI use."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from spectrum_cli.core.errors import ExitCode
from spectrum_cli.core.metrics import METRICS
from tests.helpers import run_cli, run_json, spectrum_of, with_spectrum


@pytest.fixture
def ckpt(tmp_path, rng):
    """A nested training checkpoint with known spectra, a conv kernel and an Adam state."""
    sd = {
        "encoder.attention.query.weight": torch.from_numpy(
            with_spectrum(rng, (32, 32), spectrum_of("geometric", 32, 1e5))).float(),
        "encoder.attention.key.weight": torch.from_numpy(
            with_spectrum(rng, (32, 32), spectrum_of("geometric", 32, 10.0))).float(),
        "encoder.ffn.weight": torch.from_numpy(
            with_spectrum(rng, (128, 32), spectrum_of("geometric", 32, 1e3))).bfloat16(),
        "encoder.ffn.bias": torch.zeros(128),
        "conv.weight": torch.randn(8, 3, 3, 3),
    }
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "train.pt"
    torch.save({"model": sd, "optimizer": opt.state_dict(), "step": 10}, path)
    return path, sd


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_content_hash_computed_beside_the_work_is_the_files(ckpt, tmp_path, jobs):
    """The hash runs in a thread while tensors are measured; the document and the cache
    both get the file's real SHA-256."""
    import hashlib

    path, _ = ckpt
    args = [path, "--jobs", jobs, "--cache-dir", tmp_path / "cache"]
    doc, result = run_json(*args)
    assert result.exit_code == 0
    assert doc["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    again, _ = run_json(*args)  # the cache was keyed by that hash: every tensor hits
    assert again["summary"]["from_cache"] == len(doc["tensors"])


def test_a_failing_content_hash_is_exit_2_naming_the_file(ckpt, monkeypatch):
    from spectrum_cli.core.errors import InputError
    from spectrum_cli.runs import document

    path, _ = ckpt

    def unreadable(paths):
        raise InputError(f"{paths[0]}: read error while hashing")

    monkeypatch.setattr(document, "sha256_files", unreadable)  # what the digest calls
    result = run_cli("analyze", path, "--json")
    assert result.exit_code == ExitCode.USAGE_OR_INPUT_ERROR, result.output
    assert f"{path}: read error while hashing" in result.stderr


def test_json_document_schema(ckpt):
    path, sd = ckpt
    doc, result = run_json(path)
    assert result.exit_code == 0
    assert doc["schema"] == "spectrum.analysis" and doc["schema_version"] == "1.0.0"
    assert {"schema", "schema_version", "source", "tensors", "skipped", "errors"} <= set(doc)
    assert re.fullmatch(r"[0-9a-f]{64}", doc["source"]["sha256"])
    assert doc["source"]["format"] == "torch"
    names = {t["name"] for t in doc["tensors"]}
    assert names == {"encoder.attention.query.weight", "encoder.attention.key.weight",
                     "encoder.ffn.weight", "conv.weight"}
    for t in doc["tensors"]:
        assert {"name", "shape", "dtype", "kind", "metrics"} <= set(t)
        assert set(t["metrics"]) <= set(METRICS)
        assert t["method"]["accuracy"] == "exact"
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["conv.weight"]["kind"] == "conv_reshaped"
    assert by["conv.weight"]["shape"] == [8, 3, 3, 3]
    assert by["conv.weight"]["matrix_shape"] == [8, 27]
    assert by["encoder.ffn.weight"]["dtype"] == "bfloat16"
    q = by["encoder.attention.query.weight"]["metrics"]
    ref = np.linalg.svd(sd["encoder.attention.query.weight"].double().numpy(), compute_uv=False)
    assert q["kappa"] == pytest.approx(ref[0] / ref[-1], rel=1e-8)
    assert "spectral_radius" not in q  # --square auto: a feed-forward projection
    reasons = {s["reason"] for s in doc["skipped"]}
    assert "optimizer state" in reasons and "1-D" in reasons


def test_logs_go_to_stderr_and_stdout_is_pure_json(ckpt, tmp_path):
    path, _ = ckpt
    result = run_cli("analyze", path, "--json", "--report", tmp_path / "r.h5")
    json.loads(result.stdout)
    assert "report written" in result.stderr


def test_table_sorted_by_kappa_and_fits_80_columns(ckpt):
    path, _ = ckpt
    result = run_cli("analyze", path)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    # Everything but the first line (the source path, soft-wrapped by the terminal).
    assert max(len(line) for line in lines[1:]) <= 80
    doc, _ = run_json(path)
    expected = [t["name"] for t in sorted(doc["tensors"], key=lambda t: -t["metrics"]["kappa"])]
    rows = [line.split()[0].rstrip("†") for line in lines
            if len(line.split()) > 1 and re.fullmatch(r"\d+x\d+", line.split()[1])]
    assert len(rows) == len(expected)
    for row, name in zip(rows, expected):  # long names keep both ends: "enc…query.weight"
        head, _, tail = row.partition("…")
        assert name == row or (name.startswith(head) and name.endswith(tail)
                               and len(head) >= 3 and len(tail) >= 3), (row, name)
    assert "† k-D kernel reshaped" in result.stdout
    assert "optimizer state" in result.stdout


def test_report_round_trip(ckpt, tmp_path):
    path, _ = ckpt
    report = tmp_path / "out.h5"
    doc, result = run_json(path, "--report", report)
    assert result.exit_code == 0 and report.exists()
    shown = run_cli("report", "show", report, "--json")
    assert shown.exit_code == 0
    back = json.loads(shown.stdout)
    assert back == doc
    table = run_cli("report", "show", report)
    assert table.exit_code == 0 and "encoder.attention.query.weight"[-20:] in table.stdout


@pytest.mark.parametrize("cond,code", [
    ("kappa>1e4", 1),
    ("kappa>1e6", 0),
    ("kappa>1e4@*.key.*", 0),
    ("kappa>1e4@*.attention.*", 1),
    ("kappa>1e4@re:query", 1),
    ("stable_rank<1.5,kappa>1e9", 0),
    ("sigma_max>=0", 1),
])
def test_fail_on(ckpt, cond, code):
    path, _ = ckpt
    doc, result = run_json(path, "--fail-on", cond)
    assert result.exit_code == code
    assert doc["fail_on"]["conditions"]
    assert bool(doc["fail_on"]["violations"]) == bool(code)


def test_fail_on_reports_and_exit_zero(ckpt):
    path, _ = ckpt
    result = run_cli("analyze", path, "--fail-on", "kappa>1e4", "--fail-on", "kappa>1e9")
    assert result.exit_code == ExitCode.THRESHOLD_VIOLATED
    assert "✗ kappa>10000: encoder.attention.query.weight" in result.stdout
    assert run_cli("analyze", path, "--fail-on", "kappa>1e4", "--exit-zero").exit_code == 0


@pytest.mark.parametrize("bad", ["kappa>>3", "kapa>3", "kappa>abc", "kappa>1@re:(", "kappa>nan"])
def test_bad_fail_on_is_a_usage_error(ckpt, bad):
    path, _ = ckpt
    result = run_cli("analyze", path, "--fail-on", bad)
    assert result.exit_code == 2 and "--fail-on" in result.stderr


def test_include_exclude(ckpt):
    path, _ = ckpt
    doc, _ = run_json(path, "--include", "encoder.*", "--exclude", "re:key")
    assert {t["name"] for t in doc["tensors"]} == {"encoder.attention.query.weight",
                                                   "encoder.ffn.weight"}
    doc, _ = run_json(path, "--include", "re:^conv", "--conv", "skip")
    assert doc["tensors"] == []
    assert any(s["reason"] == "4-D (--conv skip)" for s in doc["skipped"])


def test_options_are_validated(ckpt):
    path, _ = ckpt
    for args in (["--conv", "flatten"], ["--square", "some"], ["--effective-rank-tau", "2"],
                 ["--svd-route", "fast"], ["--square-max-dim", "-1"]):
        result = run_cli("analyze", path, *args)
        assert result.exit_code == 2, args
        # Choices and ranges are checked by the parser (listing the choices), the rest
        # by the analysis's own validation; either way the option is named.
        assert "expected" in result.stderr or "Invalid value" in result.stderr
        assert args[0].lstrip("-").replace("-", "_") in result.stderr.replace("-", "_")


def test_config_precedence_cli_env_file(ckpt):
    path, _ = ckpt
    open("pyproject.toml", "w").write(
        '[tool.spectrum]\ninclude = ["encoder.attention.*"]\nfail-on = ["kappa>1e4"]\n')
    doc, result = run_json(path)
    assert len(doc["tensors"]) == 2 and result.exit_code == 1
    assert doc["settings"]["config_file"].endswith("pyproject.toml")
    doc, result = run_json(path, env={"SPECTRUM_INCLUDE": "*.key.*"})
    assert [t["name"] for t in doc["tensors"]] == ["encoder.attention.key.weight"]
    assert result.exit_code == 0
    doc, _ = run_json(path, "--include", "conv.*", env={"SPECTRUM_INCLUDE": "*.key.*"})
    assert [t["name"] for t in doc["tensors"]] == ["conv.weight"]


def test_config_search_stops_at_repository_root(ckpt, tmp_path):
    path, _ = ckpt
    # Both searches (from the checkpoint's folder, then from the cwd) stop at a git root;
    # a configuration above both roots must not apply.
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    moved = repo / path.name
    path.rename(moved)
    (tmp_path / "pyproject.toml").write_text('[tool.spectrum]\ninclude = ["nothing"]\n')
    doc, result = run_json(moved)
    assert result.exit_code == 0 and len(doc["tensors"]) == 4


def test_spectrum_toml_beside_the_checkpoint_applies(ckpt, tmp_path):
    path, _ = ckpt
    (path.parent / "spectrum.toml").write_text('include = ["conv.*"]\n')
    doc, _ = run_json(path)
    assert [t["name"] for t in doc["tensors"]] == ["conv.weight"]


def test_bad_config_is_a_usage_error(ckpt):
    path, _ = ckpt
    open("spectrum.toml", "w").write("square_max_dim = 'big'\n")
    result = run_cli("analyze", path)
    assert result.exit_code == 2 and "square_max_dim" in result.stderr
    open("spectrum.toml", "w").write("colour = 'blue'\n")
    assert "unknown key" in run_cli("analyze", path).stderr


def test_square_all_and_none(ckpt):
    path, _ = ckpt
    doc, _ = run_json(path, "--square", "none")
    assert all("spectral_radius" not in t["metrics"] for t in doc["tensors"])
    doc, _ = run_json(path, "--square-max-dim", "8")
    assert all("spectral_radius" not in t["metrics"] for t in doc["tensors"])
    out = " ".join(run_cli("analyze", path).stdout.split())  # unwrapped
    assert ("2 of 2 square matrices not eigen-analysed (--square auto: recurrent weights"
            in out)
    doc, _ = run_json(path)  # auto: the square attention projections are feed-forward
    assert all("spectral_radius" not in t["metrics"] for t in doc["tensors"])
    doc, _ = run_json(path, "--square-max-dim", "64")
    assert sum("spectral_radius" in t["metrics"] for t in doc["tensors"]) == 2
    doc, _ = run_json(path, "--square", "all")
    assert sum("spectral_radius" in t["metrics"] for t in doc["tensors"]) == 2


def test_sample_checkpoints_run(tmp_path):
    """The README's main job, on each committed sample."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "sample_checkpoints" / "tiny-mlp"
    kappas = []
    for name in ("checkpoint.pt", "model.safetensors", "weights.npz"):
        doc, result = run_json(root / name)
        assert result.exit_code == 0, result.stderr
        kappas.append({t["name"]: t["metrics"]["kappa"] for t in doc["tensors"]})
    assert kappas[0] == kappas[1] == kappas[2]
    assert all(math.isfinite(k) for k in kappas[0].values())


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("spectrum ")
    out = run_cli("analyze", "--help", env={"COLUMNS": "200"}).stdout
    assert "--fail-on" in out and "--trust-checkpoint" in out
    # Square brackets in help texts survive rich markup.
    assert "NUMBER[@GLOB]" in out and "[default: reshape]" in out
    assert "[tool.spectrum]" in run_cli("batch", "--help", env={"COLUMNS": "200"}).stdout


def test_progress_bar_only_on_a_terminal(ckpt):
    import io

    from rich.console import Console

    from spectrum_cli.cli.analyze import analysis_progress

    plain = Console(file=io.StringIO(), force_terminal=False)
    with analysis_progress(plain, enabled=True) as cb:
        assert cb is None
    tty_out = io.StringIO()
    tty = Console(file=tty_out, force_terminal=True, width=80)
    with analysis_progress(tty, enabled=True) as cb:
        cb(0, 2, "a.weight")
        cb(2, 2, "")
    assert "2/2" in tty_out.getvalue()
    with analysis_progress(tty, enabled=False) as cb:  # --no-progress
        assert cb is None
