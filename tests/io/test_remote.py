"""Issue 12 item 3: s3:// (and other fsspec URLs) wherever a path works, against moto's S3
server on 127.0.0.1. What crosses the wire is counted by a TCP proxy in front of the
server, independently of spectrum and s3fs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from safetensors.numpy import save_file  # noqa: E402

from spectrum_cli.io import storage  # noqa: E402
from tests.helpers import RUN_DEPENDENT, run_cli  # noqa: E402
from tests.remote import CREDENTIALS, moto_s3  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPECTRUM = Path(sys.executable).with_name("spectrum")
SAMPLE_PT = ROOT / "sample_checkpoints" / "tiny-mlp" / "checkpoint.pt"


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as server:
        yield server


@pytest.fixture
def s3env(s3, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    return s3


def numbers(doc: dict) -> dict:
    """name -> the per-tensor metrics (what must be identical wherever the bytes live)."""
    out = {}
    for t in doc["tensors"]:
        out[t["name"]] = {k: v for k, v in t.items()
                          if isinstance(v, (int, float)) and k not in RUN_DEPENDENT}
    return out


def analyze_json(*args: str) -> dict:
    r = run_cli("analyze", *args, "--json", "--no-cache")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def assert_same(a: dict, b: dict) -> None:
    na, nb = numbers(a), numbers(b)
    assert na.keys() == nb.keys() and na
    for name in na:
        for k, v in na[name].items():
            assert nb[name][k] == pytest.approx(v, rel=1e-12, abs=0), (name, k)


def sharded_llm(folder: Path, layers: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A small sharded HF folder: 2 shards, an index, a config.json."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers):
        tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((64, 64))
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((512, 128))
        tensors[f"model.layers.{i}.input_layernorm.weight"] = np.ones(64)
    folder.mkdir(parents=True)
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:])):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n].astype(np.float32) for n in part}, str(folder / shard))
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text("{}")
    return tensors


def test_safetensors_from_s3_equals_local(s3env, tmp_path):
    rng = np.random.default_rng(1)
    local = tmp_path / "m.safetensors"
    save_file({"a": rng.standard_normal((40, 30)), "b": rng.standard_normal((30, 30))},
              str(local))
    url = s3env.upload(local, "s3://remote1/m.safetensors")
    assert_same(analyze_json(str(local)), analyze_json(url))


def test_torch_zip_through_a_file_object_equals_local(s3env):
    url = s3env.upload(SAMPLE_PT, "s3://remote2/tiny/checkpoint.pt")
    remote = analyze_json(url)
    assert remote["source"]["files"] == [url]
    assert_same(analyze_json(str(SAMPLE_PT)), remote)


def test_sharded_folder_and_include_reads_a_small_part(s3env, tmp_path):
    folder = tmp_path / "llm"
    sharded_llm(folder, layers=8)
    url = s3env.upload(folder, "s3://remote3/llm")
    total = sum(f.stat().st_size for f in folder.iterdir())
    s3env.proxy.reset()
    assert_same(analyze_json(str(folder)), analyze_json(url))
    everything = s3env.proxy.received
    assert everything > total  # every tensor's bytes came over the wire (plus HTTP)
    s3env.proxy.reset()
    one = analyze_json(url, "--include", "model.layers.0.mlp.up_proj.weight")
    assert [t["name"] for t in one["tensors"]] == ["model.layers.0.mlp.up_proj.weight"]
    tensor_bytes = 512 * 128 * 4
    # The index, both headers, that tensor: a fraction of the folder, well under half.
    assert tensor_bytes < s3env.proxy.received < tensor_bytes + 64 * 1024
    assert s3env.proxy.received < 0.2 * total


def test_workers_read_the_index_and_headers_once_per_run(s3env, tmp_path):
    """--jobs 2 from S3: the same numbers as --jobs 1, and the extra bytes are a few
    opens of the folder (index and headers: the parent's and each worker's), not one
    per tensor task."""
    from spectrum_cli.io import LoadPolicy, open_source

    folder = tmp_path / "llm"
    sharded_llm(folder, layers=8)
    url = s3env.upload(folder, "s3://remote-once/llm")
    s3env.proxy.reset()
    open_source(url, LoadPolicy()).close()
    one_open = s3env.proxy.received
    s3env.proxy.reset()
    serial = analyze_json(url, "--jobs", "1")
    serial_bytes = s3env.proxy.received
    s3env.proxy.reset()
    parallel = analyze_json(url, "--jobs", "2")
    tasks = len(parallel["tensors"])
    assert tasks == 16 and parallel["settings"]["run"]["workers"] == 2
    assert_same(serial, parallel)
    extra = s3env.proxy.received - serial_bytes
    assert 0 < extra <= 3 * one_open, (extra, one_open)  # per task it was ~16 opens


def test_storage_option_instead_of_the_environment(s3, tmp_path, monkeypatch):
    for k in ("AWS_ENDPOINT_URL", *CREDENTIALS):
        monkeypatch.delenv(k, raising=False)
    url = s3.upload(SAMPLE_PT, "s3://remote4/checkpoint.pt")
    doc = analyze_json(url, "--storage-option", f"endpoint_url={s3.endpoint}",
                       "--storage-option", "key=testing", "--storage-option", "secret=testing",
                       "--storage-option", "client_kwargs.region_name=us-east-1")
    assert_same(analyze_json(str(SAMPLE_PT)), doc)


@pytest.mark.parametrize("option", ["novalue", "=x", "a..b=1"])
def test_malformed_storage_option_is_a_usage_error(s3env, option):
    r = run_cli("analyze", "s3://remote4/checkpoint.pt", "--storage-option", option)
    assert r.exit_code == 2 and "--storage-option" in r.stderr


def test_storage_options_never_come_from_a_config_file(s3env, tmp_path, monkeypatch):
    (tmp_path / "spectrum.toml").write_text('storage_option = ["endpoint_url=http://evil"]\n')
    monkeypatch.chdir(tmp_path)
    r = run_cli("analyze", "s3://remote4/checkpoint.pt")
    assert r.exit_code == 2 and "'storage_option' cannot be set" in r.stderr
    assert "another endpoint" in r.stderr


def test_missing_object_and_bucket_name_the_url(s3env):
    for url in ("s3://remote4/nope.pt", "s3://no-such-bucket-x/a.pt"):
        r = run_cli("analyze", url)
        assert r.exit_code == 2, r.output
        assert url in r.stderr and "Traceback" not in r.stderr


def test_index_naming_a_shard_outside_its_folder_is_refused(s3env, tmp_path):
    folder = tmp_path / "evil"
    sharded_llm(folder, layers=2)
    s3env.upload(folder, "s3://remote5/secret")  # what the index tries to reach
    for bad in ("../secret/model-00001-of-00002.safetensors",
                "s3://remote5/secret/model-00001-of-00002.safetensors"):
        doc = json.loads((folder / "model.safetensors.index.json").read_text())
        first = next(iter(doc["weight_map"]))
        doc["weight_map"][first] = bad
        (folder / "model.safetensors.index.json").write_text(json.dumps(doc))
        url = s3env.upload(folder, "s3://remote5/evil")
        r = run_cli("analyze", url)
        assert r.exit_code == 2, r.output
        assert "outside the index's folder" in r.stderr


def test_hf_checkpoint_folder_reads_trainer_state_from_s3(s3env, tmp_path):
    folder = tmp_path / "checkpoint-30"
    sharded_llm(folder, layers=1)
    (folder / "trainer_state.json").write_text(json.dumps(
        {"global_step": 30, "log_history": [{"step": 20, "loss": 1.5}]}))
    url = s3env.upload(folder, "s3://remote6/run/checkpoint-30")
    doc = analyze_json(url)
    assert doc["checkpoint"]["step"] == 30 and doc["checkpoint"]["loss"] == 1.5


def test_batch_of_an_s3_folder_equals_local_and_caches(s3env, tmp_path):
    run = tmp_path / "run"
    for step in (10, 20):
        sharded_llm(run / f"checkpoint-{step}", layers=1, seed=step)
    url = s3env.upload(run, "s3://remote7/run")
    cache = tmp_path / "cache"

    def batch(target: str) -> dict:
        r = run_cli("batch", target, "--json", "--cache-dir", cache)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)

    local, remote = batch(str(run)), batch(url)
    assert [c["path"] for c in remote["checkpoints"]] == [f"{url}/checkpoint-10",
                                                          f"{url}/checkpoint-20"]
    for a, b in zip(local["checkpoints"], remote["checkpoints"]):
        assert a["indicators"] == pytest.approx(b["indicators"], rel=1e-12)
    s3env.proxy.reset()
    again = batch(url)
    assert all(c["cached"] for c in again["checkpoints"])
    assert s3env.proxy.received < 16 * 1024  # listings and HEADs only: nothing re-read


def test_jobs_2_from_s3_equals_jobs_1(s3env, tmp_path):
    folder = tmp_path / "llm"
    sharded_llm(folder, layers=3)
    url = s3env.upload(folder, "s3://remote8/llm")
    assert_same(analyze_json(url), analyze_json(url, "--jobs", "2"))


def test_console_script_reads_s3(s3, tmp_path):
    url = s3.upload(SAMPLE_PT, "s3://remote9/checkpoint.pt")
    report = tmp_path / "r.h5"
    env = {**os.environ, **s3.env}
    r = subprocess.run([str(SPECTRUM), "analyze", url, "--report", str(report), "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"]["path"] == url and report.stat().st_size > 0


def test_unreachable_endpoint_fails_fast_with_exit_2(tmp_path):
    t0 = time.monotonic()
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_MAX_ATTEMPTS": "1"}
    r = subprocess.run([str(SPECTRUM), "analyze", "s3://b/x.pt"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "s3://b/x.pt" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 100


def test_url_helpers_confine_names():
    assert storage.inside("s3://b/run", "model.safetensors") == "s3://b/run/model.safetensors"
    assert storage.inside("s3://b/run", "sub/x.bin") == "s3://b/run/sub/x.bin"
    for bad in ("../x", "a/../../x", "/etc/passwd", "s3://c/x", "..", "a\\b", ""):
        assert storage.inside("s3://b/run", bad) is None
    assert storage.is_url("s3://b/k") and storage.is_url("gs://b/k")
    assert not storage.is_url("file:///tmp/x") and not storage.is_url("C:/x")
    assert storage.parse_options(["anon=true", "a.b=3", "x=1.5", "s=hi"]) == {
        "anon": True, "a": {"b": 3}, "x": 1.5, "s": "hi"}


def test_diff_of_a_remote_and_a_local_checkpoint(s3env):
    url = s3env.upload(SAMPLE_PT, "s3://remote10/checkpoint.pt")
    r = run_cli("diff", url, str(SAMPLE_PT), "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["a"]["path"] == url and doc["tensors"]
    for t in doc["tensors"]:  # the same bytes, read from S3 and from disk
        assert all(m["delta"] == 0 for m in t["metrics"].values()), t["name"]


def test_watch_follows_an_s3_folder_as_checkpoints_arrive(s3env, tmp_path):
    """Issue 14 item 1 with a URL: checkpoints uploaded while the watch runs are each
    analysed once; the report holds batch's numbers for them."""
    import threading

    from tests.batch.folders import weights_only_run

    src = weights_only_run(tmp_path / "src", steps=3)
    files = sorted(src.glob("*.safetensors"))
    url = "s3://remote11/run"
    s3env.upload(files[0], f"{url}/{files[0].name}")
    report = tmp_path / "traj.h5"

    def uploader() -> None:
        for f in files[1:]:
            time.sleep(0.8)
            s3env.upload(f, f"{url}/{f.name}")

    t = threading.Thread(target=uploader, daemon=True)
    t.start()
    r = run_cli("watch", url, "--report", report, "--idle-timeout", "3", "--poll", "0.2",
                "--settle", "0.3", "--no-cache", "--no-progress")
    t.join(30)
    assert r.exit_code == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["0", "100", "200"]
    shown = json.loads(run_cli("report", "show", report, "--json").stdout)
    local = json.loads(run_cli("batch", src, "--json", "--no-cache").stdout)
    assert [c["path"] for c in shown["checkpoints"]] == [f"{url}/{f.name}" for f in files]
    for got, want in zip(shown["checkpoints"], local["checkpoints"]):
        assert got["indicators"] == pytest.approx(want["indicators"], rel=1e-12)


