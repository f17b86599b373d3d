"""Hostile inputs to the readers and the report writers (issue 26), each through the
installed console script in a subprocess, in its own folder:

* memory: DCP metadata that amplifies (a shared sub-object nested 60 deep, whose repr
  or str is 2**60 characters; a path joined from one long string repeated; one chunk
  list shared by every entry; one byte range standing for any number of chunks), a
  torch tensor ``expand``-ed from a one-element storage, torch names joined from a long
  key shared by every level: the peak RSS of the process (``wait4``) stays under 1.5 GiB;
* crashes: a torch file named ``.safetensors``, steps that are negative or beyond int64
  and numbers too large for a float (torch, DCP, ``trainer_state.json``, a file name),
  file names that are not UTF-8 written into a report: exit 0 (valid but odd input) or
  2, never 3, never a traceback;
* escapes: a DCP ``.metadata`` or an HF folder's weights that are symlinks out of the
  folder are refused, naming the file.

A watchdog kills a child whose process tree passes 2 GiB or its time limit (so the old
code fails these tests instead of taking the machine down).
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.processes import REAPER
import torch

SPECTRUM = Path(sys.executable).parent / "spectrum"
RSS_LIMIT = int(1.5 * 2**30)
RSS_KILL = 2 * 2**30



@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    peak: int  # bytes
    killed: str | None


def _tree_rss(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError, IndexError):
            pass
    return total


def spectrum(*args: object, cwd: Path, timeout: float = 120) -> Run:
    """``spectrum *args`` with its peak RSS; killed past :data:`RSS_KILL` or ``timeout``."""
    home = cwd / ".home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
           "XDG_DATA_HOME": str(home / "data"), "NO_COLOR": "1", "COLUMNS": "200",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("SPECTRUM_DEBUG", None)
    rss_file = home / f"rss-{time.monotonic_ns()}"
    out, err = home / "out", home / "err"
    killed, watched = None, 0
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-c", REAPER, str(rss_file), str(SPECTRUM),
                                 *map(os.fsdecode, args)], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            watched = max(watched, _tree_rss(proc.pid))
            if watched > RSS_KILL:
                killed = "rss"
            elif time.monotonic() > deadline:
                killed = "timeout"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, _ = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        peak = int(rss_file.read_text())
    except (OSError, ValueError):
        peak = 0
    return Run(proc.returncode, out.read_text(errors="replace"),
               err.read_text(errors="replace"), max(peak, watched), killed)


def check(r: Run, rc: int, *fragments: str) -> None:
    """Exit ``rc`` within memory and time, no traceback, each fragment in stderr."""
    assert r.killed is None, (r.killed, r.peak >> 20, r.stderr[-2000:])
    assert r.rc == rc, (r.rc, r.stderr[-2000:])
    assert "Traceback" not in r.stdout + r.stderr
    assert r.peak < RSS_LIMIT, f"peak RSS {r.peak >> 20} MiB"
    for f in fragments:
        assert f in r.stderr, (f, r.stderr[-2000:])


# --------------------------------------------------------------------------- DCP


def dcp_folder(folder: Path, state: dict | None = None) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is a single process"
        dcp.save(state or {"model": {"w": torch.randn(8, 6)}}, checkpoint_id=str(folder))
    return folder


def rewrite(folder: Path, change) -> Path:
    """Load the (test-made) metadata with torch's classes, change it, pickle it back."""
    meta = pickle.loads((folder / ".metadata").read_bytes())
    change(meta)
    (folder / ".metadata").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


class Call:
    """Pickles as ``fn(*args)`` (a REDUCE of an admitted global)."""

    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def doubled(depth: int = 60) -> list:
    """A list whose repr is 2**depth items long, in a few hundred pickle bytes."""
    x: list = [0]
    for _ in range(depth):
        x = [x, x]
    return x


def _set_size(m) -> None:
    m.state_dict_metadata["model.w"].size = doubled()


def _set_offsets(m) -> None:
    m.state_dict_metadata["model.w"].chunks[0].offsets = doubled()


def _set_dtype(m) -> None:
    m.state_dict_metadata["model.w"].properties.dtype = doubled()


def _set_layout(m) -> None:
    import torch.serialization as ts

    m.state_dict_metadata["model.w"].properties.layout = Call(ts._get_layout, (doubled(),))


def _set_path(m) -> None:
    long = "a" * (1 << 20)
    for info in m.storage_data.values():
        info.relative_path = Call(pathlib.PurePosixPath, (long,) * 100_000)


def _set_checkpoint_id(m) -> None:
    from torch.distributed.checkpoint.metadata import StorageMeta

    m.storage_meta = StorageMeta(checkpoint_id=Call(pathlib.PurePosixPath,
                                                    ("a" * (1 << 20),) * 100_000))


def _set_transforms(m) -> None:
    for info in m.storage_data.values():
        info.transform_descriptors = [doubled()]


