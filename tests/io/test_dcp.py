"""torch.distributed.checkpoint folders (issue 12, item 4): read as DCP itself writes
them, values exact, metadata never unpickled beyond DCP's own classes, storage confined
to the folder, hostile files refused as input errors (exit 2) without hanging."""

from __future__ import annotations

import io
import json
import os
import pickle
import threading
import warnings
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties,
                                                   TensorStorageMetadata)

from spectrum_cli import plugins
from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.io import LoadPolicy, open_source
from spectrum_cli.io import dcp_metadata
from spectrum_cli.io.base import Probe
from spectrum_cli.io.dcp_file import DCPReader, DCPSource
from spectrum_cli.io.dcp_metadata import ADMITTED
from tests.helpers import run_cli

READER = EntryPoint("torch-dcp", "spectrum_cli.io.dcp_file:DCPReader", "spectrum.readers")


@pytest.fixture(autouse=True)
def dcp_registered(monkeypatch):
    """The reader registered through the entry-point lookup the registry uses (as the
    pyproject line will do)."""
    real = plugins.entry_points

    def patched(group):
        return list(real(group=group)) + ([READER] if group == "spectrum.readers" else [])

    monkeypatch.setattr(plugins, "entry_points", patched)
    plugins.clear_cache()
    yield
    plugins.clear_cache()


def model_state() -> tuple[dict[str, torch.Tensor], dict]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 9), torch.nn.ReLU(), torch.nn.Linear(9, 7))
    net[2].to(torch.bfloat16)
    opt = torch.optim.Adam(net[0].parameters())
    net[0](torch.randn(3, 12)).sum().backward()
    opt.step()
    return net.state_dict(), opt.state_dict()


def save(state: dict, folder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed ... assuming a single process"
        dcp.save(state, checkpoint_id=str(folder))


@pytest.fixture
def ckpt(tmp_path):
    """A DCP training checkpoint: model, optimizer, a step and a string; the weights."""
    weights, opt = model_state()
    folder = tmp_path / "ckpt"
    save({"model": weights, "optim": opt, "step": 42, "extra": {"tag": "x"}}, folder)
    return folder, weights


def refused(path, *fragments: str) -> InputError:
    """Opening and reading every tensor fails with an InputError carrying fragments."""
    with pytest.raises(InputError) as err:
        with open_source(str(path)) as src:
            for info in list(src.entries()):
                if info.skip is None:
                    src.read(info.name)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    return err.value


def rewrite_metadata(folder, change) -> None:
    """Load the (trusted, test-made) .metadata with torch's classes, change it, save it."""
    path = folder / ".metadata"
    meta = pickle.loads(path.read_bytes())
    change(meta)
    path.write_bytes(pickle.dumps(meta))


# --- values --------------------------------------------------------------------------


def test_values_equal_and_optimizer_skipped(ckpt):
    folder, weights = ckpt
    src = open_source(str(folder))
    assert isinstance(src, DCPSource) and src.format == "torch-dcp"
    infos = {i.name: i for i in src.entries()}
    for name, t in weights.items():
        assert infos[name].skip is None and infos[name].shape == tuple(t.shape)
        assert infos[name].dtype == str(t.dtype).removeprefix("torch.")
        got = src.read(name)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, t.to(torch.float64).numpy())
    assert {i.skip for n, i in infos.items() if n.startswith("optim.")} == {"optimizer state"}
    assert infos["step"].skip.startswith("non-tensor state")
    assert infos["extra.tag"].dtype == "bytes"
    assert any("'model.'" in n for n in src.notes), src.notes
    assert src.scalars() == {"step": 42}
    assert src.files[0].endswith(".metadata") and src.files[1].endswith(".distcp")


def test_top_level_state_dict_keeps_names(tmp_path):
    weights, _ = model_state()
    save(weights, tmp_path / "ck")
    src = open_source(str(tmp_path / "ck"))
    assert {i.name for i in src.entries() if i.skip is None} == set(weights)
    assert any("every tensor outside the optimizer state" in n for n in src.notes)


def test_weights_key_chooses_the_prefix(ckpt):
    folder, weights = ckpt
    src = open_source(str(folder), LoadPolicy(weights_key="optim"))
    assert all(i.skip for i in src.entries())  # optimizer state stays skipped
    with pytest.raises(UsageError, match="no such key"):
        open_source(str(folder), LoadPolicy(weights_key="nothing"))


