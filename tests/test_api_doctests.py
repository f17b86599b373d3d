"""The examples in the public API's docstrings run (issue 23): each docstring of
``spectrum_cli/api.py`` is a test, run from the repository root (they read
``sample_checkpoints/``), as ``doctest.testmod(spectrum_cli.api)`` would run them."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import spectrum_cli.api

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
TESTS = [t for t in doctest.DocTestFinder().find(spectrum_cli.api) if t.examples]


def test_every_public_function_and_class_has_an_example():
    named = {t.name.rsplit(".", 1)[-1] for t in TESTS}
    assert set(spectrum_cli.api.__all__) <= named
    assert {"to_pandas", "tensor"} <= named


@pytest.mark.parametrize("test", TESTS, ids=[t.name for t in TESTS])
def test_docstring_examples(test, monkeypatch):
    if test.name.endswith(".to_pandas"):
        pytest.importorskip("pandas")
    monkeypatch.chdir(ROOT)
    report: list[str] = []
    result = doctest.DocTestRunner(optionflags=FLAGS).run(test, out=report.append)
    assert result.failed == 0, "".join(report)