def _mixed_dtypes(path: Path) -> dict[str, np.ndarray]:
    """bfloat16, float16, float32 and float8 tensors of odd sizes (pieces end mid-row)."""
    import torch
    from safetensors.torch import save_file as save_torch

    g = torch.Generator().manual_seed(5)
    tensors = {"bf16": torch.randn(301, 67, generator=g).to(torch.bfloat16),
               "f16": torch.randn(97, 41, generator=g).to(torch.float16),
               "f32": torch.randn(53, 29, generator=g),
               "e4m3": torch.randn(45, 33, generator=g).to(torch.float8_e4m3fn)}
    save_torch(tensors, str(path))
    return {k: v.to(torch.float64).numpy() for k, v in tensors.items()}


def test_remote_pieces_read_ahead_and_decode_exactly(s3env, tmp_path, monkeypatch):
    """Many small GETs (one fetched ahead by a thread) and decode slices that do not line
    up with them give exactly the values torch decodes; no prefetch thread outlives a read."""
    import threading

    from spectrum_cli.io import safetensors_file as st

    local = tmp_path / "mixed.safetensors"
    want = _mixed_dtypes(local)
    url = s3env.upload(local, "s3://remote-pieces/mixed.safetensors")
    monkeypatch.setattr(st, "REMOTE_CHUNK_BYTES", 1000)  # 10-40 GETs per tensor
    monkeypatch.setattr(st, "DECODE_BYTES", 96)  # several decode slices per GET
    remote, plain = st.SafetensorsSource(url), st.SafetensorsSource(str(local))
    for name, values in want.items():
        got = remote.read(name)
        assert got.dtype == np.float64 and got.shape == values.shape
        np.testing.assert_array_equal(got, values)
        np.testing.assert_array_equal(plain.read(name), values)
    assert not [t for t in threading.enumerate() if t.name.startswith("spectrum-prefetch")]


