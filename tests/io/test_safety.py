"""Unsafe pickles are refused, nothing in them runs, and only the command line can opt in."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from spectrum_cli.core.errors import ExitCode, UnsafeCheckpointError
from spectrum_cli.io import LoadPolicy, open_source
from tests.helpers import run_cli


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious(tmp_path, how: str):
    marker = tmp_path / "PWNED"
    obj = {"w": torch.randn(3, 3), "evil": Payload(str(marker))}
    path = tmp_path / "evil.pt"
    if how == "zip":
        torch.save(obj, path)
    elif how == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=4)
    return path, marker


@pytest.mark.parametrize("how", ["zip", "legacy", "raw-pickle"])
def test_code_running_pickle_is_refused_and_nothing_runs(tmp_path, how):
    path, marker = malicious(tmp_path, how)
    with pytest.raises(UnsafeCheckpointError) as info:
        open_source(str(path))
    assert "posix.system" in info.value.unsafe_globals or "os.system" in str(info.value)
    assert not marker.exists()


def test_cli_refusal_lists_globals_and_exits_2(tmp_path):
    path, marker = malicious(tmp_path, "zip")
    result = run_cli("analyze", path)
    assert result.exit_code == ExitCode.USAGE_OR_INPUT_ERROR == 2
    assert "posix.system" in result.stderr and "--allow-global" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not marker.exists()


def test_allow_global_admits_exactly_what_is_named(tmp_path):
    path = tmp_path / "hp.ckpt"
    torch.save({"state_dict": {"w": torch.randn(4, 4)},
                "hyper_parameters": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        open_source(str(path))
    src = open_source(str(path), LoadPolicy(allow_globals=("argparse.Namespace",)))
    assert [i.name for i in src.entries()] == ["w"]
    assert run_cli("analyze", path).exit_code == 2
    ok = run_cli("analyze", path, "--allow-global", "argparse.Namespace")
    assert ok.exit_code == 0, ok.stderr
    assert run_cli("analyze", path, "--allow-global", "nosuchmod.X").exit_code == 2


def test_trust_checkpoint_loads_everything(tmp_path):
    path = tmp_path / "hp.ckpt"
    torch.save({"state_dict": {"w": torch.randn(4, 4)},
                "hyper_parameters": argparse.Namespace(lr=0.1)}, path)
    result = run_cli("analyze", path, "--trust-checkpoint")
    assert result.exit_code == 0
    assert "runs code from the file" in result.stderr


@pytest.mark.parametrize("where", ["pyproject", "spectrum.toml", "env"])
def test_configuration_can_never_enable_unsafe_loading(tmp_path, where):
    path, marker = malicious(tmp_path, "zip")
    env = {}
    if where == "pyproject":
        open("pyproject.toml", "w").write("[tool.spectrum]\ntrust_checkpoint = true\n")
    elif where == "spectrum.toml":
        open("spectrum.toml", "w").write('allow-global = ["posix.system"]\n')
    else:
        env = {"SPECTRUM_TRUST_CHECKPOINT": "1"}
    result = run_cli("analyze", path, env=env)
    assert result.exit_code == 2
    assert "only enabled from the command line" in result.stderr
    assert not marker.exists()


def test_kernel_files_that_stat_as_regular_are_refused(tmp_path):
    """/proc/self/pagemap stats as a regular file and reads for ever (a hang of batch's
    content hash): refused by where it really lives, before a byte is read."""
    from spectrum_cli.core.errors import InputError
    from spectrum_cli.io.base import require_regular, sha256_files

    link = tmp_path / "w.npy"
    link.symlink_to("/proc/self/pagemap")
    for call in (require_regular, lambda p: sha256_files((p,))):
        with pytest.raises(InputError, match="proc"):
            call(str(link))


def test_the_content_hash_reads_what_the_size_says(tmp_path):
    import hashlib

    from spectrum_cli.io.base import sha256_files

    f = tmp_path / "w.bin"
    f.write_bytes(bytes(range(256)) * 9000)  # more than one 1 MiB read
    assert sha256_files((str(f),)) == hashlib.sha256(f.read_bytes()).hexdigest()
