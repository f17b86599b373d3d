"""Issue 10, items 2, 4, 5 (configuration), 9 (standard output) and 12 (early SIGINT):
code named by a configuration file needs consent, usage errors exit 2 with typer's
message, bad configuration values are input errors, and nothing but spectrum's own
output reaches standard output. Through CliRunner and the installed console script."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import run_cli

SAMPLE = Path(__file__).resolve().parents[2] / "sample_checkpoints" / "tiny-mlp"
SCRIPT = Path(sys.executable).parent / "spectrum"


def console(*args, cwd=None, env=None, timeout=120):
    """The installed console script in a subprocess."""
    full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80", **(env or {})}
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def evil_folder(root: Path, config: str = "spectrum.toml") -> Path:
    """A downloaded-looking folder: a checkpoint, evil.py and a config naming it."""
    folder = root / "download"
    folder.mkdir()
    shutil.copy(SAMPLE / "checkpoint.pt", folder / "checkpoint.pt")
    marker = folder / "MARKER"
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from spectrum_cli.examples import tiny_mlp as build, tiny_regression as data\n")
    body = 'model = "evil:build"\ndata = "evil:data"\n'
    if config == "pyproject.toml":
        body = "[tool.spectrum]\n" + body
    (folder / config).write_text(body)
    return folder


@pytest.mark.parametrize("config", ["spectrum.toml", "pyproject.toml"])
def test_config_naming_code_is_refused_without_consent(tmp_path, config):
    folder = evil_folder(tmp_path, config)
    for cwd in (tmp_path, folder):  # from outside and from inside the folder
        r = console("analyze", folder / "checkpoint.pt", cwd=cwd)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert f"spectrum trust {folder / config}" in r.stderr
        assert "nothing was imported" in r.stderr
        assert not (folder / "MARKER").exists()
    r = run_cli("batch", folder, "--no-cache")
    assert r.exit_code == 2 and not (folder / "MARKER").exists()


def test_trust_records_content_and_an_edit_withdraws_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    folder = evil_folder(tmp_path)
    toml = folder / "spectrum.toml"
    r = run_cli("trust", toml)
    assert r.exit_code == 0, r.output
    assert "model = 'evil:build'" in r.stderr
    monkeypatch.chdir(folder)  # usercode puts the working directory on sys.path
    r = run_cli("analyze", folder / "checkpoint.pt", "--json")
    assert r.exit_code == 0, r.stderr
    assert (folder / "MARKER").exists()  # consent given: the user's code ran
    (folder / "MARKER").unlink()
    toml.write_text(toml.read_text() + "# edited\n")
    r = run_cli("analyze", folder / "checkpoint.pt")
    assert r.exit_code == 2 and "spectrum trust" in r.stderr
    r = run_cli("trust", "--list")
    assert "changed since" in r.stdout
    assert run_cli("trust", "--revoke", toml).exit_code == 0
    assert str(toml.resolve()) not in run_cli("trust", "--list").stdout


def test_names_on_the_command_line_are_consent(tmp_path):
    folder = evil_folder(tmp_path)
    (folder / "spectrum.toml").write_text('loss = "mse"\n')  # names no code: fine as data
    r = run_cli("analyze", folder / "checkpoint.pt", "--json",
                "--model", "spectrum_cli.examples:tiny_mlp",
                "--data", "spectrum_cli.examples:tiny_regression")
    assert r.exit_code == 0, r.stderr
    assert not (folder / "MARKER").exists()


USAGE = [
    ["analyze"],
    ["analyze", "x", "--top", "0"],
    ["analyze", "x", "--top", "abc"],
    ["analyze", "--bogus", "x"],
    ["no-such-command"],
    ["batch"],
    ["report", "show"],
    ["diff", "only-one"],
]


@pytest.mark.parametrize("argv", USAGE, ids=" ".join)
def test_usage_errors_exit_2_through_the_console_script(argv):
    r = console(*argv)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert "Usage:" in r.stderr or "Try 'spectrum" in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("argv", USAGE[:4], ids=" ".join)
def test_usage_errors_exit_2_through_clirunner(argv):
    r = run_cli(*argv)
    assert r.exit_code == 2


@pytest.mark.parametrize("body, needle", [
    ("square_max_dim = 1e400\n", "square_max_dim"),
    ("seed = 2.5\n", "seed"),
    ("effective_rank_tau = inf\n", "effective_rank_tau"),
    ("tool = 5\n", "pyproject"),
    (b"loss = \"\xff\xfe\"\n", "UTF-8"),
    ("[[[\n", "TOML"),
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "TOML"),
])
def test_bad_configuration_values_are_input_errors(tmp_path, body, needle):
    name = "pyproject.toml" if "tool =" in str(body) else "spectrum.toml"
    conf = tmp_path / name
    conf.write_bytes(body if isinstance(body, bytes) else body.encode())
    shutil.copy(SAMPLE / "weights.npz", tmp_path / "weights.npz")
    before = conf.read_bytes()
    r = console("analyze", tmp_path / "weights.npz")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert needle in r.stderr and str(conf) in r.stderr
    assert conf.read_bytes() == before


def test_bad_environment_value_is_an_input_error():
    r = console("analyze", SAMPLE / "weights.npz", env={"SPECTRUM_SQUARE_MAX_DIM": "1e400"})
    assert r.returncode == 2 and "SPECTRUM" in r.stderr and "Traceback" not in r.stderr


def test_native_writes_to_fd1_never_reach_stdout(tmp_path):
    """What a C library writes to descriptor 1 lands on stderr; the document stays whole."""
    code = ("import os, sys\n"
            "from spectrum_cli.cli.console import reserved_stdout\n"
            "with reserved_stdout():\n"
            "    os.write(1, b'On entry to DLASCL parameter number 4\\n')\n"
            "    print('{\"doc\": 1}')\n"
            "print('after')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout == '{"doc": 1}\nafter\n'
    assert "DLASCL" in r.stderr


_ENTRY_MAIN = re.compile(r'File "[^"]*cli[/\\]entry\.py", line \d+, in main\b')


def _before_main(err: str) -> bool:
    """A traceback raised before spectrum's entry point ran (no frame of entry.main)."""
    return "Traceback" in err and not _ENTRY_MAIN.search(err)