def _shared_chunks(m) -> None:
    """20,000 entries, each with its own (empty) storage entry, all sharing one list of
    100,000 chunks: 2e9 chunks to place."""
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex,
                                                       TensorStorageMetadata)

    info = next(iter(m.storage_data.values()))
    info.length = 0
    props = m.state_dict_metadata["model.w"].properties
    chunks = [ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([0]))] * 100_000
    m.state_dict_metadata = {f"t{i}": TensorStorageMetadata(props, torch.Size([0]), chunks)
                             for i in range(20_000)}
    m.storage_data = {MetadataIndex(fqn=f"t{i}", offset=torch.Size([0])): info
                      for i in range(20_000)}


AMPLIFYING = {
    "shape nested 60 deep": (_set_size, "size"),
    "chunk offsets nested 60 deep": (_set_offsets, "offsets"),
    "dtype nested 60 deep": (_set_dtype, "dtype"),
    "layout of a list nested 60 deep": (_set_layout, "_get_layout"),
    "storage path joined from a shared 1 MiB string": (_set_path, "path"),
    "checkpoint_id joined from a shared 1 MiB string": (_set_checkpoint_id, "path"),
    "transform descriptors nested 60 deep": (_set_transforms, "transform"),
    "one chunk list shared by 20k entries": (_shared_chunks, "two chunks"),
}


@pytest.mark.parametrize("case", sorted(AMPLIFYING))
def test_dcp_metadata_that_amplifies_is_refused_in_bounded_memory(tmp_path, case):
    change, fragment = AMPLIFYING[case]
    folder = rewrite(dcp_folder(tmp_path / "ckpt"), change)
    assert (folder / ".metadata").stat().st_size < 10 << 20
    r = spectrum("analyze", folder, cwd=tmp_path, timeout=90)
    check(r, 2, "ckpt/.metadata", fragment)
    assert len(r.stderr) < 20_000  # the message shows a bounded repr, not the value