@pytest.mark.parametrize("name", [".metadata", "__0_0.distcp"])
def test_a_file_of_the_checkpoint_opens_the_folder(ckpt, name):
    """Not the legacy-torch reader on the .metadata pickle, nor torch-zip on the
    concatenated torch.save chunks of a .distcp (it would read one chunk)."""
    folder, weights = ckpt
    src = open_source(str(folder / name))
    assert src.format == "torch-dcp" and src.path == str(folder)
    assert {i.name for i in src.entries() if i.skip is None} == set(weights)


def test_folder_without_metadata_is_not_claimed(tmp_path):
    assert not DCPReader().can_open(Probe(str(tmp_path), True))
    (tmp_path / ".metadata").write_text('{"json": "from another tool"}')
    assert not DCPReader().can_open(Probe(str(tmp_path), True))


def sharded_checkpoint(folder, full: torch.Tensor, splits: tuple[int, int]) -> None:
    """What N ranks of a 2-D sharded save write: a 2x2 grid of chunks, each
    ``torch.save``d into one of two .distcp files, and DCP's own Metadata."""
    folder.mkdir()
    r, c = splits
    chunks, storage, ends = [], {}, {"__0_0.distcp": 0, "__1_0.distcp": 0}
    for k, (r0, r1, c0, c1) in enumerate([(0, r, 0, c), (0, r, c, full.shape[1]),
                                          (r, full.shape[0], 0, c),
                                          (r, full.shape[0], c, full.shape[1])]):
        offsets, sizes = torch.Size([r0, c0]), torch.Size([r1 - r0, c1 - c0])
        buf = io.BytesIO()
        torch.save(full[r0:r1, c0:c1].clone(), buf)
        name = f"__{k % 2}_0.distcp"
        with open(folder / name, "ab") as fh:
            fh.write(buf.getvalue())
        storage[MetadataIndex("w", offsets, k)] = _StorageInfo(name, ends[name],
                                                               len(buf.getvalue()))
        ends[name] += len(buf.getvalue())
        chunks.append(ChunkStorageMetadata(offsets, sizes))
    meta = Metadata({"w": TensorStorageMetadata(TensorProperties(dtype=full.dtype),
                                                full.shape, chunks)}, storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(meta))


def test_sharded_chunks_assembled_by_offsets(tmp_path):
    full = torch.randn(10, 7, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    sharded_checkpoint(tmp_path / "ck", full, (4, 3))
    back = {"w": torch.zeros(10, 7, dtype=torch.bfloat16)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(back, checkpoint_id=str(tmp_path / "ck"))  # torch itself agrees
    assert torch.equal(back["w"], full)
    src = open_source(str(tmp_path / "ck"))
    np.testing.assert_array_equal(src.read("w"), full.to(torch.float64).numpy())


def test_overlapping_chunks_refused(tmp_path):
    full = torch.randn(6, 6)
    sharded_checkpoint(tmp_path / "ck", full, (3, 3))

    def overlap(meta):
        chunks = meta.state_dict_metadata["w"].chunks
        chunks[3] = ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([3, 3]))
        (index,) = [i for i in meta.storage_data if tuple(i.offset) == (3, 3)]
        meta.storage_data[MetadataIndex("w", torch.Size([0, 0]), 3)] = \
            meta.storage_data[index]
    rewrite_metadata(tmp_path / "ck", overlap)
    refused(tmp_path / "ck", "'w'")


# --- through the CLI -----------------------------------------------------------------


def test_cli_kappa_equals_safetensors(ckpt, tmp_path):
    folder, weights = ckpt
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "w.safetensors"))
    reports = []
    for path in (folder, tmp_path / "w.safetensors"):
        result = run_cli("analyze", str(path), "--json")
        assert result.exit_code == 0, (result.stdout, result.stderr)
        reports.append(json.loads(result.stdout))
    assert reports[0]["source"]["format"] == "torch-dcp"
    kappa = [{t["name"]: t["metrics"]["kappa"] for t in r["tensors"]} for r in reports]
    assert kappa[0] == kappa[1] and set(kappa[0]) == {"0.weight", "2.weight"}


# --- hostile -------------------------------------------------------------------------


class Evil:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_metadata_naming_os_system_refused(ckpt, tmp_path):
    folder, _ = ckpt
    marker = tmp_path / "pwned"
    rewrite_metadata(folder, lambda m: setattr(m, "storage_meta", Evil(marker)))
    err = refused(folder, ".metadata", "system", "Nothing from it was run")
    assert "posix.system" in str(err) or "os.system" in str(err)
    assert not marker.exists()
    result = run_cli("analyze", str(folder), "--json")
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr
    assert not marker.exists()