def test_short_remote_piece_is_an_input_error_naming_file_and_tensor(s3env, tmp_path,
                                                                      monkeypatch):
    """A GET that returns fewer bytes than asked (the object changed underneath) fails in
    the prefetch thread; the error reaches the caller, naming the object and the tensor."""
    from spectrum_cli.core.errors import InputError
    from spectrum_cli.io import safetensors_file as st

    local = tmp_path / "mixed.safetensors"
    _mixed_dtypes(local)
    url = s3env.upload(local, "s3://remote-short/mixed.safetensors")
    monkeypatch.setattr(st, "REMOTE_CHUNK_BYTES", 1000)
    src = st.SafetensorsSource(url)
    real, calls = st.read_at, []

    def truncating(fh, offset, n):
        calls.append(offset)
        data = real(fh, offset, n)
        return data[:-1] if len(calls) == 3 else data

    monkeypatch.setattr(st, "read_at", truncating)
    with pytest.raises(InputError, match=r"mixed\.safetensors: short read of 'bf16'"):
        src.read("bf16")


def test_an_object_replaced_between_two_pieces_of_a_tensor_is_refused(s3env, tmp_path,
                                                                       monkeypatch):
    """Issue 26: the reader pins the object's ETag when it opens it; replaced after the
    first piece of a tensor was read, the next ranged read fails naming the object (no
    matrix stitched from two versions), and the cache identity is the pinned one."""
    from spectrum_cli.io import safetensors_file as st
    from spectrum_cli.io.base import sha256_files

    rng = np.random.default_rng(7)
    v1 = rng.standard_normal((64, 48))
    a, b = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    save_file({"w": v1}, str(a))
    save_file({"w": 1000 * v1}, str(b))
    url = s3env.upload(a, "s3://remote-swap/m.safetensors")
    monkeypatch.setattr(st, "REMOTE_CHUNK_BYTES", 4096)  # several GETs for the tensor
    src = st.SafetensorsSource(url)
    identity = sha256_files((url,))
    real, calls = st.read_at, []

    def replacing(fh, offset, n):
        calls.append(offset)
        if len(calls) == 2:  # after the first piece: the object is replaced
            s3env.upload(b, url)
        return real(fh, offset, n)

    monkeypatch.setattr(st, "read_at", replacing)
    with pytest.raises(storage.ObjectChanged, match=r"remote-swap/m\.safetensors: the "
                                                    r"object changed"):
        src.read("w")
    assert sha256_files((url,)) == identity  # the pinned identity, while src is open
    monkeypatch.setattr(st, "read_at", real)
    del src
    fresh = st.SafetensorsSource(url)  # a new open pins the new version
    np.testing.assert_array_equal(fresh.read("w"), 1000 * v1)
    assert sha256_files((url,)) != identity


