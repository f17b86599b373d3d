"""Hostile inputs at the reader boundary (issue 10, items 3, 5-8, 10).

Every malformed file is an :class:`InputError` naming it (exit 2), never another exception
(exit 3); nothing in a pickle runs unless the command line names that very file; declared
sizes are checked before anything is allocated; a FIFO or device is never opened; shard
names from an index cannot leave its folder.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectrum_cli.core.errors import InputError, SpectrumError, UnsafeCheckpointError, UsageError
from spectrum_cli.io import LoadPolicy, open_source
from spectrum_cli.io.base import SourceBase, TensorInfo
from spectrum_cli.io.optimizer_state import locate
from spectrum_cli.io.pickle_scan import scan_globals
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]


def assert_refused(path, *fragments: str, names=None) -> InputError:
    """open_source (and reading every tensor) fails with an InputError naming ``path``
    (or ``names``, the file inside it that is wrong)."""
    with pytest.raises(InputError) as info:
        src = open_source(str(path))
        for entry in src.entries():
            src.read(entry.name)
    assert str(names or path) in str(info.value), (names or path, str(info.value))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return info.value


def assert_cli_exit_2(*args, fragment: str = "") -> None:
    result = run_cli("analyze", *args)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert fragment in result.stderr, result.stderr


# --- safetensors headers -------------------------------------------------------------


def safetensors_bytes(header, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def t(dtype="F32", shape=(2, 2), offsets=(0, 16)):
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


DATA = bytes(64)
SAFETENSORS_CASES = {
    "float offsets": ({"w": t(offsets=[0.0, 16.0])}, "data_offsets"),
    "string offsets": ({"w": t(offsets=["0", "16"])}, "data_offsets"),
    "negative offset": ({"w": t(shape=(0,), offsets=(-16, -16))}, "negative"),
    "reversed offsets": ({"w": t(offsets=(16, 0))}, "reversed"),
    "three offsets": ({"w": t(offsets=[0, 8, 16])}, "data_offsets"),
    "offsets past the file": ({"w": t(shape=(1000,), offsets=(0, 4000))}, "truncated"),
    "int64-overflowing offset": ({"w": t(offsets=(2**70, 2**70 + 16))}, "bytes"),
    "overlapping tensors": ({"a": t(), "b": t(offsets=(8, 24))}, "overlap"),
    "overlap hidden by an empty tensor": (
        {"a": t(shape=(8,), offsets=(0, 32)), "e": t(shape=(0,), offsets=(8, 8)),
         "c": t(offsets=(16, 32))}, "overlap"),
    "negative dim": ({"w": t(shape=(-1, 4))}, "negative"),
    "int64-overflowing dim": ({"w": t(shape=(2**64, 0), offsets=(0, 0))}, "shape"),
    "dims whose product overflows": ({"w": t(shape=(2**40, 2**40))}, "shape"),
    "float dim": ({"w": t(shape=[2.0, 2])}, "non-integer"),
    "bool dim": ({"w": t(shape=[True, 4])}, "non-integer"),
    "shape not a list": ({"w": t(shape="2x2")}, "shape"),
    "too many dims": ({"w": t(shape=(1,) * 100, offsets=(0, 4))}, "dimensions"),
    "byte count mismatch": ({"w": t(shape=(3, 3))}, "needs 36"),
    "unknown dtype": ({"w": t(dtype="F128")}, "unknown dtype"),
    "unhashable dtype": ({"w": t(dtype=["F32"])}, "unknown dtype"),
    "entry not an object": ({"w": 5}, "not an object"),
    "empty tensor name": ({"": t()}, "empty name"),
    "non-object JSON": ([1, 2, 3], "not a JSON object"),
    "deep JSON": (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "invalid UTF-8": (b'{"\xff\xfe": 1}', "corrupt safetensors header"),
    "not JSON": (b"{this is not json}", "corrupt safetensors header"),
    "duplicate names": (b'{"w": ' + json.dumps(t()).encode() + b', "w": '
                        + json.dumps(t()).encode() + b"}", "twice"),
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_malformed_safetensors_header_is_an_input_error(tmp_path, case):
    header, fragment = SAFETENSORS_CASES[case]
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(header, DATA))
    assert_refused(path, fragment)


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, 10**9])
def test_huge_safetensors_header_length(tmp_path, length):
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes({"w": t()}, DATA, length=length))
    assert_refused(path, "header of")


def test_tiny_safetensors_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    assert_refused(path, "too short")


@pytest.mark.parametrize("case", ["float offsets", "deep JSON", "empty tensor name",
                                  "dims whose product overflows"])
def test_malformed_safetensors_exit_2_through_the_cli(tmp_path, case):
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(SAFETENSORS_CASES[case][0], DATA))
    assert_cli_exit_2(path, fragment=str(path))


def test_valid_safetensors_with_holes_and_empty_tensors_still_reads(tmp_path):
    """The checks refuse only what is wrong: empty tensors and padding are fine."""
    values = np.arange(4, dtype="<f4")
    header = {"e": t(shape=(0, 5), offsets=(0, 0)), "w": t(offsets=(16, 32)),
              "__metadata__": {"format": "pt"}}
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(16) + values.tobytes()))
    src = open_source(str(path))
    assert np.array_equal(src.read("w"), values.reshape(2, 2))
    assert src.read("e").shape == (0, 5)


# --- torch pickles --------------------------------------------------------------------


def _pickle_ends(raw: bytes) -> list[int]:
    import pickletools

    fh, ends = io.BytesIO(raw), []
    while fh.tell() < len(raw):
        try:
            for _ in pickletools.genops(fh):
                pass
        except ValueError:
            break
        ends.append(fh.tell())
    return ends


def torch_file_with(path: Path, body: bytes, zipped: bool) -> Path:
    """A real ``torch.save`` file whose object pickle is replaced by ``body``."""
    buf = io.BytesIO()
    torch.save({"x": 1}, buf, _use_new_zipfile_serialization=zipped)
    raw = buf.getvalue()
    if not zipped:  # magic, protocol, sys_info, OBJECT, storage keys (, storages)
        ends = _pickle_ends(raw)
        path.write_bytes(raw[:ends[2]] + body + raw[ends[3]:])
        return path
    src = zipfile.ZipFile(io.BytesIO(raw))
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info, body if info.filename.endswith("data.pkl") else src.read(info))
    return path


def nested_lists(depth: int) -> bytes:
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def shared_doubling(levels: int) -> bytes:
    """[x, x] where x = [y, y] ... through the memo: 2**levels paths, tiny file."""
    out = b"\x80\x02]q\x00"  # empty list, memo 0
    for i in range(levels):
        out += b"](h" + bytes([i]) + b"h" + bytes([i]) + b"eq" + bytes([i + 1])
    return out + b"."


TORCH_BODIES = {
    "nested 10^4 deep": (nested_lists(10_000), "nested"),
    "nested 10^5 deep": (nested_lists(100_000), "nested"),
    "list containing itself": (b"\x80\x02]q\x00h\x00a.", "contains itself"),
    "exponential sharing": (shared_doubling(60), "objects"),
    "garbage pickle": (b"\x80\x02\xff\xfe\xfd", "torch checkpoint"),
    "truncated pickle": (b"\x80\x02}q\x00(X\x01\x00\x00", "torch checkpoint"),
    "unbalanced stack": (b"\x80\x02a.", "torch checkpoint"),
}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(TORCH_BODIES))
def test_malformed_torch_pickle_is_an_input_error(tmp_path, case, zipped):
    body, fragment = TORCH_BODIES[case]
    path = torch_file_with(tmp_path / "m.pt", body, zipped)
    assert_refused(path, fragment)


def test_deep_pickle_exits_2_through_the_cli(tmp_path):
    path = torch_file_with(tmp_path / "deep.pt", nested_lists(10_000), zipped=False)
    assert_cli_exit_2(path, fragment="nested")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_torch_zip(tmp_path, keep):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.randn(16, 16), "b": torch.randn(16)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_refused(path)


def test_zips_that_are_not_checkpoints(tmp_path):
    empty = tmp_path / "empty.pt"
    with zipfile.ZipFile(empty, "w"):
        pass
    assert_refused(empty)  # an empty zip starts PK\x05\x06: unrecognized
    other = tmp_path / "other.pt"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("archive/version", "3")
    assert_refused(other, "neither a torch checkpoint nor .npz")
    junk = tmp_path / "junk.pt"
    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02not a pickle")
    assert_refused(junk, "torch checkpoint")


def _decoy_pickle(marker: Path) -> bytes:
    """``posix.system("touch marker")`` whose module and name come through the memo, with
    an allowlisted global's strings pushed in between as a decoy."""
    def s(x: str) -> bytes:
        return b"\x8c" + bytes([len(x)]) + x.encode()
    return (b"\x80\x04" + s("posix") + b"\x94" + b"0" + s("system") + b"\x94" + b"0"
            + s("collections") + s("OrderedDict") + b"00"
            + b"h\x00h\x01\x93" + s(f"touch {marker}") + b"\x85R.")


