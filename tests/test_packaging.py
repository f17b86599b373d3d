"""What users install: the built wheel holds every module of the source tree.

A hand-written package list once left ``spectrum_cli.integrations`` out of the wheel
(``pip install spectrum-cli[hf]`` had no callbacks). ``.ci/check_wheel`` goes further: it
installs the wheel with ``[hf]`` into a fresh venv, imports every module and runs the
console script.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(folder: Path, package: str) -> set[str]:
    return {f"{package}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.py")
            if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tree (a build in the checkout would leave a
    ``build/`` and an ``.egg-info`` there, whose metadata shadows the installed one)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("spectrum_cli", "backends"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (built,) = out.glob("spectrum_cli-*.whl")
    return built


def test_the_wheel_holds_every_module_of_the_tree(wheel):
    expected = _modules(ROOT / "spectrum_cli", "spectrum_cli")
    expected |= _modules(ROOT / "backends", "spectrum_backends")
    with zipfile.ZipFile(wheel) as z:
        held = {n for n in z.namelist() if n.endswith(".py")}
    assert "spectrum_cli/integrations/huggingface.py" in held
    assert expected - held == set()
    assert held - expected == set()


def test_the_wheel_declares_the_console_script_and_the_plugin_groups(wheel):
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith("entry_points.txt")]
        text = z.read(name).decode()
    assert "spectrum = spectrum_cli.cli.entry:main" in text
    for group in ("spectrum.readers", "spectrum.backends", "spectrum.metrics",
                  "spectrum.optimizers", "spectrum.executors"):
        assert f"[{group}]" in text