def test_an_interrupt_in_the_editable_finder_is_not_spectrums():
    """The flaky case: an editable install's finder has "spectrum_cli" in its path."""
    site = ('Traceback (most recent call last):\n'
            '  File "/v/lib/python3.11/site-packages/__editable___spectrum_cli_0_1_0_finder.py",'
            ' line 9, in <module>\nKeyboardInterrupt\n')
    wrapper = ('Traceback (most recent call last):\n  File "/v/bin/spectrum", line 5, in '
               '<module>\n  File "/src/spectrum_cli/__init__.py", line 9, in <module>\n'
               'KeyboardInterrupt\n')
    ours = ('Traceback (most recent call last):\n  File "/src/spectrum_cli/cli/entry.py", '
            'line 18, in main\n  File "/src/spectrum_cli/cli/app.py", line 3, in run\n'
            'ValueError: x\n')
    assert _before_main(site) and _before_main(wrapper)
    assert not _before_main(ours) and not _before_main("spectrum: interrupted\n")


def test_sigint_while_starting_prints_no_traceback():
    """Ctrl-C at any moment once spectrum's own code runs: exit 130, one line, no
    traceback. Before that (the interpreter's startup, the console-script wrapper's import
    line) nothing of spectrum's can act, and Python prints its own traceback there.

    "Spectrum's code runs" means :func:`spectrum_cli.cli.entry.main` was entered: a
    traceback without a frame of it was raised before (the wrapper's import line, which
    also runs ``spectrum_cli/__init__.py`` and, in an editable install, a finder whose
    path holds "spectrum_cli"), so it is not spectrum's. The delays grow until one
    interrupt reached spectrum's handler, however slow the machine."""
    handled = False
    for delay in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
        if delay > 2.0 and handled:
            break  # the longer delays only for a machine too slow to reach main() before
        p = subprocess.Popen([str(SCRIPT), "analyze", str(SAMPLE / "checkpoint.pt")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "NO_COLOR": "1"})
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        if _before_main(err):
            continue  # interrupted before main() was entered
        assert "Traceback" not in err, (delay, err)
        assert p.returncode in (130, -signal.SIGINT, 0, 2), (delay, p.returncode, err)
        handled = handled or p.returncode == 130
    assert handled  # at least one interrupt reached spectrum's own handler