@pytest.mark.parametrize("how", ["raw", "zip", "legacy"])
def test_scanner_names_the_global_that_comes_through_the_memo(tmp_path, how):
    marker = tmp_path / "PWNED"
    body = _decoy_pickle(marker)
    if how == "raw":
        path = tmp_path / "evil.pkl"
        path.write_bytes(body)
    else:
        path = torch_file_with(tmp_path / "evil.pt", body, zipped=how == "zip")
    assert "posix.system" in scan_globals(str(path))
    with pytest.raises(UnsafeCheckpointError) as info:
        open_source(str(path))
    assert info.value.unsafe_globals == ["posix.system"]
    assert not marker.exists()


def test_scanner_simulates_the_stack_for_plain_pickles():
    import argparse
    import collections

    from spectrum_cli.io.pickle_scan import scan_pickles

    obj = [collections.OrderedDict(a=1), argparse.Namespace(x=[1, 2]), os.system,
           collections.OrderedDict(b=2)]
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        found = set(scan_pickles(io.BytesIO(pickle.dumps(obj, protocol=protocol))).globals)
        assert {"argparse.Namespace", "posix.system"} <= found, (protocol, found)
        assert not any("touch" in g or "<" in g for g in found), (protocol, found)


@pytest.mark.parametrize("spec,fragment", [
    ("argparse.Namspace", "cannot resolve global 'argparse.Namspace'"),
    ("Namespace", "cannot resolve global 'Namespace'"),
    ("nosuchmodule_xyz.Thing", "cannot resolve global 'nosuchmodule_xyz.Thing'"),
    ("argparse.", "cannot resolve global 'argparse.'"),
])
def test_allow_global_typo_is_a_usage_error(tmp_path, spec, fragment):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.randn(3, 3)}, path)
    with pytest.raises(UsageError, match=fragment.replace(".", r"\.")) as info:
        open_source(str(path), LoadPolicy(allow_globals=(spec,)))
    assert "corrupt" not in str(info.value)
    result = run_cli("analyze", path, "--allow-global", spec)
    assert result.exit_code == 2 and "corrupt" not in result.stderr
    assert "cannot resolve global" in result.stderr


