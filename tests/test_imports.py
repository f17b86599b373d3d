"""`spectrum --help` must stay light: no torch, scipy or h5py at import time."""

import subprocess
import sys

HEAVY = ("torch", "scipy", "h5py", "safetensors", "matplotlib")


def test_help_imports_nothing_heavy():
    code = ("import sys; sys.argv=['spectrum','--help']\n"
            "from spectrum_cli.cli.app import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_safetensors_analysis_does_not_import_torch(tmp_path):
    import numpy as np

    np.save(tmp_path / "w.npy", np.eye(3))
    code = ("import sys\nfrom spectrum_cli.io import open_source\n"
            "from spectrum_cli.core.analyze import AnalyzeOptions, analyze_source\n"
            "from spectrum_cli.core.results import SourceInfo\n"
            f"s = open_source({str(tmp_path / 'w.npy')!r})\n"
            "from spectrum_cli.plugins import get_backend\n"
            "analyze_source(s, SourceInfo('w', 'npy', (), 0, None), AnalyzeOptions(), get_backend)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_backend_is_registered_as_an_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group="spectrum.backends")}
    assert eps["dense"].value == "spectrum_backends.dense:DenseBackend"
    assert eps["dense"].load().name == "dense"
