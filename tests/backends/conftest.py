from importlib.metadata import EntryPoint

import pytest

from spectrum_cli import plugins

FAKE = EntryPoint("fake-gram", "tests.backends.fake_plugin:GramTopBackend", plugins.GROUP)
BROKEN = [EntryPoint("broken-import", "tests.backends.no_such_module:X", plugins.GROUP),
          EntryPoint("broken-init", "tests.backends.fake_plugin:Broken", plugins.GROUP)]


@pytest.fixture
def with_plugins(monkeypatch):
    """Install the fake third-party backend (and two broken ones) through the same
    entry-point lookup the registry uses."""
    real = plugins.entry_points

    def patched(group):
        return list(real(group=group)) + ([FAKE, *BROKEN] if group == plugins.GROUP else [])

    monkeypatch.setattr(plugins, "entry_points", patched)
    plugins.clear_cache()
    yield
    plugins.clear_cache()