@pytest.mark.parametrize("command", ["analyze", "batch", "diff", "model", "pseudospectrum",
                                     "allocate", "backends", "trust"])
def test_every_option_has_help_and_no_bool_tag(command):
    """Issue 10 item 19: every option says what it does; flags carry no <bool> tag."""
    import typer.main

    from spectrum_cli.cli.app import app

    group = typer.main.get_command(app)
    cmd = group.commands[command]
    for param in cmd.params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), (command, param.name)
    out = run_cli(command, "--help", env={"COLUMNS": "200"}).stdout
    assert "<bool>" not in out


def test_batch_takes_the_selection_and_numerics_options_of_analyze():
    from spectrum_cli.settings import NUMERICS, OPTIM, SELECT, SETTINGS

    out = run_cli("batch", "--help", env={"COLUMNS": "200"}).stdout
    for s in SETTINGS:
        if s.panel in (SELECT, NUMERICS, OPTIM):
            assert s.flag in out, s.flag


def test_trust_of_several_files_trusts_every_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    tomls = []
    for i in range(3):
        f = tmp_path / f"p{i}" / "spectrum.toml"
        f.parent.mkdir()
        f.write_text(f'model = "m{i}:build"\n')
        tomls.append(f)
    r = run_cli("trust", *tomls)
    assert r.exit_code == 0, r.output
    listed = run_cli("trust", "--list", env={"COLUMNS": "1000"}).stdout  # no wrapping
    for f in tomls:
        assert str(f.resolve()) in listed


# ---- issue 26: a scheduler is code; the working directory is not searched first --------

@pytest.mark.parametrize("key", ["scheduler", "scheduler_file"])
def test_scheduler_from_a_file_needs_consent_and_the_user_s_own_does_not(tmp_path,
                                                                         monkeypatch, key):
    from spectrum_cli import config
    from spectrum_cli.core.errors import UsageError

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "download"
    folder.mkdir()
    toml = folder / "spectrum.toml"
    toml.write_text(f'{key.replace("_", "-")} = "tcp://198.51.100.7:8786"\n')
    with pytest.raises(UsageError, match=r"names a Dask scheduler .* nothing was "
                                         r"contacted") as err:
        config.resolve({}, environ={}, near=folder)
    assert f"spectrum trust {toml}" in str(err.value)
    # the command line and the user's shell are the user's own: no consent needed
    flag_value = "tcp://127.0.0.1:8786"
    assert config.resolve({key: flag_value}, environ={}, near=folder).values[key] == \
        flag_value
    cfg = config.resolve({}, environ={f"SPECTRUM_{key.upper()}": flag_value}, near=folder)
    assert cfg.values[key] == flag_value and cfg.origins[key] == f"SPECTRUM_{key.upper()}"
    # a file the user trusted may name one (the same consent as for model/data/loss)
    r = run_cli("trust", toml)
    assert r.exit_code == 0 and key.replace("_", "-") in r.stderr
    assert config.resolve({}, environ={}, near=folder).values[key] == \
        "tcp://198.51.100.7:8786"
    toml.write_text(toml.read_text() + "# edited\n")  # any edit withdraws it
    with pytest.raises(UsageError, match="names a Dask scheduler"):
        config.resolve({}, environ={}, near=folder)


def test_user_modules_are_found_after_installed_packages_and_only_while_they_run(
        tmp_path, monkeypatch):
    from spectrum_cli.io.usercode import load_callable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "json.py").write_text("raise SystemExit('planted json ran')\n")
    (tmp_path / "usermod_26.py").write_text(
        "import sys, os, json\n"
        "def where():\n"
        "    import usersib_26\n"
        "    return json.__file__, usersib_26.VALUE, os.getcwd() in sys.path\n")
    (tmp_path / "usersib_26.py").write_text("VALUE = 26\n")
    before = list(sys.path)
    monkeypatch.delitem(sys.modules, "json", raising=False)  # re-resolved on import
    fn = load_callable("usermod_26:where", "--model")
    assert sys.path == before  # nothing left behind for spectrum's own later imports
    json_file, value, on_path = fn()  # a sibling imported lazily is still found
    assert value == 26 and on_path
    assert Path(json_file).parent != tmp_path  # the installed json, not ./json.py
    assert sys.path == before
