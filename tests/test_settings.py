"""Issue 11 item 1: one settings schema from which the CLI options, configuration keys,
environment variables, report settings and the batch cache key are all derived."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from spectrum_cli import config, settings
from spectrum_cli.core.analyze import AnalyzeOptions
from spectrum_cli.runs.job import Job
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
               "seed": 4, "randomize": True, "farms": True, "include": ["a"], "exclude": ["b"], "eps": ["0.1"],
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


# ---- issue 26: every setting has a range, checked once at the edge ---------------------

NUMERIC = [s for s in settings.SETTINGS if s.kind in ("int", "float") and s.config]


def test_every_numeric_setting_has_a_finite_range():
    for s in settings.SETTINGS:
        if s.kind in ("int", "float"):
            assert s.minimum is not None and s.maximum is not None, s.name
            assert s.minimum <= s.maximum < float("inf")
            if s.default is not None:
                assert settings.check(s, s.default) == s.default, s.name


@pytest.mark.parametrize("s", NUMERIC, ids=lambda s: s.name)
@pytest.mark.parametrize("raw", ["1e400", "inf", "nan", "1000000000000"])
def test_huge_and_infinite_values_from_the_environment_are_refused(s, raw):
    if s.kind == "int" and raw != "1000000000000":
        raw = "1" + "0" * 400  # an int too big for any range (1e400 is no integer)
    with pytest.raises(config.UsageError) as err:
        config.resolve({}, environ={s.env: raw}, start=None)
    assert str(err.value).startswith(f"{s.env}: expected ")
    assert "got " in str(err.value)


@pytest.mark.parametrize("s", NUMERIC, ids=lambda s: s.name)
def test_out_of_range_values_from_the_api_are_refused_with_or_without_config(s):
    too_big = s.maximum * 10 + 10
    for make in (lambda: config.resolve({s.name: too_big}, environ={}, start=None),
                 lambda: config.Config(values={s.name: too_big})):  # use_config=False
        with pytest.raises(config.UsageError, match=f"^{s.flag}: expected .* got "):
            make()


def test_the_python_api_refuses_a_huge_power_max():
    import numpy as np

    import spectrum_cli

    with pytest.raises(config.UsageError, match="--power-max: expected an integer from 1 "
                                                "to 10000, got 1000000000"):
        spectrum_cli.analyze_matrix(np.ones((3, 4)), power_max=10**9)


@pytest.mark.parametrize("env, needle", [
    ({"SPECTRUM_MAX_MEMORY": "1e400"}, "SPECTRUM_MAX_MEMORY: expected a size"),
    ({"SPECTRUM_MAX_MEMORY": str(2**61)}, "SPECTRUM_MAX_MEMORY: expected a size"),
    ({"SPECTRUM_CONV": "bogus"}, "SPECTRUM_CONV: expected one of reshape, skip"),
    ({"SPECTRUM_WEIGHTS_KEY": "k" * 5000}, "SPECTRUM_WEIGHTS_KEY: expected a string of at "
                                           "most 4096 characters"),
    ({"SPECTRUM_INCLUDE": ",".join(["x"] * 300)}, "SPECTRUM_INCLUDE: expected a list of strings (at most 256"),
    ({"SPECTRUM_EXCLUDE": "re:(a)\\1"}, "SPECTRUM_EXCLUDE: regular expression"),
])
def test_sizes_choices_texts_lists_and_patterns_are_checked(env, needle):
    with pytest.raises(config.UsageError) as err:
        config.resolve({}, environ=env, start=None)
    assert str(err.value).startswith(needle), str(err.value)
    assert config.resolve({}, environ={"SPECTRUM_MAX_MEMORY": "8GiB"},
                          start=None).values == {"max_memory": "8GiB"}
