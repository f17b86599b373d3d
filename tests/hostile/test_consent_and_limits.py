"""Issue 26: code that runs without consent, and settings that hang or crash.

Each case runs the installed console script (or ``python -m spectrum_cli``) in a
subprocess with a deadline: exit code per contract, no traceback, the message names the
file and the setting, and nothing a stranger wrote runs (no marker file, no connection
to the stranger's "scheduler").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

SPECTRUM = Path(sys.executable).parent / "spectrum"
SAMPLE = Path(__file__).resolve().parents[2] / "sample_checkpoints" / "tiny-mlp"
DEADLINE = 90  # seconds: a hang fails the test instead of stalling the suite


def spectrum(*args: object, cwd: Path, env: dict[str, str] | None = None,
             module: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "spectrum_cli"] if module else [str(SPECTRUM)]
    full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    full.pop("PYTHONPATH", None)
    r = subprocess.run([*argv, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       env=full, timeout=DEADLINE)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    return r


def refused(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)


class Listener:
    """A TCP port on 127.0.0.1 that records whether anything connected to it (what a
    stranger's Dask scheduler would be)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener():
    lis = Listener()
    yield lis
    lis.close()


@pytest.fixture
def download(tmp_path):
    """A downloaded-looking checkpoint folder."""
    folder = tmp_path / "download"
    folder.mkdir()
    shutil.copy(SAMPLE / "checkpoint.pt", folder / "checkpoint.pt")
    return folder


@pytest.fixture
def xdg(tmp_path):
    """An empty consent store: nothing is trusted."""
    return {"XDG_DATA_HOME": str(tmp_path / "xdg")}


# ---- a scheduler is code: refused from a checkpoint folder's configuration -----------

@pytest.mark.parametrize("config", ["spectrum.toml", "pyproject.toml"])
@pytest.mark.parametrize("key", ["scheduler", "scheduler-file"])
def test_scheduler_named_by_a_checkpoint_folder_config_is_refused(download, listener, xdg,
                                                                  config, key):
    address = f"tcp://127.0.0.1:{listener.port}"
    if key == "scheduler-file":
        (download / "scheduler.json").write_text(
            '{"type": "Scheduler", "address": "%s", "workers": {}}' % address)
        value = str(download / "scheduler.json")
    else:
        value = address
    body = f'{key} = "{value}"\n'
    (download / config).write_text(body if config == "spectrum.toml"
                                   else "[tool.spectrum]\n" + body)
    r = spectrum("analyze", download / "checkpoint.pt", cwd=download.parent, env=xdg)
    refused(r, str(download / config), "scheduler", f"spectrum trust {download / config}")
    assert listener.connections == 0  # nothing was contacted


def test_scheduler_from_batch_folder_config_is_refused(download, listener, xdg):
    (download / "spectrum.toml").write_text(
        f'scheduler = "tcp://127.0.0.1:{listener.port}"\nexecutor = "dask"\n')
    r = spectrum("batch", download, "--no-cache", cwd=download.parent, env=xdg)
    refused(r, str(download / "spectrum.toml"), "scheduler")
    assert listener.connections == 0


# ---- the working directory never shadows what spectrum imports -----------------------

EVIL_MODULES = ("h5py", "numpy", "scipy", "torch", "safetensors", "threadpoolctl", "rich",
                "typer", "tomli", "distributed", "matplotlib", "fsspec")


def plant(folder: Path) -> Path:
    """Modules named like spectrum's imports, each writing a marker when imported."""
    marker = folder / "MARKERS"
    for name in EVIL_MODULES:
        (folder / f"{name}.py").write_text(
            f"import pathlib\nwith open({str(marker)!r}, 'a') as fh:\n"
            f"    fh.write({name!r} + '\\n')\nraise ImportError('planted {name}')\n")
    return marker


@pytest.mark.parametrize("module", [False, True], ids=["console-script", "python-m"])
def test_modules_in_the_working_directory_do_not_run(tmp_path, module):
    """``--model``/``--data`` (the user's own code) and ``python -m`` used to put the
    working directory first on sys.path: ./h5py.py ran when the report was written."""
    here = tmp_path / "here"
    here.mkdir()
    shutil.copy(SAMPLE / "checkpoint.pt", here / "some.pt")
    marker = plant(here)
    # the whole pipeline (model, data, Hessian, operators, report) runs; --params keeps
    # the Hessian to the last layer's 33 parameters instead of all 1732
    r = spectrum("analyze", "some.pt", "--report", "r.h5",
                 "--model", "spectrum_cli.examples:tiny_mlp",
                 "--data", "spectrum_cli.examples:tiny_regression", "--params", "4.*",
                 cwd=here, module=module)
    assert not marker.exists(), marker.read_text()
    assert r.returncode == 0, r.stderr
    assert (here / "r.h5").is_file()


def test_the_users_own_module_in_the_working_directory_is_still_found(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    shutil.copy(SAMPLE / "checkpoint.pt", here / "some.pt")
    marker = plant(here)
    (here / "mynets.py").write_text(
        "import numpy  # the installed numpy, not ./numpy.py\n"
        "from spectrum_cli.examples import tiny_mlp as build, tiny_regression as data\n")
    r = spectrum("analyze", "some.pt", "--json", "--model", "mynets:build",
                 "--data", "mynets:data", "--params", "4.*", cwd=here)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), marker.read_text()
    assert '"operator"' in r.stdout or '"operators"' in r.stdout


# ---- patterns and numbers that would hang or crash ------------------------------------

def long_names_checkpoint(folder: Path) -> Path:
    path = folder / "names.npz"
    rng = np.random.default_rng(0)
    np.savez(path, **{"a" * 64 + "!": rng.standard_normal((6, 5)),
                      "w": rng.standard_normal((6, 5))})
    return path


@pytest.mark.parametrize("key", ["include", "exclude"])
def test_catastrophic_regex_from_config_ends_at_once(tmp_path, key):
    """``(a+)+$`` against 64 a's and a '!' backtracks 2^64 times in Python's re."""
    ckpt = long_names_checkpoint(tmp_path)
    (tmp_path / "spectrum.toml").write_text(f"{key} = ['re:(a+)+$', 're:^(a|aa)*$']\n")
    r = spectrum("analyze", ckpt, "--json", cwd=tmp_path)  # would hang before
    # neither pattern matches either name: include selects nothing (exit 5), exclude
    # keeps both (exit 0)
    assert r.returncode == (5 if key == "include" else 0), r.stderr


def test_regex_that_needs_backtracking_is_refused(tmp_path):
    ckpt = long_names_checkpoint(tmp_path)
    (tmp_path / "spectrum.toml").write_text('include = ["re:(a+)\\\\1$"]\n')  # TOML: (a+)\1$
    refused(spectrum("analyze", ckpt, cwd=tmp_path), str(tmp_path / "spectrum.toml"),
            "include", "backreferences")
    (tmp_path / "spectrum.toml").unlink()
    refused(spectrum("analyze", ckpt, "--exclude", "re:" + "a" * 2000, cwd=tmp_path),
            "--exclude", "at most 1024")


@pytest.mark.parametrize("body, needle", [
    ("power_max = 1000000000", "power_max: expected an integer from 1 to 10000, got 1000000000"),
    ("square_max_dim = 1e9", "square_max_dim: expected an integer from 0 to 16384"),
    ("max_memory = '1e400'", "max_memory: expected a size"),
    ("top_k = 123456789", "top_k: expected an integer from 1 to 4096"),
])
def test_out_of_range_settings_in_a_config_are_usage_errors(tmp_path, download, body,
                                                            needle):
    (download / "spectrum.toml").write_text(body + "\n")
    refused(spectrum("analyze", download / "checkpoint.pt", cwd=tmp_path),
            f"{download / 'spectrum.toml'}: {needle}")


@pytest.mark.parametrize("args, env, needle", [
    (["--max-memory", "1e400"], {}, "--max-memory: expected a size"),
    (["--power-max", "1000000000"], {}, "--power-max: expected an integer from 1 to 10000"),
    (["--effective-rank-tau", "inf"], {}, "--effective-rank-tau: expected a number"),
    ([], {"SPECTRUM_POWER_MAX": "1000000000"}, "SPECTRUM_POWER_MAX: expected an integer"),
    ([], {"SPECTRUM_MAX_MEMORY": "1e400"}, "SPECTRUM_MAX_MEMORY: expected a size"),
])
def test_out_of_range_settings_on_the_command_line_and_environment(download, args, env,
                                                                   needle):
    refused(spectrum("analyze", download / "checkpoint.pt", *args, cwd=download, env=env),
            needle)


def test_watch_poll_of_1e300_is_a_usage_error(download):
    refused(spectrum("watch", download, "--poll", "1e300", "--idle-timeout", "1",
                     cwd=download), "--poll: expected a number from 0.01 to 3600")