def test_storage_settings_travel_as_a_snapshot_and_are_restored(monkeypatch):
    """What a Dask task carries: options, the storage variables and pins; applied around
    the task, then the worker's own settings are back. Its repr shows no value."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "client-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    storage.configure(["key=abc"])
    snap = storage.snapshot()
    assert "client-secret" not in repr(snap) and "abc" not in repr(snap)
    storage.configure([])
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://worker")
    with storage.applied(snap):
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == "client-secret"
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
        assert storage._OPTIONS == {"key": "abc"}
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ
    assert os.environ["AWS_ENDPOINT_URL"] == "http://worker" and storage._OPTIONS == {}


def test_a_result_is_not_cached_under_an_identity_that_changed_meanwhile(s3env, tmp_path):
    """Issue 26: the batch key comes from a listing made before the analysis; an object
    replaced between that listing and the reader's pinned open is analysed whole (v2's
    values), but must not be cached under v1's key."""
    from spectrum_cli.runs.cache import cache_key, cacheable
    from spectrum_cli.runs.batch import compute_record
    from spectrum_cli.core.analyze import AnalyzeOptions
    from spectrum_cli.runs.job import Job

    rng = np.random.default_rng(8)
    a, b = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    save_file({"w": rng.standard_normal((16, 12))}, str(a))
    save_file({"w": 1000 * rng.standard_normal((16, 12))}, str(b))
    url = s3env.upload(a, "s3://remote-key/m.safetensors")
    job = Job(AnalyzeOptions())
    key = cache_key(url, job)
    s3env.upload(b, url)
    record = compute_record(url, job, key)
    assert record["status"] == "ok" and record["identity_changed"] is True
    assert not cacheable(record)
    same = compute_record(url, job, cache_key(url, job))
    assert same["identity_changed"] is False and cacheable(same)


