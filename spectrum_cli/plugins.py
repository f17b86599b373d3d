"""Backend discovery through the ``spectrum.backends`` entry-point group.

As in xarray's ``backends/plugins.py`` and fsspec's registry: entry points are listed
without importing anything; a backend's module is imported on first use; a plugin that
fails to import or to instantiate gives a :class:`BackendWarning` and is left out, never
a crash; an unknown name is a usage error that lists what is installed. The built-in
backends are registered in pyproject.toml exactly like a third-party one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from spectrum_cli.core.errors import UsageError

GROUP = "spectrum.backends"


class BackendWarning(UserWarning):
    """A backend plugin could not be loaded."""


@dataclass(frozen=True)
class BackendInfo:
    """One row of ``spectrum backends``."""

    name: str
    target: str
    backend: Any | None
    available: bool
    reason: str


_cache: dict[str, Any] = {}
_table: dict[str, EntryPoint] = {}


def _entry_points() -> dict[str, EntryPoint]:
    """The group's entry points, scanned once per process (a scan reads every installed
    distribution's metadata: tens of milliseconds)."""
    if not _table:
        for ep in entry_points(group=GROUP):
            _table.setdefault(ep.name, ep)  # first registration of a name wins
    return _table


def names() -> list[str]:
    """Installed backend names (no imports)."""
    return sorted(_entry_points())


def _load(ep: EntryPoint) -> Any:
    if ep.name not in _cache:
        cls = ep.load()
        backend = cls()
        for attr in ("name", "description", "capabilities", "available", "singular_values"):
            if not hasattr(backend, attr):
                raise TypeError(f"{ep.value} lacks {attr!r} (see spectrum_cli.core.backend)")
        _cache[ep.name] = backend
    return _cache[ep.name]


def get_backend(name: str) -> Any:
    """The backend registered as ``name``; UsageError if unknown, unloadable or unavailable."""
    eps = _entry_points()
    if name not in eps:
        raise UsageError(f"unknown backend {name!r}; installed: {', '.join(sorted(eps))}")
    try:
        backend = _load(eps[name])
    except Exception as exc:
        raise UsageError(f"backend {name!r} ({eps[name].value}) failed to load: "
                         f"{type(exc).__name__}: {exc}") from None
    ok, reason = backend.available()
    if not ok:
        raise UsageError(f"backend {name!r} is not available here: {reason}")
    return backend


def list_backends() -> list[BackendInfo]:
    """Every registered backend, loaded; broken ones warn and are listed as broken."""
    out = []
    for name, ep in sorted(_entry_points().items()):
        try:
            backend = _load(ep)
            ok, reason = backend.available()
        except Exception as exc:
            warnings.warn(f"backend plugin {name!r} ({ep.value}) is broken: "
                          f"{type(exc).__name__}: {exc}", BackendWarning, stacklevel=2)
            out.append(BackendInfo(name, ep.value, None, False,
                                   f"broken: {type(exc).__name__}: {exc}"))
            continue
        out.append(BackendInfo(name, ep.value, backend, ok, reason))
    return out


def clear_cache() -> None:
    """Forget the scanned entry points and loaded backends (for tests that patch them)."""
    _cache.clear()
    _table.clear()