# --- --trust-checkpoint covers the named file only ------------------------------------


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hf_folder_with_optimizer(tmp_path: Path, evil: bool) -> tuple[Path, Path]:
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    model = torch.nn.Linear(4, 3)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).square().sum().backward()
    opt.step()
    marker = tmp_path / "PWNED"
    state = opt.state_dict()
    if evil:
        state["extra"] = Payload(str(marker))
    torch.save(state, folder / "optimizer.pt")
    return folder, marker


@pytest.mark.parametrize("named", ["folder", "weights file"])
def test_trust_checkpoint_does_not_cover_a_sibling_optimizer(tmp_path, named):
    folder, marker = hf_folder_with_optimizer(tmp_path, evil=True)
    target = folder if named == "folder" else folder / "model.safetensors"
    result = run_cli("analyze", target, "--trust-checkpoint",
                     "--allow-global", "posix.system")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "optimizer.pt" in result.stderr and "Traceback" not in result.stderr
    assert "covers only the file named" in result.stderr.replace("\n", " ") or \
        "cover only the file named" in result.stderr.replace("\n", " ")
    assert not marker.exists()
    src = open_source(str(target), LoadPolicy(trust_checkpoint=True))
    with pytest.raises(InputError, match="optimizer.pt"):
        locate(src, LoadPolicy(trust_checkpoint=True))
    assert not marker.exists()


