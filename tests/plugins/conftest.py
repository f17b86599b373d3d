"""``fake_dist``: the fake distribution of :mod:`tests.plugins.fake` on the path."""

from __future__ import annotations

import os

import pytest

from spectrum_cli import plugins
from tests.plugins.fake import SITE


@pytest.fixture
def fake_dist(monkeypatch):
    """The fake distribution on sys.path (and PYTHONPATH for subprocesses)."""
    monkeypatch.syspath_prepend(str(SITE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(SITE), *filter(None, [os.environ.get("PYTHONPATH")])]))
    plugins.clear_cache()
    yield
    plugins.clear_cache()