def test_dcp_chunks_sharing_one_byte_range_are_refused(tmp_path):
    """300 chunks of one 4 MB piece would place a 2.4 GB float64 tensor."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    folder = dcp_folder(tmp_path / "ckpt", {"model": {"w": torch.randn(1000, 1000)}})

    def change(m) -> None:
        t = m.state_dict_metadata["model.w"]
        info = next(v for k, v in m.storage_data.items() if k.fqn == "model.w")
        t.size = torch.Size([300_000, 1000])
        t.chunks = [ChunkStorageMetadata(offsets=torch.Size([1000 * i, 0]),
                                         sizes=torch.Size([1000, 1000])) for i in range(300)]
        m.storage_data.update({MetadataIndex(fqn="model.w", offset=torch.Size([1000 * i, 0])):
                               info for i in range(300)})

    rewrite(folder, change)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 10 << 20
    check(spectrum("analyze", folder, cwd=tmp_path, timeout=90), 2, "share bytes",
          "ckpt/__0_0.distcp")


@pytest.mark.parametrize("step", [10**400, -7, 10**30, 1e300])
def test_dcp_step_out_of_range_is_left_out(tmp_path, step):
    folder = dcp_folder(tmp_path / "ckpt", {"model": {"w": torch.randn(8, 6)}, "step": step,
                                            "loss": 10**400})
    r = spectrum("analyze", folder, "--json", cwd=tmp_path)
    check(r, 0)
    assert "step" not in json.loads(r.stdout).get("checkpoint", {})


def test_dcp_metadata_symlinked_out_of_the_folder_is_refused(tmp_path):
    folder = dcp_folder(tmp_path / "ckpt")
    outside = tmp_path / "elsewhere.metadata"
    (folder / ".metadata").rename(outside)
    (folder / ".metadata").symlink_to(outside)
    check(spectrum("analyze", folder, cwd=tmp_path), 2, "ckpt/.metadata",
          "outside the checkpoint folder")


# --------------------------------------------------------------------------- torch


def test_expanded_tensor_is_not_materialized(tmp_path):
    torch.save({"w": torch.randn(1).expand(20_000, 20_000), "v": torch.randn(8, 6)},
               tmp_path / "x.pt")
    r = spectrum("analyze", "x.pt", cwd=tmp_path)
    check(r, 2, "x.pt", "expanded")


def test_overlapping_strides_are_not_materialized(tmp_path):
    torch.save({"w": torch.randn(60_000).as_strided((30_000, 30_000), (1, 1))}, tmp_path / "x.pt")
    check(spectrum("analyze", "x.pt", cwd=tmp_path), 2, "x.pt", "overlapping")


def test_long_shared_key_at_every_level_is_refused(tmp_path):
    """90 levels keyed by one 1 MiB string (memoized once): every name ~90 MB."""
    key = "k" * (1 << 20)
    node: dict = {"w": [torch.randn(4, 3)] * 1000}
    for _ in range(90):
        node = {key: node}
    torch.save(node, tmp_path / "x.pt")
    assert (tmp_path / "x.pt").stat().st_size < 10 << 20
    check(spectrum("analyze", "x.pt", cwd=tmp_path, timeout=90), 2, "x.pt", "names longer")


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_file_named_safetensors(tmp_path, legacy):
    torch.save({"w": torch.randn(8, 6)}, tmp_path / "m.safetensors",
               _use_new_zipfile_serialization=not legacy)
    r = spectrum("analyze", "m.safetensors", "--json", cwd=tmp_path)
    check(r, 0)
    assert json.loads(r.stdout)["summary"]["analysed"] == 1


@pytest.mark.parametrize("step", [-5, 10**30, 1e300, 10**400])
def test_torch_step_and_loss_out_of_range_are_left_out(tmp_path, step):
    torch.save({"model": {"w": torch.randn(8, 6)}, "step": step, "loss": 10**400},
               tmp_path / "x.pt")
    r = spectrum("analyze", "x.pt", "--json", cwd=tmp_path)
    check(r, 0)
    assert json.loads(r.stdout).get("checkpoint", {}) == {}


# --------------------------------------------------------------------------- reports


BAD = b"bad\xffname"


@pytest.mark.parametrize("kind", ["npy", "pt"])
def test_name_that_is_not_utf8_in_a_report(tmp_path, kind):
    name = BAD + b"." + kind.encode()
    if kind == "npy":
        np.save(os.fsdecode(bytes(tmp_path) + b"/" + name), np.random.randn(8, 6))
    else:
        torch.save({"w": torch.randn(8, 6)}, os.fsdecode(bytes(tmp_path) + b"/" + name))
    r = spectrum("analyze", os.fsdecode(name), "--report", "r.h5", cwd=tmp_path)
    check(r, 0)
    shown = spectrum("report", "show", "r.h5", "--json", cwd=tmp_path)
    check(shown, 0)
    assert json.loads(shown.stdout)["source"]["path"] == "bad\\xffname." + kind


def test_steps_beyond_int64_and_negative_in_a_batch(tmp_path):
    """A file name's step beyond int64 (trajectory HDF5, TensorBoard) and a negative
    ``global_step`` in trainer_state.json (TensorBoard): events for steps an event
    cannot hold are left out; the run succeeds."""
    pytest.importorskip("tensorboard")
    from safetensors.numpy import save_file

    run = tmp_path / "run"
    run.mkdir()
    save_file({"w": np.random.randn(8, 6)}, str(run / "step-1.safetensors"))
    save_file({"w": np.random.randn(8, 6)}, str(run / f"step-{10**25}.safetensors"))
    r = spectrum("batch", run, "--no-progress", "--no-cache", "--report", "t.h5",
                 "--tensorboard", "tb", cwd=tmp_path)
    check(r, 0)

    hf = tmp_path / "hf"
    (hf / "checkpoint-5").mkdir(parents=True)
    save_file({"w": np.random.randn(8, 6)}, str(hf / "checkpoint-5" / "model.safetensors"))
    (hf / "checkpoint-5" / "trainer_state.json").write_text(
        json.dumps({"global_step": -5, "log_history": []}))
    r = spectrum("batch", hf, "--no-progress", "--no-cache", "--tensorboard", "tb2",
                 cwd=tmp_path)
    check(r, 0)


def test_hf_folder_weights_symlinked_out_of_the_folder_are_refused(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.random.randn(8, 6)}, str(tmp_path / "elsewhere.safetensors"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    check(spectrum("analyze", folder, cwd=tmp_path), 2, "model/model.safetensors",
          "outside its folder")


def test_hf_folder_weights_symlinked_to_proc_are_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to("/proc/self/pagemap")
    check(spectrum("analyze", folder, cwd=tmp_path, timeout=60), 2,
          "model/model.safetensors", "outside its folder")


def test_torch_zip_with_a_deflated_bomb_is_refused(tmp_path):
    """A torch zip whose data.pkl is deflated: ~2 MB on disk, 2 GiB inflated (torch reads
    data.pkl whole into memory)."""
    import io
    import struct
    import zipfile
    import zlib

    from tests.hostile.make_cases import _zero_block, _zeros_crc

    buf = io.BytesIO()
    torch.save({"w": torch.randn(8, 6)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    n_mib = 2048
    out = io.BytesIO()
    central = []
    for name, data in members:
        offset, raw = out.tell(), name.encode()
        if name.endswith("data.pkl"):
            co = zlib.compressobj(9, zlib.DEFLATED, -15)
            head_c = co.compress(data) + co.flush(zlib.Z_FULL_FLUSH)
            block, _, final = _zero_block()
            body = head_c + block * n_mib + final
            method, usize, crc = 8, len(data) + n_mib * (1 << 20), _zeros_crc(n_mib, data)
        else:
            body, method, usize, crc = data, 0, len(data), zlib.crc32(data)
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc,
                              len(body), usize, len(raw), 0) + raw + body)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0,
                                   0x21, crc, len(body), usize, len(raw), 0, 0, 0, 0,
                                   0o644 << 16, offset) + raw)
    cd_off = out.tell()
    cd = b"".join(central)
    out.write(cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central),
                               len(cd), cd_off, 0))
    (tmp_path / "bomb.pt").write_bytes(out.getvalue())
    assert (tmp_path / "bomb.pt").stat().st_size < 10 << 20
    check(spectrum("analyze", "bomb.pt", cwd=tmp_path, timeout=90), 2, "bomb.pt",
          "zip bomb")
