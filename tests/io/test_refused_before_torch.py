"""A pickle naming a global that torch's weights-only load would refuse is refused from
the static scan alone, before torch is imported (a hostile file costs a fraction of a
second, not torch's import); anything the scan does not settle still goes to torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.hostile.make_cases import payload, pickle_of, torch_zip

PROBE = r"""
import json, sys
from spectrum_cli.core.errors import UnsafeCheckpointError
from spectrum_cli.io import open_source
from spectrum_cli.io.base import LoadPolicy
try:
    open_source(sys.argv[1], LoadPolicy())
    out = {"refused": None}
except UnsafeCheckpointError as exc:
    out = {"refused": exc.unsafe_globals}
out["torch"] = "torch" in sys.modules
print(json.dumps(out))
"""


def probe(path) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("kind,name", [("os_system", "os.system"), ("exec", "builtins.exec"),
                                       ("open", "builtins.open")])
def test_a_refused_global_is_refused_without_importing_torch(tmp_path, kind, name):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(torch_zip(pickle_of(payload(kind, tmp_path / "ran"))))
    out = probe(path)
    assert out == {"refused": [name], "torch": False}
    assert not (tmp_path / "ran").exists()


def test_what_torch_allows_still_loads_through_torch(tmp_path):
    import torch

    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2, 2), "n": {1, 2}}, path)  # builtins.set: torch allows it
    assert probe(path) == {"refused": None, "torch": True}


def test_python2_names_are_mapped_as_the_unpickler_maps_them():
    from spectrum_cli.io.torch_file import WEIGHTS_ONLY_NON_TORCH, _python3_name

    assert _python3_name("__builtin__.set") == "builtins.set" in WEIGHTS_ONLY_NON_TORCH
    assert _python3_name("copy_reg._reconstructor") == "copyreg._reconstructor"


def test_the_static_table_is_torchs_own():
    """Every global torch's weights-only unpickler accepts lies in ``torch.*`` or in
    :data:`WEIGHTS_ONLY_NON_TORCH`: a torch that allows another would be refused here
    first, and this test says so."""
    from torch._weights_only_unpickler import _get_allowed_globals

    from spectrum_cli.io.torch_file import WEIGHTS_ONLY_NON_TORCH

    outside = {g for g in _get_allowed_globals() if not g.startswith("torch.")}
    assert outside == set(WEIGHTS_ONLY_NON_TORCH)