def test_a_safe_sibling_optimizer_is_still_found(tmp_path):
    folder, _ = hf_folder_with_optimizer(tmp_path, evil=False)
    src = open_source(str(folder), LoadPolicy(trust_checkpoint=True))
    state, where, weights = locate(src, LoadPolicy(trust_checkpoint=True))
    assert state is not None and where.endswith("optimizer.pt") and set(weights) == {
        "weight", "bias"}


def test_malformed_sibling_optimizer_state_is_an_input_error(tmp_path):
    from spectrum_cli.io.optimizer_state import parse

    sgd = {"lr": 0.1, "momentum": 0.9, "dampening": 0, "nesterov": False}
    for state in ({"state": {}, "param_groups": [{"params": ["x"], **sgd}]},
                  {"state": {}, "param_groups": [{"params": [0], **sgd, "lr": "fast"}]},
                  {"state": {0: {"momentum_buffer": "abc"}},
                   "param_groups": [{"params": [0], **sgd}]},
                  {"state": {}, "param_groups": 5},
                  {"state": [], "param_groups": [{"params": [0], "momentum": "a",
                                                  "dampening": 0, "nesterov": 0,
                                                  "lr": "fast"}]}):
        with pytest.raises(InputError, match="malformed optimizer state"):
            parse(state, where="opt.pt")


# --- declared sizes: .npz bombs, .npy headers ----------------------------------------


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_bomb(path: Path, nbytes: int, member: str = "w.npy") -> Path:
    """An .npz whose float32 member declares and really inflates to ``nbytes`` of zeros,
    written from one compressed 16 MiB block repeated (so this test stays small)."""
    header, zero = npy_header((nbytes // 4,)), bytes(16 << 20)
    assert nbytes % len(zero) == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(zero) + co.flush(zlib.Z_FULL_FLUSH)  # independent of the rest
    last = co.flush()
    repeats = nbytes // len(zero)
    crc = zlib.crc32(header)
    for _ in range(repeats):
        crc = zlib.crc32(zero, crc)
    csize = len(first) + len(block) * repeats + len(last)
    name = member.encode()
    fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0, crc, csize, len(header) + nbytes,
                         len(name), 0)
    with open(path, "wb") as fh:
        fh.write(b"PK\x03\x04" + fields + name + first + block * repeats + last)
        cd_offset = fh.tell()
        cd = b"PK\x01\x02" + struct.pack("<H", 20) + fields + bytes(14) + name
        fh.write(cd + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(cd),
                                                  cd_offset, 0))
    return path


