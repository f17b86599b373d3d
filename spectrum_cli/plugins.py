"""Extension points, discovered through entry-point groups.

One :class:`Registry` per group, as in xarray's ``backends/plugins.py`` and fsspec's
registry: entry points are listed without importing anything; a plugin's module is
imported on first use; a plugin that fails to import or to validate gives a
:class:`PluginWarning` and is listed as broken, never a crash; two plugins that claim one
name warn and the first one found wins; an unknown name is a usage error that lists what
is installed. Spectrum's own backends, metrics, readers, optimizer rules and executors are
registered in ``pyproject.toml`` exactly like a third-party plugin.

Groups: ``spectrum.backends`` (numerical engines, :mod:`spectrum_cli.core.backend`),
``spectrum.metrics``, ``spectrum.readers``, ``spectrum.optimizers``, ``spectrum.executors``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any, Callable

from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.metrics import as_metric

GROUP = "spectrum.backends"


class PluginWarning(UserWarning):
    """A plugin could not be loaded, or two plugins claim one name."""


#: Backend plugins warn with this (kept as its own name for callers that filter it).
BackendWarning = PluginWarning


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin: its name, ``module:object``, the loaded object (None when
    broken), whether it can be used here and why not."""

    name: str
    target: str
    plugin: Any | None
    available: bool
    reason: str

    @property
    def backend(self) -> Any | None:  # the name ``spectrum backends`` has always used
        return self.plugin


BackendInfo = PluginInfo


@functools.cache
def _installed() -> importlib.metadata.EntryPoints:
    """Every installed entry point, read once per process: a scan reads every
    distribution's metadata (~15 ms here), and five groups would scan five times."""
    return importlib.metadata.entry_points()


def entry_points(group: str) -> importlib.metadata.EntryPoints:
    """The installed entry points of ``group``."""
    return _installed().select(group=group)