def test_restricted_unpickler_refuses_even_if_the_scan_misses(ckpt, tmp_path, monkeypatch):
    folder, _ = ckpt
    marker = tmp_path / "pwned"
    rewrite_metadata(folder, lambda m: setattr(m, "storage_meta", Evil(marker)))
    monkeypatch.setattr(dcp_metadata, "unsafe_globals", lambda data: [])
    refused(folder, ".metadata", "not a DCP metadata class")
    assert not marker.exists()


def test_admitted_globals_cover_what_torch_writes(ckpt):
    from spectrum_cli.io.pickle_scan import scan_pickles

    folder, _ = ckpt
    with open(folder / ".metadata", "rb") as fh:
        named = set(scan_pickles(fh, limit=1).globals)
    assert named and named <= set(ADMITTED)
    assert "torch.distributed.checkpoint.metadata.Metadata" in named


@pytest.mark.parametrize("where", ["../outside.distcp", "/tmp/abs.distcp", "symlink"])
def test_storage_path_escaping_the_folder_refused(ckpt, tmp_path, where):
    folder, _ = ckpt
    outside = tmp_path / "outside.distcp"
    outside.write_bytes((folder / "__0_0.distcp").read_bytes())
    if where == "symlink":
        os.symlink(outside, folder / "link.distcp")
        where = "link.distcp"

    def escape(meta):
        for info in meta.storage_data.values():
            info.relative_path = where
    rewrite_metadata(folder, escape)
    refused(folder, where, "refusing it")


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_distcp_is_input_error(ckpt, cut):
    folder, _ = ckpt
    data = (folder / "__0_0.distcp").read_bytes()
    (folder / "__0_0.distcp").write_bytes(data[:int(len(data) * cut)])
    refused(folder, "__0_0.distcp", "truncated")
    result = run_cli("analyze", str(folder))
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr


