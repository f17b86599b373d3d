"""Issue 11 item 1: one settings schema from which the CLI options, configuration keys,
environment variables, report settings and the batch cache key are all derived."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from spectrum_cli import config, settings
from spectrum_cli.core.analyze import AnalyzeOptions
from spectrum_cli.pipeline import Job
from tests.helpers import run_cli


def test_analysis_settings_are_exactly_the_report_settings():
    assert {f.name for f in fields(AnalyzeOptions)} == set(settings.names("analysis"))
    doc_settings = AnalyzeOptions().as_dict()
    assert set(settings.names("analysis")) <= set(doc_settings)


@pytest.mark.parametrize("s", [s for s in settings.SETTINGS if s.role == "analysis"
                               and s.default is not None], ids=lambda s: s.name)
def test_documented_defaults_are_the_real_ones(s):
    field = {f.name: f for f in fields(AnalyzeOptions)}[s.name]
    real = field.default if field.default is not MISSING else field.default_factory()
    assert real == s.default


def test_config_keys_and_environment_come_from_the_schema():
    assert config.KEYS == {s.name: s.kind for s in settings.SETTINGS if s.config}
    for s in settings.SETTINGS:
        assert (s.env is None) == (not s.config)
    cfg = config.resolve({}, environ={"SPECTRUM_CONV": "skip", "SPECTRUM_THREADS": "3",
                                      "SPECTRUM_WEIGHTS_KEY": "model"}, start=None)
    assert cfg.values == {"conv": "skip", "threads": 3, "weights_key": "model"}


def test_safety_and_output_never_come_from_files():
    for s in settings.SETTINGS:
        if s.role in ("output",) and s.name != "fail_on" or s.name in settings.FORBIDDEN:
            assert not s.config, s.name


@pytest.mark.parametrize("command", ["analyze", "batch"])
def test_every_shared_setting_is_an_option(command):
    out = run_cli(command, "--help", env={"COLUMNS": "250"}).stdout
    for s in settings.SETTINGS:
        if command not in s.commands:
            continue  # batch declares its own --jobs, --cache-dir, --no-cache
        assert s.flag in out, (command, s.flag)
        for choice in s.choices:
            assert choice in out


def test_cache_key_follows_every_analysis_and_operator_setting():
    base = Job.from_values({}, policy=Job.__dataclass_fields__["policy"].default_factory())
    seen = {base.settings_key()}
    changes = {"conv": "skip", "square": "all", "square_max_dim": 7, "eps_relative": True,
               "power_max": 9, "effective_rank_tau": 0.2, "svd_route": "gesdd",
               "backend": "lanczos", "device": "cpu", "dtype": "float32", "top_k": 3,
               "seed": 4, "randomize": True, "include": ["a"], "exclude": ["b"], "eps": ["0.1"],
               "dense_max": 5, "params": ["x"], "coordinates": "scaled",
               "step_convention": "next", "loss": "cross_entropy", "fail_on": ["kappa>2"]}
    assert set(changes) >= set(settings.names("analysis")) | set(settings.names("operator")) \
        - {"model", "data", "device"}
    for key, value in changes.items():
        if key == "device":
            continue  # cpu is the default: no change
        job = Job.from_values({key: value}, policy=base.policy)
        seen.add(job.settings_key())
    assert len(seen) == len(changes)  # every change made a new key (device excluded, +base)


def test_run_settings_of_analyze_are_in_the_schema():
    """Issue 12 items 1 and 5: --jobs and --max-memory are settings of the run (config
    and environment may set them, they are not part of the cache key); the cache folder
    is command line only (a file beside a checkpoint cannot say where spectrum writes)."""
    for name in ("jobs", "max_memory"):
        assert settings.BY_NAME[name].role == "run" and settings.BY_NAME[name].config
    for name in ("cache_dir", "no_cache"):
        assert settings.BY_NAME[name].role == "output" and not settings.BY_NAME[name].config
    cfg = config.resolve({}, environ={"SPECTRUM_JOBS": "3", "SPECTRUM_MAX_MEMORY": "1GiB"},
                         start=None)
    assert cfg.values == {"jobs": 3, "max_memory": "1GiB"}
    base = Job.from_values({}, policy=Job.__dataclass_fields__["policy"].default_factory())
    assert Job.from_values({"jobs": 4, "max_memory": "1GiB"},
                           policy=base.policy).settings_key() == base.settings_key()


def test_run_settings_are_analyze_options():
    out = run_cli("analyze", "--help", env={"COLUMNS": "250"}).stdout
    for flag in ("--jobs", "--max-memory", "--cache-dir", "--no-cache", "--executor"):
        assert flag in out