class Registry:
    """The plugins of one entry-point group.

    ``make(name, obj)`` turns the loaded entry-point object into the plugin (a class is
    instantiated by :func:`instantiate`); ``validate`` raises ``TypeError`` for an object
    that does not keep the group's protocol; ``available`` says whether a valid plugin can
    run here (default: always).
    """

    def __init__(self, group: str, kind: str,
                 make: Callable[[str, Any], Any] = lambda name, obj: obj,
                 validate: Callable[[str, Any], None] = lambda name, obj: None,
                 available: Callable[[Any], tuple[bool, str]] = lambda obj: (True, "")):
        self.group, self.kind = group, kind
        self._make, self._validate, self._available = make, validate, available
        self._table: dict[str, EntryPoint] = {}
        self._cache: dict[str, Any] = {}

    def entries(self) -> dict[str, EntryPoint]:
        """Name -> entry point, scanned once per process (a scan reads every installed
        distribution's metadata: tens of milliseconds)."""
        if not self._table:
            for ep in entry_points(group=self.group):
                first = self._table.get(ep.name)
                if first is None:
                    self._table[ep.name] = ep
                elif first.value != ep.value:
                    warnings.warn(f"{self.kind} plugin {ep.name!r} is registered twice "
                                  f"({first.value} and {ep.value}); using {first.value}",
                                  PluginWarning, stacklevel=3)
        return self._table

    def names(self) -> list[str]:
        """Registered names (no imports)."""
        return sorted(self.entries())

    def load(self, name: str) -> Any:
        """The plugin registered as ``name``, imported and validated (errors propagate)."""
        if name not in self._cache:
            ep = self.entries()[name]
            obj = self._make(name, ep.load())
            self._validate(ep.value, obj)
            self._cache[name] = obj
        return self._cache[name]

    def get(self, name: str) -> Any:
        """The plugin ``name``; UsageError if unknown, unloadable or unavailable here."""
        eps = self.entries()
        if name not in eps:
            raise UsageError(f"unknown {self.kind} {name!r}; installed: "
                             f"{', '.join(sorted(eps)) or 'none'}")
        try:
            obj = self.load(name)
        except Exception as exc:
            raise UsageError(f"{self.kind} {name!r} ({eps[name].value}) failed to load: "
                             f"{type(exc).__name__}: {exc}") from None
        ok, reason = self._available(obj)
        if not ok:
            raise UsageError(f"{self.kind} {name!r} is not available here: {reason}")
        return obj

    def infos(self) -> list[PluginInfo]:
        """Every registered plugin, loaded; broken ones warn and are listed as broken."""
        out = []
        for name, ep in sorted(self.entries().items()):
            try:
                obj = self.load(name)
                ok, reason = self._available(obj)
            except Exception as exc:
                warnings.warn(f"{self.kind} plugin {name!r} ({ep.value}) is broken: "
                              f"{type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)
                out.append(PluginInfo(name, ep.value, None, False,
                                      f"broken: {type(exc).__name__}: {exc}"))
                continue
            out.append(PluginInfo(name, ep.value, obj, ok, reason))
        return out

    def loaded(self) -> dict[str, Any]:
        """Every plugin that loads (broken ones warn and are left out)."""
        return {i.name: i.plugin for i in self.infos() if i.plugin is not None}

    def clear(self) -> None:
        self._table.clear()
        self._cache.clear()


def instantiate(name: str, obj: Any) -> Any:
    """A class registered as a plugin is instantiated; anything else is taken as is."""
    return obj() if isinstance(obj, type) else obj


def _requires(*attrs: str) -> Callable[[str, Any], None]:
    def check(target: str, obj: Any) -> None:
        for attr in attrs:
            if not hasattr(obj, attr):
                raise TypeError(f"{target} lacks {attr!r}")
    return check


backends = Registry(GROUP, "backend", instantiate,
                    _requires("name", "description", "capabilities", "available",
                              "singular_values"),
                    lambda b: b.available())

def _metric(name: str, obj: Any) -> Any:
    return as_metric(name, instantiate(name, obj))


#: Per-matrix metrics: a callable of the descending float64 singular values returning a
#: float or None, or a :class:`spectrum_cli.core.metrics.Metric` (see there).
metrics = Registry("spectrum.metrics", "metric", _metric)

#: Optimizer rules: one per optimizer family (how to recognise and parse its state, its
#: frozen preconditioner and momentum structure, its operator forms, its EoS ratio); the
#: protocol is spectrum_cli.optim.base.OptimizerRule.
optimizers = Registry("spectrum.optimizers", "optimizer rule", instantiate,
                      _requires("name", "description", "identify", "operators"))

#: Executors: how a run's tasks are computed (spectrum_cli.runs.executors: ``run(fn, tasks,
#: plan, done)``); built in: ``serial`` and ``processes``.
executors = Registry("spectrum.executors", "executor", instantiate,
                     _requires("name", "description", "run"))

#: Checkpoint readers (spectrum_cli/io/readers.py: ``can_open(probe)`` + ``open``).
readers = Registry("spectrum.readers", "reader", instantiate,
                   _requires("name", "description", "can_open", "open"))

_REGISTRIES: list[Registry] = [backends, metrics, optimizers, executors, readers]


def register(registry: Registry) -> Registry:
    """Add a registry (made by the module that owns the protocol) to :func:`clear_cache`."""
    _REGISTRIES.append(registry)
    return registry


# The backend API, as it has always been called.
def names() -> list[str]:
    return backends.names()


def get_backend(name: str) -> Any:
    return backends.get(name)


def list_backends() -> list[PluginInfo]:
    return backends.infos()


def metric_plugins() -> tuple[Any, ...]:
    """Every metric that loads, in name order (broken ones warn and are left out)."""
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("default", PluginWarning)
        return tuple(metrics.loaded().values())


def clear_cache() -> None:
    """Forget scanned entry points and loaded plugins of every group (for tests)."""
    _installed.cache_clear()
    for registry in _REGISTRIES:
        registry.clear()
