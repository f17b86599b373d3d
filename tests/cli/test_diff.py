"""spectrum diff on two reports and on two checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import run_cli


@pytest.fixture
def pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = {"l1.weight": torch.randn(8, 5, generator=g), "l2.weight": torch.randn(6, 6, generator=g),
         "only_a": torch.randn(3, 3, generator=g)}
    b = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in a.items() if k != "only_a"}
    b["only_b"] = torch.randn(2, 4, generator=g)
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    return tmp_path / "a.pt", tmp_path / "b.pt", a, b


def test_diff_two_checkpoints(pair):
    pa, pb, a, b = pair
    result = run_cli("diff", pa, pb, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "spectrum.diff"
    assert doc["only_in_a"] == ["only_a"] and doc["only_in_b"] == ["only_b"]
    rows = {r["name"]: r for r in doc["tensors"]}
    for name in ("l1.weight", "l2.weight"):
        wa, wb = a[name].double().numpy(), b[name].double().numpy()
        assert rows[name]["weights_relative"] == pytest.approx(
            np.linalg.norm(wa - wb) / np.linalg.norm(wb), rel=1e-12)
        sa, sb = (np.linalg.svd(w, compute_uv=False) for w in (wa, wb))
        assert rows[name]["singular_values_relative"] == pytest.approx(
            np.linalg.norm(sa - sb) / np.linalg.norm(sb), rel=1e-10)
        k = rows[name]["metrics"]["kappa"]
        assert k["a"] == pytest.approx(sa[0] / sa[-1], rel=1e-10)
        assert k["delta"] == pytest.approx(k["a"] - k["b"], rel=1e-12)
        assert k["relative"] == pytest.approx(abs(k["a"] - k["b"]) / k["b"], rel=1e-12)
    num = sum(np.linalg.norm(a[n].double().numpy() - b[n].double().numpy()) ** 2
              for n in ("l1.weight", "l2.weight"))
    den = sum(np.linalg.norm(b[n].double().numpy()) ** 2 for n in ("l1.weight", "l2.weight"))
    assert doc["weights_relative_overall"] == pytest.approx(np.sqrt(num / den), rel=1e-12)


def test_diff_two_reports_table_and_markdown(pair, tmp_path):
    pa, pb, _, _ = pair
    for src, out in ((pa, "a.h5"), (pb, "b.h5")):
        assert run_cli("analyze", src, "--report", tmp_path / out).exit_code == 0
    table = run_cli("diff", tmp_path / "a.h5", tmp_path / "b.h5")
    assert table.exit_code == 0 and "l2.weight" in table.stdout
    md = run_cli("diff", tmp_path / "a.h5", tmp_path / "b.h5", "--md").stdout
    assert md.startswith("**spectrum diff**") and "| `l1.weight` |" in md
    doc = json.loads(run_cli("diff", tmp_path / "a.h5", tmp_path / "b.h5", "--json").stdout)
    assert doc["a"]["kind"] == "report" and doc["weights_relative_overall"] is None
    assert all("singular_values_relative" in r for r in doc["tensors"])


def test_diff_missing_input(pair, tmp_path):
    pa, _, _, _ = pair
    result = run_cli("diff", pa, tmp_path / "nope.pt")
    assert result.exit_code == 2 and "no such file" in result.stderr


@pytest.fixture
def reshaped(tmp_path):
    g = torch.Generator().manual_seed(1)
    a = {"w": torch.randn(3, 5, generator=g), "v": torch.randn(4, 4, generator=g),
         "same": torch.randn(4, 4, generator=g)}
    b = {"w": torch.randn(5, 3, generator=g), "v": torch.randn(4, generator=g),
         "same": a["same"] + 0.1}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    return tmp_path / "a.pt", tmp_path / "b.pt"


def test_diff_says_when_a_shape_changed(reshaped):
    pa, pb = reshaped
    doc = json.loads(run_cli("diff", pa, pb, "--json").stdout)
    assert doc["shape_changed"] == [{"name": "w", "a": [3, 5], "b": [5, 3]},
                                    {"name": "v", "a": [4, 4], "b": [4]}]
    rows = {r["name"]: r for r in doc["tensors"]}
    assert rows["w"]["shape_changed"] == {"a": [3, 5], "b": [5, 3]}
    assert "shape_changed" not in rows["same"] and "weights_relative" in rows["same"]
    md = run_cli("diff", pa, pb, "--md").stdout
    assert "- `w`: shape changed 3x5 -> 5x3" in md and "- `v`: shape changed 4x4 -> 4" in md
    table = run_cli("diff", pa, pb).stdout
    assert "w: shape changed 3x5 -> 5x3" in table and "v: shape changed 4x4 -> 4" in table


EVIL = "x|y\n| [a](http://e.com) `c` <b>h</b> www.e.com \\| \x1b[31m\u202e"


@pytest.fixture
def evil_pair(tmp_path):
    g = torch.Generator().manual_seed(2)
    a = {EVIL: torch.randn(4, 4, generator=g), "ok": torch.randn(3, 3, generator=g)}
    b = {k: v + 0.1 for k, v in a.items()}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    return tmp_path / "a.pt", tmp_path / "b.pt"


def _unescaped_pipes(line: str) -> int:
    count, i = 0, 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        count += line[i] == "|"
        i += 1
    return count


def test_markdown_names_cannot_inject_rows_links_or_html(evil_pair):
    md = run_cli("diff", *evil_pair, "--md").stdout
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(rows) == 4  # header, rule, two tensors: no injected row
    assert all(_unescaped_pipes(r) == 8 for r in rows)  # no injected cell
    for bad in ("[a](", "<b>", "http://", "www.e", "\x1b", "\u202e", "`c`"):
        assert bad not in md
    assert "\\x1b" in md and "\\[a\\]" in md


def test_terminal_output_escapes_control_characters(evil_pair):
    for args in ((), ("--md",)):
        out = run_cli("diff", *evil_pair, *args, env={"COLUMNS": "200"}).stdout
        assert "\x1b" not in out and "\u202e" not in out
        assert "\\x1b" in out and "\\u202e" in out
    table = run_cli("diff", *evil_pair, env={"COLUMNS": "200"}).stdout
    assert not any(line.startswith("| [a]") for line in table.splitlines())
    assert "x|y\\x0a|" in table  # the newline shown as an escape, on the same row
