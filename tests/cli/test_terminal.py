"""What a terminal shows (issue 22 item 10): shortened names stay distinct; help text
reads well at 80 columns."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrum_cli.cli.summary import short_name, short_names
from tests.helpers import run_cli

SPECTRUM = Path(sys.executable).parent / "spectrum"
LONG = "model.encoder.transformer_layers.{}.feed_forward_network.intermediate.W12.weight"


def test_names_that_differ_in_the_middle_stay_distinct():
    names = [LONG.format(i) for i in (0, 2, 10)]
    plain = [short_name(n, 23) for n in names]
    assert len(set(plain)) == 1  # what the table used to show for all three
    shown = short_names(names, 23)
    assert len(set(shown)) == 3
    assert all(len(s) <= 23 for s in shown)
    assert [s for s in shown if "…" in s] == shown


def test_names_that_differ_only_far_inside_get_a_window():
    names = ["a" * 40 + str(i) + "b" * 40 for i in range(3)]
    shown = short_names(names, 20)
    assert len(set(shown)) == 3 and all(len(s) <= 20 for s in shown)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab.0123", min_size=1, max_size=60), min_size=1,
                max_size=8, unique=True),
       st.integers(min_value=5, max_value=40))
def test_shortened_names_are_distinct_and_fit(names, width):
    shown = short_names(names, width)
    assert len(set(shown)) == len(names)
    for n, s in zip(names, shown):
        assert s == n or len(s) <= width


def test_the_summary_at_80_columns_shows_every_tensor_apart(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({LONG.format(i): rng.standard_normal((8, 6)) for i in (0, 2)},
              str(tmp_path / "m.safetensors"))
    r = subprocess.run([str(SPECTRUM), "analyze", str(tmp_path / "m.safetensors")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "60", "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    rows = [line.split()[0] for line in r.stdout.splitlines() if "8x6" in line]
    assert len(rows) == 2 and rows[0] != rows[1], r.stdout


COMMANDS = ["analyze", "batch", "watch", "diff", "model", "pseudospectrum", "esd", "allocate",
            "trust", "backends", "report", "report show"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns(command):
    out = run_cli(*command.split(), "--help", env={"COLUMNS": "80"}).stdout
    assert "<bool>" not in out
    # choices are never folded mid-word: a metavar <a|b|c> closes on its own line
    assert not re.search(r"<[a-z0-9_-]+(\|[a-z0-9_-]*)+\s", out), out
    assert "seeds" not in out.lower()
    assert "(or )" not in out  # [tool.spectrum] eaten as markup
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    # arguments spelled one way, in capitals, as in the Arguments panel
    assert all(a.isupper() for a in re.findall(r"[{\[]([A-Za-z_]+)[}\]]", usage)), usage


def test_scheduler_help_names_the_extra():
    out = run_cli("analyze", "--help", env={"COLUMNS": "200"}).stdout
    assert "spectrum-cli[distributed]" in out


def test_esd_force_names_only_what_esd_writes():
    out = run_cli("esd", "--help", env={"COLUMNS": "200"}).stdout
    force = next(line for line in out.splitlines() if "--force" in line)
    assert "--report" not in force