def test_a_record_with_a_tensor_that_failed_is_not_cached():
    from spectrum_cli.runs.cache import cacheable

    ok = {"status": "ok", "document": {"errors": []}, "identity_changed": False}
    assert cacheable(ok)
    assert not cacheable({**ok, "document": {"errors": [{"tensor": "w", "error": "EIO"}]}})
    assert not cacheable({"status": "error", "document": {}})


def test_allocate_a_sharded_folder_from_s3_with_two_jobs_equals_local(s3env, tmp_path):
    """``spectrum allocate`` measures through analyze's pipeline: a sharded folder read
    from object storage by two workers gives the local single-process allocation."""
    folder = tmp_path / "llm"
    sharded_llm(folder, layers=4)
    url = s3env.upload(folder, "s3://remote-alloc/llm")

    def allocations(source: str, *extra: str) -> dict:
        r = run_cli("allocate", source, "--method", "alphapruning", "--sparsity", "0.5",
                    "--json", "--no-cache", *extra)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)["allocations"]

    local = allocations(str(folder))
    assert list(local) == [f"model.layers.{i}.{p}" for i in range(4)
                           for p in ("mlp.up_proj", "self_attn.q_proj")]
    remote = allocations(url, "--jobs", "2")
    assert remote.keys() == local.keys()
    for name, value in local.items():
        assert remote[name] == pytest.approx(value, rel=1e-12, abs=0), name