def test_garbled_chunk_is_input_error(ckpt):
    folder, _ = ckpt
    data = bytearray((folder / "__0_0.distcp").read_bytes())
    data[len(data) // 2:] = b"\x00" * (len(data) - len(data) // 2)
    (folder / "__0_0.distcp").write_bytes(bytes(data))
    refused(folder, "__0_0.distcp")


def test_chunk_needing_unsafe_globals_refused(tmp_path):
    """A .distcp range holding a pickle that asks for os.system: torch's weights-only
    unpickler refuses it and the message names the global."""
    full = torch.randn(4, 4)
    sharded_checkpoint(tmp_path / "ck", full, (2, 2))
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(Evil(marker), buf)
    with open(tmp_path / "ck" / "__0_0.distcp", "ab") as fh:
        start = fh.tell()
        fh.write(buf.getvalue())

    def point(meta):  # one chunk's bytes (two sharing a range are refused before)
        info = next(iter(meta.storage_data.values()))
        info.relative_path, info.offset, info.length = ("__0_0.distcp", start,
                                                        len(buf.getvalue()))
    rewrite_metadata(tmp_path / "ck", point)
    refused(tmp_path / "ck", "system", "weights-only")
    assert not marker.exists()


def in_thread(fn, timeout: float = 60.0):
    """Run ``fn`` in a daemon thread; fail (rather than hang the suite) if it blocks."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "blocked on a FIFO"
    return box


@pytest.mark.parametrize("name", ["__0_0.distcp", ".metadata"])
def test_fifo_is_refused_without_hanging(ckpt, name):
    folder, _ = ckpt
    os.remove(folder / name)
    os.mkfifo(folder / name)
    box = in_thread(lambda: refused(folder, name, "FIFO"))
    assert "error" not in box, box.get("error")


def test_hostile_structure_is_input_error(ckpt):
    folder, _ = ckpt
    rewrite_metadata(folder, lambda m: setattr(m, "state_dict_metadata", ["not", "a dict"]))
    refused(folder, "state_dict_metadata")


def test_oversized_metadata_refused(ckpt, monkeypatch):
    folder, _ = ckpt
    monkeypatch.setattr(dcp_metadata, "MAX_METADATA_BYTES", 100)
    refused(folder, ".metadata", "bytes of DCP metadata")


def test_shape_larger_than_stored_refused(ckpt):
    folder, _ = ckpt

    def grow(meta):
        item = meta.state_dict_metadata["model.0.weight"]
        item.size = torch.Size([10**6, 10**6])
        item.chunks = [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([10**6, 10**6]))]
        index = next(i for i in meta.storage_data if i.fqn == "model.0.weight")
        meta.storage_data[MetadataIndex("model.0.weight", torch.Size([0, 0]))] = \
            meta.storage_data.pop(index)
    rewrite_metadata(folder, grow)
    refused(folder, "'model.0.weight'", "truncated or corrupt")


def test_one_tensor_read_at_a_time(ckpt, monkeypatch):
    """Listing reads no tensor bytes; reading one tensor reads only its own chunks."""
    from spectrum_cli.io import dcp_file

    folder, _ = ckpt
    seen = []
    real = dcp_file.read_range
    monkeypatch.setattr(dcp_file, "read_range", lambda c: seen.append(c) or real(c))
    src = open_source(str(folder))
    list(src.entries())
    assert seen == []
    src.read("0.weight")
    assert len(seen) == 1 and seen[0].sizes == (9, 12)


def test_transformed_chunks_skipped_with_reason(ckpt):
    folder, _ = ckpt

    def compress(meta):
        for index, info in meta.storage_data.items():
            if index.fqn == "model.0.weight":
                info.transform_descriptors = ["zstd"]
    rewrite_metadata(folder, compress)
    infos = {i.name: i for i in open_source(str(folder)).entries()}
    assert "DCP transforms (zstd)" in infos["0.weight"].skip
    assert infos["2.weight"].skip is None


def test_stand_ins_are_fresh_per_load():
    """A BUILD aimed at an admitted object (here the dtype torch.float32) alters only
    that load's stand-in, never what the next file gets."""
    from spectrum_cli.io.dcp_metadata import MetadataUnpickler, stand_ins

    assert set(stand_ins()) == ADMITTED
    build = (b"\x80\x04ctorch\nfloat32\n}X\x04\x00\x00\x00nameX\x07\x00\x00\x00float64sb.")
    assert MetadataUnpickler(io.BytesIO(build)).load().name == "float64"
    assert MetadataUnpickler(io.BytesIO(b"\x80\x04ctorch\nfloat32\n.")).load().name == \
        "float32"


def test_batch_finds_dcp_folders_among_the_checkpoints(tmp_path):
    """A run folder of DCP checkpoints (what FSDP writes per step) is a trajectory."""
    import json

    from tests.helpers import run_cli

    run = tmp_path / "run"
    for step in (10, 20):
        weights, _ = model_state()
        save({"model": {k: v * (1 + step / 100) for k, v in weights.items()}},
             run / f"step_{step}")
    (run / "notes").mkdir()  # a folder that is no checkpoint is not one
    r = run_cli("batch", run, "--json", "--no-cache")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [c["step"] for c in doc["checkpoints"]] == [10, 20]
    assert all(c["status"] == "ok" for c in doc["checkpoints"])


def test_allocate_reads_a_dcp_folder_as_its_tensors(tmp_path):
    """``spectrum allocate`` on a DCP folder: the allocation of the same tensors saved
    as a .npz file."""
    from tests.helpers import run_cli

    rng = np.random.default_rng(25)
    state = {f"model.layers.{i}.{p}.weight": torch.from_numpy(
        rng.standard_normal((40, 24)) * (rng.pareto(1.5 + i, 24) + 1.0))
        for i in range(3) for p in ("self_attn.q_proj", "mlp.up_proj")}
    folder = tmp_path / "dcp"
    dcp.save(state, checkpoint_id=str(folder))
    np.savez(tmp_path / "same.npz", **{k: v.numpy() for k, v in state.items()})
    docs = []
    for source in (folder, tmp_path / "same.npz"):
        r = run_cli("allocate", source, "--method", "tempbalance", "--min-eigenvalues", "5",
                    "--json", "--no-cache")
        assert r.exit_code == 0, r.stderr
        docs.append(json.loads(r.stdout))
    assert docs[0]["source"]["format"] != docs[1]["source"]["format"]
    # the DCP reader takes the weights from the "model" entry (as for torch files), so
    # its module names lose that prefix; the values are the same, in the same order
    dcp_alloc, npz_alloc = docs[0]["allocations"], docs[1]["allocations"]
    assert list(dcp_alloc) == [n.removeprefix("model.") for n in npz_alloc]
    assert list(dcp_alloc.values()) == list(npz_alloc.values())
