"""The heavy frameworks stay optional: neither the CLI nor importing the integrations
package or the TensorBoard writer loads them until they are used."""

import ast
import subprocess
import sys

FRAMEWORKS = ("torch", "transformers", "lightning", "pytorch_lightning", "tensorboard",
              "tensorflow")


def loaded_after(code: str, cwd) -> list[str]:
    probe = f"\nimport sys\nprint(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True,
                         text=True, check=True, cwd=cwd).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


def test_help_imports_no_framework(tmp_path):
    code = ("import sys; sys.argv=['spectrum','--help']\n"
            "from spectrum_cli.cli.app import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass")
    assert loaded_after(code, tmp_path) == []


def test_the_console_script_help_imports_no_framework(tmp_path):
    import os
    import shutil

    exe = shutil.which("spectrum", path=os.path.dirname(sys.executable))
    assert exe, "the spectrum console script is not installed beside this python"
    code = ("import runpy, sys; sys.argv=[%r, '--help']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass"
            % (exe, exe))
    assert loaded_after(code, tmp_path) == []


def test_importing_the_integrations_and_the_writer_loads_nothing_heavy(tmp_path):
    code = ("import spectrum_cli.integrations, spectrum_cli.report.tensorboard\n"
            "from spectrum_cli.integrations import SpectrumMonitor, Measurement")
    assert loaded_after(code, tmp_path) == []