def test_npz_bomb_is_refused_before_allocating(tmp_path):
    """2 GiB of zeros in a ~2 MB .npz: refused, peak RSS of the whole process < 1 GB
    (measured in a subprocess, with an address-space cap so a regression fails fast)."""
    path = zip_bomb(tmp_path / "bomb.npz", 2 << 30)
    assert path.stat().st_size < 4 << 20
    with zipfile.ZipFile(path) as zf:  # a well-formed zip that really inflates
        assert zf.infolist()[0].file_size > 2 << 30
    script = textwrap.dedent("""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        from spectrum_cli.core.errors import SpectrumError
        from spectrum_cli.io import open_source
        try:
            src = open_source(sys.argv[1])
            for e in src.entries():
                src.read(e.name)
            outcome = "read"
        except SpectrumError as exc:
            outcome = str(exc)
        except MemoryError:
            outcome = "MemoryError"
        # VmHWM, not ru_maxrss: the latter carries the parent's peak across fork and exec.
        peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                    if line.startswith("VmHWM:"))
        print(json.dumps({"outcome": outcome, "peak": peak}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "zip bomb" in doc["outcome"] and str(path) in doc["outcome"], doc
    assert doc["peak"] < 1 << 30, doc


def test_small_npz_bomb_exits_2_through_the_cli(tmp_path):
    path = zip_bomb(tmp_path / "bomb.npz", 256 << 20)
    assert_cli_exit_2(path, fragment="zip bomb")


def test_npz_member_declaring_more_than_it_holds(tmp_path):
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w.npy", npy_header((1000, 1000)) + bytes(64))
    assert_refused(path, "truncated", "w.npy")


@pytest.mark.parametrize("shape,size,fragment", [
    ((10**6, 10**6), 128, "truncated"),
    ((2**62, 4), 128, "shape"),
    ((-3, 4), 128, ""),
])
def test_npy_header_declaring_more_than_the_file(tmp_path, shape, size, fragment):
    path = tmp_path / "w.npy"
    header = npy_header((1, 1)).replace(b"(1, 1)", repr(shape).encode())
    path.write_bytes(header + bytes(size))
    assert_refused(path, fragment)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["<f4", ">f8", "<f2", "<i4"])
def test_chunked_numpy_reads_are_exact(tmp_path, monkeypatch, order, dtype):
    import spectrum_cli.io.numpy_file as numpy_file

    monkeypatch.setattr(numpy_file, "CHUNK_BYTES", 40)  # many chunks, uneven last one
    a = np.asarray(np.random.default_rng(1).standard_normal((7, 5)) * 100, dtype=dtype)
    a = np.asfortranarray(a) if order == "F" else a
    np.save(tmp_path / "a.npy", a)
    np.savez_compressed(tmp_path / "b.npz", a=a, b=a[:, :2])
    assert np.array_equal(open_source(str(tmp_path / "a.npy")).read("a"), a)
    npz = open_source(str(tmp_path / "b.npz"))
    assert np.array_equal(npz.read("a"), a) and np.array_equal(npz.read("b"), a[:, :2])


# --- FIFOs, devices, directories, symlink loops ---------------------------------------


NON_REGULAR_SCRIPT = textwrap.dedent("""
    import json, sys
    from spectrum_cli.core.errors import SpectrumError
    from spectrum_cli.io import LoadPolicy, open_source
    from spectrum_cli.io.optimizer_state import locate
    out = {}
    for path in sys.argv[1:]:
        try:
            if path.endswith("#sibling"):
                src = open_source(path[:-len("#sibling")])
                locate(src, LoadPolicy())
            else:
                src = open_source(path)
                for e in src.entries():
                    src.read(e.name)
            out[path] = "opened"
        except SpectrumError as exc:
            out[path] = "refused: " + str(exc)
    print(json.dumps(out))
""")


def test_fifos_devices_and_folders_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    hf = tmp_path / "hf"
    hf.mkdir()
    os.mkfifo(hf / "model.safetensors")
    dir_named = tmp_path / "hf2"
    (dir_named / "model.safetensors").mkdir(parents=True)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    os.mkfifo(sharded / "model-1.safetensors")
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    sib = tmp_path / "sib"
    sib.mkdir()
    save_file({"w": torch.ones(2, 2)}, str(sib / "model.safetensors"))
    os.mkfifo(sib / "optimizer.pt")
    device = tmp_path / "zero.pt"
    device.symlink_to("/dev/zero")
    index_fifo = tmp_path / "x.index.json"
    os.mkfifo(index_fifo)
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "model.safetensors").symlink_to(loop / "model.safetensors")
    cases = {str(fifo): "FIFO", str(hf): "FIFO", str(dir_named): "directory",
             str(sharded): "FIFO", str(sib / "model.safetensors") + "#sibling": "FIFO",
             str(device): "character device", str(index_fifo): "FIFO",
             str(loop): "symbolic links", str(tmp_path / "selfloop"): "symbolic links"}
    (tmp_path / "selfloop").symlink_to(tmp_path / "selfloop")
    try:
        proc = subprocess.run([sys.executable, "-c", NON_REGULAR_SCRIPT, *cases],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("a reader opened a FIFO and hung")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for path, kind in cases.items():
        assert results[path].startswith("refused") and kind in results[path], (path,
                                                                               results[path])


def test_fifo_through_the_console_script(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    script = Path(sys.executable).with_name("spectrum")
    try:
        proc = subprocess.run([str(script), "analyze", str(fifo)], capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("spectrum analyze FIFO hung")
    assert proc.returncode == 2, proc.stderr
    assert "FIFO" in proc.stderr and "Traceback" not in proc.stderr


# --- index.json ----------------------------------------------------------------------


def sharded_folder(tmp_path: Path, weight_map: dict | list | str | None = None,
                   raw: bytes | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    save_file({"w": torch.ones(2, 2)}, str(folder / "model-1.safetensors"))
    index = folder / "model.safetensors.index.json"
    index.write_bytes(raw if raw is not None else json.dumps(
        {"weight_map": weight_map}).encode())
    return index


@pytest.mark.parametrize("weight_map,fragment", [
    ({"w": "model.safetensors.index.json"}, "itself an index"),
    ({"w": "other.index.json"}, "itself an index"),
    ({}, "empty"),
    ({"w": 1}, "shard file names"),
    ({"w": None}, "shard file names"),
    ({"w": ["model-1.safetensors"]}, "shard file names"),
    ({"w": ""}, "shard file names"),
    ([["w", "model-1.safetensors"]], "weight_map"),
    ("model-1.safetensors", "weight_map"),
    ({"w": "missing.safetensors"}, "missing shard"),
    ({"w": "/etc/passwd"}, "outside the index's folder"),
    ({"w": "../model-1.safetensors"}, "outside the index's folder"),
    ({"w": "sub/../../x.safetensors"}, "outside the index's folder"),
    ({"w": "..\\x.safetensors"}, "outside the index's folder"),
    ({"w": "sub"}, "directory"),
])
def test_bad_index_is_an_input_error(tmp_path, weight_map, fragment):
    index = sharded_folder(tmp_path, weight_map)
    (index.parent / "sub").mkdir()
    names = index.parent / "sub" if fragment == "directory" else index
    assert_refused(index, fragment, names=names)
    assert_refused(index.parent, fragment, names=names)


@pytest.mark.parametrize("raw,fragment", [
    (b"[1, 2]", "weight_map"),
    (b'{"weight_map":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b"\xff\xfe{}", "not a checkpoint index"),
    (b"", "empty file"),
])
def test_unparseable_index(tmp_path, raw, fragment):
    assert_refused(sharded_folder(tmp_path, raw=raw), fragment)


def test_index_cycle_between_two_folders_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "b.safetensors.index.json"}}))
    (a / "b.safetensors.index.json").symlink_to(b / "model.safetensors.index.json")
    (b / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "../a/model.safetensors.index.json"}}))
    assert_refused(a, "itself an index")
    assert_refused(b, "outside the index's folder")


def test_shard_symlinked_outside_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.safetensors"
    save_file({"s": torch.ones(1)}, str(secret))
    index = sharded_folder(tmp_path, {"w": "model-1.safetensors", "s": "link.safetensors"})
    (index.parent / "link.safetensors").symlink_to(secret)
    assert_refused(index, "outside the index's folder")


def test_hub_cache_snapshot_symlinks_into_blobs_still_work(tmp_path):
    """``snapshots/<rev>/shard -> ../../blobs/<hash>``: the layout the HF hub cache uses."""
    repo = tmp_path / "models--org--name"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True), blobs.mkdir()
    save_file({"w": torch.full((2, 2), 3.0)}, str(blobs / "deadbeef"))
    (snap / "model-1.safetensors").symlink_to("../../blobs/deadbeef")
    (blobs / "cafe").write_text(json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    (snap / "model.safetensors.index.json").symlink_to("../../blobs/cafe")
    src = open_source(str(snap))
    assert np.array_equal(src.read("w"), np.full((2, 2), 3.0))


# --- the guard mechanism itself -------------------------------------------------------


class _Broken(SourceBase):
    def __init__(self, exc: BaseException) -> None:
        super().__init__("broken.bin", "test", ("broken.bin",))
        self.exc = exc

    def entries(self):
        yield TensorInfo("a", (1,), "float32")
        raise self.exc

    def read(self, name: str) -> np.ndarray:
        raise self.exc


@pytest.mark.parametrize("exc", [ValueError("x"), RecursionError(), OverflowError(),
                                 KeyError("k"), TypeError("t"), struct.error("s"),
                                 zipfile.BadZipFile("z"), UnicodeDecodeError(
                                     "utf-8", b"\xff", 0, 1, "bad"),
                                 pickle.UnpicklingError("p"), RuntimeError("r"),
                                 MemoryError(), EOFError(), OSError(5, "I/O error")])
def test_every_reader_method_reports_parse_failures_as_input_errors(exc):
    src = _Broken(exc)
    with pytest.raises(InputError, match="broken.bin"):
        src.read("a")
    with pytest.raises(InputError, match="broken.bin"):
        list(src.entries())


def test_the_guard_lets_spectrum_errors_and_bugs_through():
    with pytest.raises(UsageError):
        _Broken(UsageError("u")).read("a")  # a UsageError is a ValueError too
    with pytest.raises(AssertionError):
        _Broken(AssertionError("bug")).read("a")
    assert issubclass(InputError, SpectrumError)
