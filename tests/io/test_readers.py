"""Each reader against what torch / safetensors / numpy themselves load."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.io import LoadPolicy, open_source


def state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "enc.weight": torch.randn(8, 5, generator=g),
        "enc.bias": torch.randn(8, generator=g),
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "steps": torch.tensor(7),
        "emb.weight": torch.randn(10, 4, generator=g).to(torch.bfloat16),
        "half.weight": torch.randn(6, 6, generator=g).to(torch.float16),
        "ids": torch.arange(12).reshape(3, 4),
    }


def as_map(src) -> dict:
    return {i.name: i for i in src.entries()}


def check_values(src, expected: dict[str, torch.Tensor]) -> None:
    infos = as_map(src)
    for name, t in expected.items():
        assert infos[name].shape == tuple(t.shape), name
        assert infos[name].dtype == str(t.dtype).removeprefix("torch."), name
        if t.is_floating_point():
            got = src.read(name)
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, t.to(torch.float64).numpy())


def test_plain_state_dict(tmp_path):
    sd = state_dict()
    torch.save(sd, tmp_path / "m.pt")
    src = open_source(str(tmp_path / "m.pt"))
    assert src.format == "torch"
    assert set(as_map(src)) == set(sd)
    check_values(src, sd)


@pytest.mark.parametrize("key", ["model", "state_dict", "model_state_dict", "module"])
def test_nested_training_checkpoint(tmp_path, key):
    sd = state_dict()
    model = torch.nn.Linear(5, 8)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 5)).sum().backward()
    opt.step()
    torch.save({key: sd, "optimizer": opt.state_dict(), "epoch": 3, "lr": [0.1]},
               tmp_path / "ckpt.pt")
    src = open_source(str(tmp_path / "ckpt.pt"))
    infos = as_map(src)
    check_values(src, sd)
    opt_entries = [i for i in infos.values() if i.name.startswith("optimizer.")]
    assert opt_entries and all(i.skip == "optimizer state" for i in opt_entries)
    assert any(key in n for n in src.notes)


def test_lightning_layout(tmp_path):
    sd = {f"model.{k}": v for k, v in state_dict().items()}
    model = torch.nn.Linear(5, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 5)).sum().backward()
    opt.step()
    torch.save({"epoch": 1, "global_step": 10, "state_dict": sd,
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
                "hyper_parameters": {"lr": 0.1}}, tmp_path / "last.ckpt")
    src = open_source(str(tmp_path / "last.ckpt"))
    infos = as_map(src)
    assert "model.enc.weight" in infos and infos["model.enc.weight"].skip is None
    assert infos["optimizer_states.0.state.0.momentum_buffer"].skip == "optimizer state"


def test_lists_and_weights_key(tmp_path):
    a, b = torch.randn(3, 4), torch.randn(5, 2)
    torch.save({"model": {"w": a}, "ema": [{"w": b}]}, tmp_path / "x.pt")
    src = open_source(str(tmp_path / "x.pt"))
    infos = as_map(src)
    assert infos["w"].skip is None and infos["ema.0.w"].skip.startswith("outside the weights")
    src = open_source(str(tmp_path / "x.pt"), LoadPolicy(weights_key=""))
    assert {i.name: i.skip for i in src.entries()} == {"model.w": None, "ema.0.w": None}
    src = open_source(str(tmp_path / "x.pt"), LoadPolicy(weights_key="ema"))
    assert as_map(src)["0.w"].skip is None
    np.testing.assert_array_equal(src.read("0.w"), b.double().numpy())
    with pytest.raises(UsageError, match="no such key"):
        open_source(str(tmp_path / "x.pt"), LoadPolicy(weights_key="nope"))


def test_legacy_torch_format(tmp_path):
    sd = {"w": torch.randn(4, 3)}
    torch.save(sd, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    src = open_source(str(tmp_path / "old.bin"))
    assert src.format == "torch-legacy" and "without mmap" in src.notes[0]
    check_values(src, sd)


def test_safetensors_all_dtypes_match_safetensors_library(tmp_path):
    sd = {k: v for k, v in state_dict().items()}
    sd["f64"] = torch.randn(3, 3, dtype=torch.float64)
    sd["flag"] = torch.tensor([[True, False]])
    sd["e4m3"] = torch.randn(4, 4).to(torch.float8_e4m3fn)
    sd["e5m2"] = (torch.randn(4, 4) * 100).to(torch.float8_e5m2)
    save_file(sd, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    src = open_source(str(tmp_path / "m.safetensors"))
    assert src.format == "safetensors"
    check_values(src, sd)


def test_float8_tables_cover_every_code():
    from spectrum_cli.io.safetensors_file import decode

    codes = np.arange(256, dtype=np.uint8)
    for name in ("float8_e4m3fn", "float8_e5m2"):
        ours = decode(codes, name)
        theirs = torch.from_numpy(codes.copy()).view(getattr(torch, name)).double().numpy()
        np.testing.assert_array_equal(ours, theirs)


def test_bfloat16_decoding_covers_every_code():
    """All 65536 bit patterns (zeros, subnormals, infinities, NaNs) against torch."""
    from spectrum_cli.io.safetensors_file import decode

    codes = np.arange(2**16, dtype=np.uint16)
    ours = np.empty(codes.size)
    with np.errstate(invalid="ignore"):  # signalling NaNs, quieted as the reader does
        ours[:] = decode(codes, "bfloat16")
    theirs = torch.from_numpy(codes.view(np.int16).copy()).view(torch.bfloat16).double().numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert np.array_equal(np.signbit(ours), np.signbit(theirs))


def test_sharded_safetensors_and_directory(tmp_path):
    sd = state_dict()
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[:3],
              "model-00002-of-00002.safetensors": names[3:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(tmp_path / fname))
        weight_map.update({k: fname for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text("{}")
    for path in (tmp_path, tmp_path / "model.safetensors.index.json"):
        src = open_source(str(path))
        assert src.format == "safetensors-sharded" and len(src.files) == 2
        check_values(src, sd)
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(InputError, match="missing shard"):
        open_source(str(tmp_path))


def test_sharded_pytorch_bin_directory(tmp_path):
    sd = state_dict()
    names = sorted(sd)
    torch.save({k: sd[k] for k in names[:4]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: sd[k] for k in names[4:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    wm = {k: f"pytorch_model-0000{1 if i < 4 else 2}-of-00002.bin" for i, k in enumerate(names)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
    src = open_source(str(tmp_path))
    assert src.format == "torch-sharded"
    check_values(src, sd)


def test_hf_folder_prefers_safetensors(tmp_path):
    sd = {"w": torch.randn(3, 3)}
    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.save({"other": torch.randn(2, 2)}, tmp_path / "pytorch_model.bin")
    assert open_source(str(tmp_path)).format == "safetensors"
    os.remove(tmp_path / "model.safetensors")
    assert set(as_map(open_source(str(tmp_path)))) == {"other"}


def test_npz_and_npy(tmp_path):
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    np.savez(tmp_path / "w.npz", layer1=w, bias=np.ones(4), ids=np.arange(6).reshape(2, 3))
    src = open_source(str(tmp_path / "w.npz"))
    infos = as_map(src)
    assert src.format == "npz" and infos["layer1"].shape == (6, 4)
    assert infos["ids"].dtype == "int64" and infos["bias"].shape == (4,)
    np.testing.assert_array_equal(src.read("layer1"), w.astype(np.float64))
    np.save(tmp_path / "recurrent.npy", w)
    src = open_source(str(tmp_path / "recurrent.npy"))
    assert [i.name for i in src.entries()] == ["recurrent"]
    np.testing.assert_array_equal(src.read("recurrent"), w.astype(np.float64))


def test_npz_object_arrays_are_not_unpickled(tmp_path):
    np.savez(tmp_path / "o.npz", obj=np.array([{"a": 1}], dtype=object), w=np.eye(3))
    infos = as_map(open_source(str(tmp_path / "o.npz")))
    assert "unpickling" in infos["obj"].skip and infos["w"].skip is None


@pytest.mark.parametrize("maker,fmt", [
    (lambda p: save_file({"w": torch.ones(2, 2)}, str(p)), "safetensors"),
    (lambda p: torch.save({"w": torch.ones(2, 2)}, p), "torch"),
    (lambda p: np.save(open(p, "wb"), np.ones((2, 2))), "npy"),
])
def test_format_chosen_by_content_not_extension(tmp_path, maker, fmt):
    path = tmp_path / "weights.dat"
    maker(path)
    assert open_source(str(path)).format == fmt


def test_peak_memory_is_about_one_tensor(tmp_path):
    """Analysing 12 tensors of 2 MB (float32) must not hold them all: the peak of traced
    allocations stays below 3 float64 copies of one tensor, not 12."""
    from spectrum_cli.core.analyze import AnalyzeOptions, analyze_source
    from spectrum_cli.plugins import get_backend
    from spectrum_cli.core.results import SourceInfo

    g = torch.Generator().manual_seed(0)
    sd = {f"l{i}.weight": torch.randn(1024, 512, generator=g) for i in range(12)}
    save_file(sd, str(tmp_path / "big.safetensors"))
    one = 1024 * 512 * 8
    src = open_source(str(tmp_path / "big.safetensors"))
    tracemalloc.start()
    try:
        result = analyze_source(src, SourceInfo("x", "safetensors", (), 0, None),
                                AnalyzeOptions(), get_backend)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.tensors) == 12
    assert peak < 3 * one, f"peak {peak / 2**20:.1f} MiB for tensors of {one / 2**20:.0f} MiB"


def _odd_dtypes(path) -> dict[str, np.ndarray]:
    """bfloat16, float16, float32, float8 and empty tensors of odd sizes (pieces and
    decode slices end mid-row)."""
    g = torch.Generator().manual_seed(6)
    tensors = {"bf16": torch.randn(301, 67, generator=g).to(torch.bfloat16),
               "f16": torch.randn(97, 41, generator=g).to(torch.float16),
               "f32": torch.randn(53, 29, generator=g),
               "e5m2": torch.randn(45, 33, generator=g).to(torch.float8_e5m2),
               "empty": torch.zeros(0, 5, dtype=torch.bfloat16)}
    save_file(tensors, str(path))
    return {k: v.to(torch.float64).numpy() for k, v in tensors.items()}


def test_local_pieces_in_reused_buffers_decode_exactly(tmp_path, monkeypatch):
    """Local reads fill one reused buffer per thread (preadv) and decode through another:
    many pieces and slices that do not line up give torch's values exactly, the buffers
    are the same objects from one read to the next, and threads keep their own."""
    import threading

    from spectrum_cli.io import safetensors_file as st

    want = _odd_dtypes(tmp_path / "odd.safetensors")
    monkeypatch.setattr(st, "CHUNK_BYTES", 1000)  # 3-41 local reads per tensor
    monkeypatch.setattr(st, "DECODE_BYTES", 96)  # several decode slices per read
    src = st.SafetensorsSource(str(tmp_path / "odd.safetensors"))
    for name, values in want.items():
        got = src.read(name)
        assert got.dtype == np.float64 and got.shape == values.shape
        np.testing.assert_array_equal(got, values)
    kept = (st._scratch.piece, st._scratch.bits)
    src.read("bf16")
    assert st._scratch.piece is kept[0] and st._scratch.bits is kept[1]
    errors: list = []

    def reread() -> None:
        try:
            for _ in range(20):
                for name, values in want.items():
                    np.testing.assert_array_equal(src.read(name), values)
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_local_file_cut_short_after_opening_names_file_and_tensor(tmp_path):
    from spectrum_cli.io import safetensors_file as st

    path = tmp_path / "cut.safetensors"
    _odd_dtypes(path)
    src = st.SafetensorsSource(str(path))
    end = max(e.start + e.nbytes for e in src._entries.values())
    os.truncate(path, end - 10)
    last = max(src._entries.values(), key=lambda e: e.start).info.name
    with pytest.raises(InputError, match=rf"cut\.safetensors: short read of '{last}'"):
        src.read(last)
