"""A run's job: what analysing a checkpoint produces (:class:`Job`: the analysis
settings, the optimizer operators' settings, ``--fail-on``, the loading policy) and how
its tensors are measured (:class:`RunOptions`), resolved from the command line, the
environment and the configuration file (:mod:`spectrum_cli.config`)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from spectrum_cli import config, plugins, settings
from spectrum_cli.core.analyze import AnalyzeOptions
from spectrum_cli.core.errors import UsageError
from spectrum_cli.core.thresholds import parse_conditions, parse_eps
from spectrum_cli.io import storage
from spectrum_cli.io.base import LoadPolicy
from spectrum_cli.runs.cache import code_fingerprint
from spectrum_cli.runs.executors import Cluster
from spectrum_cli.settings import BY_NAME, CONFIG_KEYS, parse_size

#: Settings that shape the analysis (and so the cache key of batch results), from the
#: schema; include, exclude and eps are parsed first.
OPTION_KEYS = tuple(k for k in settings.names("analysis") if k not in ("include", "exclude",
                                                                     "eps"))


OPERATOR_KEYS = settings.names("operator")


@dataclass(frozen=True)
class Job:
    """Everything that decides what analysing a checkpoint produces."""

    options: AnalyzeOptions
    operator_values: tuple[tuple[str, Any], ...] = ()
    fail_on: tuple[str, ...] = ()
    policy: LoadPolicy = field(default_factory=LoadPolicy)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], policy: LoadPolicy) -> "Job":
        fail_on = tuple(values.get("fail_on", ()))
        # Validate now: a bad condition is a usage error up front.
        parse_conditions(fail_on, metric_names())
        options = AnalyzeOptions(
            include=tuple(values.get("include", ())), exclude=tuple(values.get("exclude", ())),
            eps=parse_eps(values.get("eps", [])),
            **{k: values[k] for k in OPTION_KEYS if k in values})
        ops = tuple((k, tuple(values[k]) if isinstance(values[k], list) else values[k])
                    for k in OPERATOR_KEYS if k in values)
        return cls(options, ops, fail_on, policy)

    @property
    def values(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.operator_values}

    def settings_key(self) -> str:
        """A hash of the settings and of spectrum's own code (for caching batch results:
        a new version, or any edit of the code, invalidates them)."""
        blob = json.dumps({"options": self.options.as_dict(), "ops": self.values,
                           "fail_on": list(self.fail_on), "code": code_fingerprint(),
                           "policy": asdict(self.policy)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def metric_names() -> list[str]:
    """Names --fail-on accepts beside the core's: the registered metrics (entry points
    only: nothing is imported) and the operator metrics each optimizer rule declares."""
    rules = plugins.optimizers.loaded().values()
    return plugins.metrics.names() + [m for r in rules for m in getattr(r, "metrics", {})]


@dataclass(frozen=True)
class RunOptions:
    """How one checkpoint's tensors are measured (what is measured is the :class:`Job`):
    ``jobs`` worker processes (1: this process) of ``threads`` threads, fewer where
    their expected peak would pass ``max_memory`` bytes; per-tensor results cached in
    ``cache_dir`` (None: no cache) for checkpoints of at least ``cache_min_bytes``."""

    jobs: int = 1
    threads: int | None = None
    max_memory: int | None = None
    executor: str = "auto"
    cache_dir: str | None = None
    cache_min_bytes: int = 0
    cluster: Cluster = Cluster()

    def __post_init__(self) -> None:
        if not (isinstance(self.jobs, int) and self.jobs >= 1):
            raise UsageError(f"--jobs: expected a positive integer, got {self.jobs!r}")


def config_values(cli: Mapping[str, Any], near: Path | None) -> tuple[dict[str, Any], Any]:
    """Resolved configuration (CLI > env > file) and the Config object."""
    cfg = config.resolve(cli, near=near)
    return cfg.values, cfg


SAFETY = ("allow_global", "trust_checkpoint", "storage_option")


def check_settings(settings: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """Validate setting names (a typo is an error naming the known ones) and normalise
    list-valued settings given as a single string."""
    out = {}
    for key, value in settings.items():
        if key not in allowed:
            raise UsageError(f"unknown setting {key!r}; known: {', '.join(sorted(allowed))}")
        if BY_NAME[key].kind == "list" and isinstance(value, str):
            value = [value]
        elif BY_NAME[key].kind == "list" and value is not None:
            value = [str(v) for v in value]
        out[key] = value
    return out


def resolve_job(path: str | os.PathLike, settings: Mapping[str, Any],
                use_config: bool = True, near: Path | None = None) -> tuple[Any, Any]:
    """The job for ``path`` (settings > ``SPECTRUM_*`` > file) and the configuration it
    came from. Loading safety (``allow_global``, ``trust_checkpoint``) is taken from
    ``settings`` only, for the files named there."""
    cfg = resolve_config(path, settings, use_config, near)
    return Job.from_values(cfg.values, load_policy(settings, cfg.values.get("weights_key"))), cfg


def resolve_config(path: str | os.PathLike, settings: Mapping[str, Any],
                   use_config: bool = True, near: Path | None = None) -> Any:
    """The configuration for ``path``: settings > ``SPECTRUM_*`` > the nearest
    spectrum.toml / [tool.spectrum] (looked for beside a local path only; never in a
    bucket)."""
    given = {k: (v if v is not False else None) for k, v in settings.items()
             if k in CONFIG_KEYS}
    if not use_config:
        return config.Config(values={k: v for k, v in given.items()
                                     if v is not None and v != []})
    p = Path(path)
    if near is None and not storage.is_url(path) and p.exists():
        near = p.resolve() if p.is_dir() else p.resolve().parent
    return config.resolve(given, near=near)


def load_policy(settings: Mapping[str, Any], weights_key: str | None = None) -> Any:
    """How far checkpoints are trusted and how URLs are reached, from the command line's
    settings only (``allow_global``, ``trust_checkpoint``, ``storage_option``); the
    storage options apply to this process from now on (listing, hashing)."""
    policy = LoadPolicy(tuple(settings.get("allow_global") or ()),
                        bool(settings.get("trust_checkpoint")), weights_key,
                        tuple(settings.get("storage_option") or ()))
    storage.configure(policy.storage_options)
    return policy


def run_options(values: Mapping[str, Any], cache_dir: str | os.PathLike | None = None,
                cache_min_bytes: int = 0) -> Any:
    """How the tensors are measured, from the resolved settings (jobs, threads,
    max_memory, executor) and the cache folder."""
    return RunOptions(jobs=int(values.get("jobs") or 1), threads=values.get("threads"),
                      max_memory=size_or_none(values.get("max_memory")),
                      executor=values.get("executor") or "auto",
                      cache_dir=None if cache_dir is None else str(cache_dir),
                      cache_min_bytes=cache_min_bytes, cluster=cluster_of(values))


def cluster_of(values: Mapping[str, Any]) -> Cluster:
    """The cluster the resolved settings name (``scheduler``, ``scheduler_file``)."""
    return Cluster(values.get("scheduler") or None, values.get("scheduler_file") or None)


def require_device(values: Mapping[str, Any]) -> None:
    """``--device cuda`` where this machine computes and has no CUDA device is a usage
    error said once, before anything is read (on a Dask cluster the workers decide)."""
    if values.get("device") != "cuda":
        return

    if values.get("executor") == "dask" or values.get("scheduler") or \
            values.get("scheduler_file"):
        return
    import torch

    if not torch.cuda.is_available():
        built = "built with CUDA " + torch.version.cuda if torch.version.cuda else \
            "a CPU-only build"
        raise UsageError(f"--device cuda: torch sees no CUDA device on this machine "
                         f"(torch {torch.__version__}, {built})")


def size_or_none(limit: Any) -> int | None:
    return None if limit in (None, "") else parse_size(limit)
