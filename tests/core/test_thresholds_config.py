import subprocess
import sys
from types import SimpleNamespace

import pytest

from spectrum_cli import config
from spectrum_cli.core.errors import ExitCode, UsageError
from spectrum_cli.core.selection import Selector
from spectrum_cli.core.thresholds import Condition, evaluate, parse_conditions


def test_exit_codes_are_public_and_stable():
    from spectrum_cli import ExitCode as Public

    assert Public is ExitCode
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 5, 130]


def test_parse_conditions():
    got = parse_conditions(["kappa>1e4@*.attention.*,stable_rank <= 2", "kappa!=inf"])
    assert got == [Condition("kappa", ">", 1e4, "*.attention.*"),
                   Condition("stable_rank", "<=", 2.0, None),
                   Condition("kappa", "!=", float("inf"), None)]
    assert str(got[0]) == "kappa>10000@*.attention.*"


def test_evaluate_scopes_none_and_inf():
    tensors = [SimpleNamespace(name="a.attention.q", metrics={"kappa": float("inf")}),
               SimpleNamespace(name="b.ffn", metrics={"kappa": 50.0}),
               SimpleNamespace(name="c", metrics={"kappa": None})]
    v = evaluate(parse_conditions(["kappa>100"]), tensors)
    assert [x.tensor for x in v] == ["a.attention.q"]
    v = evaluate(parse_conditions(["kappa>10@*.ffn"]), tensors)
    assert [x.tensor for x in v] == ["b.ffn"]
    assert evaluate(parse_conditions(["kappa<1e300"]), tensors)[0].tensor == "b.ffn"


def test_selector_globs_cross_dots_and_regexes():
    s = Selector(include=["*.attention.*"], exclude=["re:key$"])
    assert s("enc.layer.0.attention.self.query")
    assert not s("enc.layer.0.attention.self.key")
    assert not s("enc.ffn")
    with pytest.raises(UsageError, match="invalid regular expression"):
        Selector(include=["re:("])


def test_config_types_and_forbidden_keys(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "spectrum.toml").write_text("square-max-dim = 64\nexclude = ['a', 'b']\n")
    cfg = config.resolve({}, environ={"SPECTRUM_SQUARE": "all", "SPECTRUM_HOME": "/x"},
                         start=tmp_path)
    assert cfg.values == {"square_max_dim": 64, "exclude": ["a", "b"], "square": "all"}
    assert cfg.origins["square"] == "SPECTRUM_SQUARE"
    cfg = config.resolve({"square": "none"}, environ={"SPECTRUM_SQUARE": "all"}, start=tmp_path)
    assert cfg.values["square"] == "none" and cfg.origins["square"] == "command line"
    with pytest.raises(UsageError, match="only enabled from the command line"):
        config.resolve({}, environ={"SPECTRUM_ALLOW_GLOBAL": "posix.system"}, start=tmp_path)
    (tmp_path / "spectrum.toml").write_text("include = 3\n")
    with pytest.raises(UsageError, match="list of strings"):
        config.resolve({}, environ={}, start=tmp_path)
    (tmp_path / "spectrum.toml").write_text("include = [\n")
    with pytest.raises(UsageError, match="not a valid TOML configuration"):
        config.resolve({}, environ={}, start=tmp_path)


# ---- issue 26: re: patterns are matched in linear time ---------------------------------

SAME_AS_RE = [r"key$", r"^encoder\.layer\.\d+\.", r"(q|k|v)_proj", r"(?i)ATTN", r"\bfc\d\b",
              r"layer\.(1|2)?\d\.", r"^(?:a|ab)*c", r"x{2,3}y", r"\Bproj", r"^$", r"",
              r"(?m)^b", r"weight\Z", r"[^.]+\.bias$", r"a.*?b", r"(?s)a.b", r"\W\w+\s?"]
NAMES = ["encoder.layer.0.attention.self.key", "encoder.layer.12.q_proj.weight", "fc1",
         "Attn.out", "a.fc2.bias", "", "xxy", "xxxxy", "ab\nb", "layer.25.weight\n",
         "aababc", "a\nb", "attn_proj", "a_b.c d"]


@pytest.mark.parametrize("source", SAME_AS_RE)
def test_regex_patterns_match_as_re_search_does(source):
    import re

    from spectrum_cli.core.selection import compile_pattern

    match = compile_pattern("re:" + source)
    for name in NAMES:
        assert match(name) == (re.search(source, name) is not None), (source, name)


@pytest.mark.parametrize("source, why", [
    (r"(a+)\1", "backreferences"), (r"(?=a)b", "lookahead"), (r"(?<!a)b", "lookahead"),
    (r"(?>a+)b", "atomic"), (r"a++b", "possessive"), (r"(a)?(?(1)b|c)", "conditional"),
    (r"(?:a{1000}){1000}", "automaton states"),
])
def test_regex_patterns_that_need_backtracking_are_refused(source, why):
    with pytest.raises(UsageError, match=f"--include: regular expression .* refused: .*{why}"):
        Selector(include=["re:" + source])


def test_long_patterns_are_refused_and_catastrophic_ones_are_linear():
    from spectrum_cli.core.selection import MAX_PATTERN, compile_pattern

    with pytest.raises(UsageError, match=f"at most {MAX_PATTERN}"):
        compile_pattern("*" * (MAX_PATTERN + 1), "--exclude")
    # exponential for a backtracking engine (2^5000 paths), one pass over the name here;
    # in a subprocess, so that a regression fails at the deadline instead of hanging
    code = ("from spectrum_cli.core.selection import compile_pattern as c\n"
            "name = 'a' * 5000 + '!'\n"
            "print(c('re:(a+)+$')(name), c('re:^(a|aa)*$')(name), c('re:(a+)+!$')(name))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.split() == ["False", "False", "True"], r.stderr
