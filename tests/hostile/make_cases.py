"""Hostile inputs for ``spectrum`` (issue 10): a generator of cases.

Each :class:`Case` is one command line run through the installed console script in its own
folder, with the files it needs, the exit codes the contract allows and the checks that
must hold (no traceback, no code run, inputs byte-identical, bounded memory, no hang).
Everything a payload could "run" only creates the marker file ``PWNED`` inside the case's
own folder: nothing here does anything else.

As a script::

    python tests/hostile/make_cases.py OUTDIR

writes every case under ``OUTDIR/<case id>/``, a manifest ``OUTDIR/cases.json`` and prints
how many cases each issue item has. ``tests/hostile/test_hostile.py`` runs them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import stat
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

#: The marker a payload would create (always inside the case folder).
MARKER = "PWNED"
#: Folders of a case the run may change (its HOME / XDG folders, the git-root marker).
SCRATCH = ("home", ".git")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_checkpoints"

Maker = Callable[[Path], None]


@dataclass
class Case:
    """One hostile run: ``spectrum *argv`` with cwd = the case folder (``cwd`` below it)."""

    id: str
    cls: int  # the issue item (1-19) the case belongs to
    argv: list[str]
    expect: tuple[int, ...] = (2,)
    make: Maker | None = field(default=None, repr=False, compare=False)
    description: str = ""
    #: paths (relative to the case folder) allowed to change: report targets, caches.
    unprotected: tuple[str, ...] = ()
    #: paths that must stay byte-identical; None = everything the generator wrote.
    protected: tuple[str, ...] | None = None
    markers: tuple[str, ...] = (MARKER,)
    stdout_is_json: bool | None = None  # None: when --json is in argv
    timeout: float = 90.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."
    #: spectrum command lines run first (their outcome is recorded, not judged), then
    #: mutations (name, kwargs) from :data:`MUTATIONS`, applied by the test before the run.
    setup: tuple[tuple[str, ...], ...] = ()
    mutate: tuple[tuple[str, dict], ...] = ()
    stderr_contains: tuple[str, ...] = ()  # each (case-insensitive) in stderr
    output_contains: tuple[str, ...] = ()  # each (case-insensitive) in stdout + stderr
    output_absent: tuple[str, ...] = ()  # none of these in stdout + stderr
    stdout_absent_re: tuple[str, ...] = ()  # no match (re.M) in stdout
    forbidden_globs: tuple[str, ...] = ()  # no path matching these after the run
    requires_root: bool = False
    skip: str | None = None

    @property
    def wants_json(self) -> bool:
        return self.stdout_is_json if self.stdout_is_json is not None else "--json" in self.argv

    def manifest(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("make")
        return d


# --------------------------------------------------------------------------- writers


def _rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def st_bytes(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file: ``header`` a dict (dumped), str or bytes (as is)."""
    raw = header if isinstance(header, bytes) else (
        header.encode() if isinstance(header, str) else json.dumps(header).encode())
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + data


def st_valid(tensors: dict[str, np.ndarray]) -> bytes:
    """A valid safetensors file of float32 (or float64) tensors, in the given order."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        code = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64"}[a.dtype.newbyteorder("<")]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    return st_bytes(header, b"".join(blobs))


def mat(m: int = 6, n: int = 4, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((m, n)) * scale).astype(np.float32)


def good_st(seed: int = 0) -> bytes:
    return st_valid({"layer.0.weight": mat(6, 4, seed=seed), "layer.1.weight": mat(5, 6, seed=seed + 1)})


def npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npy_header(descr: str, shape: tuple, fortran: bool = False) -> bytes:
    """A version 1.0 ``.npy`` header (magic included), padded to 64 bytes."""
    d = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    body = d + " " * ((64 - (10 + len(d) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


# --- pickles ---------------------------------------------------------------------


def _ustr(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _short(s: str) -> bytes:
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE (protocol 4)


def _touch_cmd(marker: Path) -> str:
    return f"touch '{marker}'"


def _py_create(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def payload(kind: str, marker: Path) -> bytes:
    """The body (no PROTO, no STOP) of a pickle that, if unpickled, creates ``marker``."""
    if kind == "os_system":
        return b"cos\nsystem\n(" + _ustr(_touch_cmd(marker)) + b"tR"
    if kind == "posix_system":
        return b"cposix\nsystem\n(" + _ustr(_touch_cmd(marker)) + b"tR"
    if kind == "exec":
        return b"cbuiltins\nexec\n(" + _ustr(_py_create(marker)) + b"tR"
    if kind == "eval":
        return b"cbuiltins\neval\n(" + _ustr(_py_create(marker)) + b"tR"
    if kind == "open":
        return b"cbuiltins\nopen\n(" + _ustr(str(marker)) + _ustr("w") + b"tR"
    if kind == "stack_global":
        return _short("builtins") + _short("exec") + b"\x93(" + _ustr(_py_create(marker)) + b"tR"
    if kind == "memo_decoy":
        # the real global comes through the memo; the last strings seen are a decoy
        return (_short("os") + b"\x94" + _short("system") + b"\x94"
                + _short("collections") + b"\x94" + _short("OrderedDict") + b"\x94"
                + b"00" + b"h\x00h\x01" + b"\x93(" + _ustr(_touch_cmd(marker)) + b"tR")
    if kind == "memo_global":
        # GLOBAL memoized and popped, fetched again by BINGET and called
        return (b"cos\nsystem\n\x94" + b"0" + b"h\x00(" + _ustr(_touch_cmd(marker)) + b"tR")
    if kind == "inst":
        return b"(" + _ustr(_touch_cmd(marker)) + b"ios\nsystem\n"
    if kind == "obj":
        return b"(cos\nsystem\n" + _ustr(_touch_cmd(marker)) + b"o"
    if kind == "build":
        # an object whose BUILD state would be applied by a malicious __setstate__-like global
        return (b"cbuiltins\nexec\n(" + _ustr(_py_create(marker)) + b"tR" + b"}b")
    raise ValueError(kind)


PAYLOADS = ("os_system", "posix_system", "exec", "eval", "open", "stack_global",
            "memo_decoy", "memo_global", "inst", "obj", "build")


def pickle_of(body: bytes, proto: int = 4, nested: bool = True) -> bytes:
    """A full pickle: ``{"state_dict": {"w": <body>}}`` (or the body alone)."""
    head = b"\x80" + bytes([proto])
    if nested:
        return head + b"}" + _ustr("state_dict") + b"}" + _ustr("w") + body + b"ss."
    return head + body + b"."


def torch_zip(pkl: bytes, extra: dict[str, bytes] | None = None, prefix: str = "archive") -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        z.writestr(f"{prefix}/byteorder", "little")
        z.writestr(f"{prefix}/version", "3\n")
        for k, v in (extra or {}).items():
            z.writestr(f"{prefix}/{k}", v)
    return buf.getvalue()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def torch_legacy(obj_pickle: bytes, slot: str = "object") -> bytes:
    """A pre-zip ``torch.save`` file: magic, protocol, sys_info, object, storage keys; the
    hostile pickle goes in ``slot``."""
    magic = pickle.dumps(_LEGACY_MAGIC, protocol=2)
    proto = pickle.dumps(1001, protocol=2)
    info = pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    keys = pickle.dumps([], protocol=2)
    benign = pickle.dumps({"w": [1.0]}, protocol=2)
    if slot == "object":
        return magic + proto + info + obj_pickle + keys
    if slot == "sys_info":
        return magic + proto + obj_pickle + benign + keys
    if slot == "storage_keys":
        return magic + proto + info + benign + obj_pickle
    raise ValueError(slot)


def deep_pickle(depth: int, proto: int = 2, kind: str = "list") -> bytes:
    """A pickle nesting ``depth`` empty lists (or dicts) inside each other."""
    if kind == "list":
        return b"\x80" + bytes([proto]) + b"]" * depth + b"a" * (depth - 1) + b"."
    # dicts: {"k": {"k": ...}}
    return (b"\x80" + bytes([proto]) + (b"}" + _ustr("k")) * (depth - 1) + b"}"
            + b"s" * (depth - 1) + b".")


def deep_json(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


# --- zip bomb (streamed: declared GiBs, a few MB on disk) -------------------------------

BOMB_SHAPE = (16384, 16384)  # float64: 2 GiB
_MIB = 1 << 20


@lru_cache(maxsize=None)
def _zero_block() -> tuple[bytes, bytes, bytes]:
    """Raw-deflate pieces: the byte-aligned block of 1 MiB zeros (repeatable after a full
    flush), and the final empty block."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = co.compress(bytes(_MIB)) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(bytes(_MIB)) + co.flush(zlib.Z_FULL_FLUSH)
    assert first == again, "deflate full-flush blocks are not repeatable"
    return first, b"", co.flush(zlib.Z_FINISH)


@lru_cache(maxsize=None)
def _zeros_crc(n_mib: int, head: bytes) -> int:
    c = zlib.crc32(head)
    z = bytes(_MIB)
    for _ in range(n_mib):
        c = zlib.crc32(z, c)
    return c


def write_bomb_npz(path: Path, member: str = "w.npy", shape: tuple[int, int] = BOMB_SHAPE) -> None:
    """An ``.npz`` whose one member declares ``shape`` float64 zeros, deflated to ~1/1000."""
    head = npy_header("<f8", shape)
    nbytes = shape[0] * shape[1] * 8
    assert nbytes % _MIB == 0
    n = nbytes // _MIB
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head_c = co.compress(head) + co.flush(zlib.Z_FULL_FLUSH)
    block, _, final = _zero_block()
    csize = len(head_c) + n * len(block) + len(final)
    usize = len(head) + nbytes
    crc = _zeros_crc(n, head)
    name = member.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, csize,
                            usize, len(name), 0) + name
        fh.write(local)
        fh.write(head_c)
        for _ in range(n):
            fh.write(block)
        fh.write(final)
        cd_off = fh.tell()
        central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc,
                              csize, usize, len(name), 0, 0, 0, 0, 0o644 << 16, 0) + name
        fh.write(central)
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), cd_off, 0))


def npz_of(members: dict[str, bytes], compress: bool = False) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


# --------------------------------------------------------------------------- the cases


class Builder:
    """Collects cases; ``root`` decides each case's folder (and so its marker path)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cases: list[Case] = []

    def dir(self, cid: str) -> Path:
        return self.root / cid

    def marker(self, cid: str) -> Path:
        return self.dir(cid) / MARKER

    def add(self, cid: str, cls: int, argv: Sequence[str], make: Maker | None = None,
            **kw: Any) -> Case:
        assert all(c.id != cid for c in self.cases), cid
        case = Case(id=cid, cls=cls, argv=list(argv), make=make, **kw)
        self.cases.append(case)
        return case

    def files(self, cid: str, cls: int, argv: Sequence[str], files: dict[str, bytes | str],
              **kw: Any) -> Case:
        """A case whose folder holds exactly ``files`` (relative path -> content)."""
        def make(d: Path) -> None:
            for rel, data in files.items():
                write(d / rel, data)
        return self.add(cid, cls, argv, make, **kw)


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def _mknod(path: Path, major: int, minor: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))


def _write_all(d: Path, files: dict[str, bytes | str]) -> None:
    for rel, data in files.items():
        write(d / rel, data)


# item 1: report targets ---------------------------------------------------------------

def item1(b: Builder) -> None:
    st = good_st()
    npy = npy_bytes(mat(5, 5).astype(np.float64))
    b.files("report-onto-input-safetensors", 1, ["analyze", "v.safetensors", "--report", "v.safetensors"],
            {"v.safetensors": st})
    b.files("report-onto-input-npy", 1, ["analyze", "m.npy", "--report", "m.npy"], {"m.npy": npy})
    b.files("report-onto-input-json", 1, ["analyze", "v.safetensors", "--json", "--report", "v.safetensors"],
            {"v.safetensors": st})
    b.files("report-onto-input-relative-spelling", 1,
            ["analyze", "v.safetensors", "--report", "./sub/../v.safetensors"],
            {"v.safetensors": st, "sub/.keep": ""})
    b.files("report-onto-hf-folder-weights", 1,
            ["analyze", "model", "--report", "model/model.safetensors"],
            {"model/model.safetensors": st})
    b.files("batch-report-onto-step", 1, ["batch", "run", "--no-cache", "--report", "run/step-2.safetensors"],
            {"run/step-1.safetensors": good_st(1), "run/step-2.safetensors": good_st(2)})
    b.files("batch-plot-onto-step", 1, ["batch", "run", "--no-cache", "--plot", "run/step-2.safetensors"],
            {"run/step-1.safetensors": good_st(1), "run/step-2.safetensors": good_st(2)})
    b.files("report-onto-foreign-file", 1, ["analyze", "v.safetensors", "--report", "notes.txt"],
            {"v.safetensors": st, "notes.txt": "my precious notes\n"},
            description="a regular file that is not a spectrum report: refused without --force")
    b.files("report-onto-foreign-h5", 1, ["analyze", "v.safetensors", "--report", "data.h5"],
            {"v.safetensors": st, "data.h5": b"\x89HDF\r\n\x1a\n" + bytes(200)},
            description="an HDF5-looking file that is not a spectrum report")
    b.files("report-onto-foreign-file-force", 1,
            ["analyze", "v.safetensors", "--report", "notes.txt", "--force"],
            {"v.safetensors": st, "notes.txt": "replace me\n"}, expect=(0,),
            unprotected=("notes.txt",), description="--force allows replacing a regular file")

    def with_fifo(d: Path) -> None:
        write(d / "v.safetensors", st)
        _fifo(d / "out.h5")
    b.add("report-onto-fifo", 1, ["analyze", "v.safetensors", "--report", "out.h5"], with_fifo,
          timeout=30)

    def with_dir(d: Path) -> None:
        write(d / "v.safetensors", st)
        write(d / "out.h5" / "keep.txt", "inside a directory named like a report\n")
    b.add("report-onto-directory", 1, ["analyze", "v.safetensors", "--report", "out.h5"], with_dir)

    def with_link(d: Path) -> None:
        write(d / "v.safetensors", st)
        os.symlink("v.safetensors", d / "out.h5")
    b.add("report-onto-symlink-to-input", 1, ["analyze", "v.safetensors", "--report", "out.h5"],
          with_link)

    def with_link_other(d: Path) -> None:
        write(d / "v.safetensors", st)
        write(d / "other.bin", b"\x00user data\x00" * 10)
        os.symlink("other.bin", d / "out.h5")
    b.add("report-onto-symlink-to-foreign", 1, ["analyze", "v.safetensors", "--report", "out.h5"],
          with_link_other)

    def with_link_fifo(d: Path) -> None:
        write(d / "v.safetensors", st)
        _fifo(d / "pipe")
        os.symlink("pipe", d / "out.h5")
    b.add("report-onto-symlink-to-fifo", 1, ["analyze", "v.safetensors", "--report", "out.h5"],
          with_link_fifo, timeout=30)

    for name, (major, minor) in {"full": (1, 7), "null": (1, 3), "zero": (1, 5)}.items():
        def with_dev(d: Path, major=major, minor=minor) -> None:
            write(d / "v.safetensors", st)
            _mknod(d / "dev-copy", major, minor)
        b.add(f"report-onto-device-{name}", 1, ["analyze", "v.safetensors", "--report", "dev-copy"],
              with_dev, requires_root=True, timeout=30,
              description=f"a copy of /dev/{name} made with mknod")

    def with_report(d: Path) -> None:
        write(d / "v.safetensors", st)
    b.add("report-replace-own-report", 1, ["analyze", "v.safetensors", "--report", "r.h5"],
          with_report, expect=(0,), unprotected=("r.h5",),
          setup=(("analyze", "v.safetensors", "--report", "r.h5"),),
          description="replacing a spectrum report is allowed")
    b.files("batch-report-onto-hf-checkpoint", 1,
            ["batch", "run", "--no-cache", "--report", "run/checkpoint-2/model.safetensors"],
            {"run/checkpoint-1/model.safetensors": good_st(1),
             "run/checkpoint-2/model.safetensors": good_st(2)})
    b.files("pseudospectrum-plot-onto-input", 1,
            ["pseudospectrum", "m.npy", "--plot", "m.npy", "--eps", "1e-1"], {"m.npy": npy})


# item 2: code named by a configuration file -----------------------------------------

EVIL_PY = '''\
open({marker!r}, "w").close()


def build():
    open({marker!r}, "w").close()
    import torch
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def batch():
    open({marker!r}, "w").close()
    import torch
    return torch.zeros(8, 16), torch.zeros(8, 4)


def loss(out, y):
    open({marker!r}, "w").close()
    return ((out - y) ** 2).mean()
'''


def item2(b: Builder) -> None:
    ckpt = (SAMPLES / "tiny-mlp-sgd" / "checkpoint.pt").read_bytes()
    trust_msg = ("spectrum trust",)

    def folder(cid: str, config_name: str, config: str, sub: str = "folder") -> Maker:
        def make(d: Path) -> None:
            write(d / sub / "checkpoint.pt", ckpt)
            write(d / sub / "evil.py", EVIL_PY.format(marker=str(b.marker(cid))))
            write(d / sub / config_name, config)
        return make

    toml_model = 'model = "evil:build"\ndata = "spectrum_cli.examples:tiny_regression"\nloss = "mse"\n'
    cid = "config-evil-model"
    b.add(cid, 2, ["analyze", "folder/checkpoint.pt"], folder(cid, "spectrum.toml", toml_model),
          stderr_contains=trust_msg)
    cid = "config-evil-model-from-inside"
    b.add(cid, 2, ["analyze", "checkpoint.pt"], folder(cid, "spectrum.toml", toml_model),
          cwd="folder", stderr_contains=trust_msg)
    cid = "config-evil-model-json"
    b.add(cid, 2, ["analyze", "folder/checkpoint.pt", "--json"],
          folder(cid, "spectrum.toml", toml_model), stderr_contains=trust_msg)
    cid = "config-evil-data"
    b.add(cid, 2, ["analyze", "folder/checkpoint.pt"], folder(
        cid, "spectrum.toml", 'model = "spectrum_cli.examples:tiny_mlp"\ndata = "evil:batch"\n'),
        stderr_contains=trust_msg)
    cid = "config-evil-loss"
    b.add(cid, 2, ["analyze", "folder/checkpoint.pt"], folder(
        cid, "spectrum.toml", 'model = "spectrum_cli.examples:tiny_mlp"\n'
        'data = "spectrum_cli.examples:tiny_regression"\nloss = "evil:loss"\n'),
        stderr_contains=trust_msg)
    cid = "config-evil-pyproject"
    b.add(cid, 2, ["analyze", "folder/checkpoint.pt"], folder(
        cid, "pyproject.toml", '[project]\nname = "x"\n\n[tool.spectrum]\n' + toml_model),
        stderr_contains=trust_msg)
    cid = "config-evil-in-parent"
    b.add(cid, 2, ["analyze", "runs/exp/checkpoint.pt"], _parent_config(b, cid, ckpt, toml_model),
          stderr_contains=trust_msg)
    cid = "config-evil-batch"

    def batch_folder(d: Path, cid: str = cid) -> None:
        for i in (1, 2):
            write(d / "run" / f"step-{i}.pt", ckpt)
        write(d / "run" / "evil.py", EVIL_PY.format(marker=str(b.marker(cid))))
        write(d / "run" / "spectrum.toml", toml_model)
    b.add(cid, 2, ["batch", "run", "--no-cache"], batch_folder, stderr_contains=trust_msg)
    cid = "config-evil-model-command"
    b.add(cid, 2, ["model", "folder/checkpoint.pt"], folder(cid, "spectrum.toml", toml_model),
          stderr_contains=trust_msg)
    cid = "config-trusted-then-changed"
    b.add(cid, 2, ["analyze", "folder/checkpoint.pt"],
          folder(cid, "spectrum.toml", 'model = "spectrum_cli.examples:tiny_mlp"\n'
                 'data = "spectrum_cli.examples:tiny_regression"\nloss = "mse"\n'),
          setup=(("trust", "folder/spectrum.toml"),),
          mutate=(("write", {"path": "folder/spectrum.toml", "text": toml_model}),),
          stderr_contains=trust_msg,
          description="a trusted spectrum.toml whose content changed afterwards is refused")


def _parent_config(b: Builder, cid: str, ckpt: bytes, toml: str) -> Maker:
    def make(d: Path) -> None:
        write(d / "runs" / "exp" / "checkpoint.pt", ckpt)
        write(d / "runs" / "evil.py", EVIL_PY.format(marker=str(b.marker(cid))))
        write(d / "runs" / "spectrum.toml", toml)
    return make


# item 3: --trust-checkpoint covers the named file only ---------------------------------

def item3(b: Builder) -> None:
    st = good_st()
    for kind, container in (("os_system", "zip"), ("exec", "zip"), ("eval", "legacy"),
                            ("open", "raw")):
        cid = f"trust-sibling-optimizer-{kind}-{container}"
        body = pickle_of(payload(kind, b.marker(cid)), nested=False)
        blob = {"zip": lambda p: torch_zip(p), "legacy": lambda p: torch_legacy(p),
                "raw": lambda p: p}[container](body)
        b.files(cid, 3, ["analyze", "ckpt/model.safetensors", "--trust-checkpoint"],
                {"ckpt/model.safetensors": st, "ckpt/optimizer.pt": blob}, expect=(0, 2))
    cid = "trust-sibling-optimizer-folder-named-file"
    b.files(cid, 3, ["analyze", "checkpoint-5/model.safetensors", "--trust-checkpoint", "--json"],
            {"checkpoint-5/model.safetensors": st,
             "checkpoint-5/optimizer.pt": torch_zip(pickle_of(payload("os_system", b.marker(cid))))},
            expect=(0, 2))
    cid = "sibling-optimizer-no-trust"
    b.files(cid, 3, ["analyze", "ckpt/model.safetensors"],
            {"ckpt/model.safetensors": st,
             "ckpt/optimizer.pt": torch_zip(pickle_of(payload("exec", b.marker(cid))))},
            expect=(0, 2))
    cid = "trust-sibling-optimizer-diff"
    b.files(cid, 3, ["diff", "a/model.safetensors", "b/model.safetensors", "--trust-checkpoint"],
            {"a/model.safetensors": st, "b/model.safetensors": good_st(3),
             "a/optimizer.pt": torch_zip(pickle_of(payload("os_system", b.marker(cid))))},
            expect=(0, 2))


# item 4: usage errors -------------------------------------------------------------------

def item4(b: Builder) -> None:
    st = {"v.safetensors": good_st()}
    usage = ("usage",)
    rows: list[tuple[str, list[str], tuple[str, ...]]] = [
        ("usage-analyze-missing-argument", ["analyze"], usage),
        ("usage-batch-missing-argument", ["batch"], usage),
        ("usage-diff-missing-argument", ["diff", "v.safetensors"], usage),
        ("usage-report-show-missing-argument", ["report", "show"], usage),
        ("usage-unknown-option", ["analyze", "v.safetensors", "--no-such-option"], usage),
        ("usage-unknown-command", ["analyse", "v.safetensors"], usage),
        ("usage-unknown-subcommand", ["report", "shw", "x.h5"], usage),
        ("usage-top-zero", ["analyze", "v.safetensors", "--top", "0"], usage),
        ("usage-top-abc", ["analyze", "v.safetensors", "--top", "abc"], usage),
        ("usage-top-negative", ["analyze", "v.safetensors", "--top", "-3"], usage),
        ("usage-batch-top-abc", ["batch", ".", "--top", "abc"], usage),
        ("usage-batch-jobs-zero", ["batch", ".", "--jobs", "0"], usage),
        ("usage-report-show-top-zero", ["report", "show", "x.h5", "--top", "0"], usage),
        ("usage-option-missing-value", ["analyze", "v.safetensors", "--report"], usage),
        ("usage-seed-float", ["analyze", "v.safetensors", "--seed", "1.5"], usage),
        ("usage-resolution-out-of-range", ["pseudospectrum", "v.safetensors", "--resolution", "5"], usage),
        ("usage-bad-fail-on-syntax", ["analyze", "v.safetensors", "--fail-on", "kappa>>1e4"], ()),
        ("usage-bad-fail-on-metric", ["analyze", "v.safetensors", "--fail-on", "nonsense>1"], ()),
        ("usage-bad-fail-on-number", ["analyze", "v.safetensors", "--fail-on", "kappa>abc"], ()),
        ("usage-bad-fail-on-empty", ["analyze", "v.safetensors", "--fail-on", ""], ()),
        ("usage-bad-fail-on-batch", ["batch", ".", "--fail-on", "kappa<<"], ()),
        ("usage-bad-conv", ["analyze", "v.safetensors", "--conv", "fold"], ()),
        ("usage-bad-square", ["analyze", "v.safetensors", "--square", "sometimes"], ()),
        ("usage-bad-backend", ["analyze", "v.safetensors", "--backend", "quantum"], ()),
        ("usage-bad-dtype", ["analyze", "v.safetensors", "--dtype", "int8"], ()),
        ("usage-bad-eps", ["analyze", "v.safetensors", "--eps", "abc"], ()),
        ("usage-bad-eps-negative", ["analyze", "v.safetensors", "--eps", "-1"], ()),
        ("usage-bad-svd-route", ["analyze", "v.safetensors", "--svd-route", "magic"], ()),
        ("usage-bad-device", ["analyze", "v.safetensors", "--device", "tpu9"], ()),
        ("usage-bad-include-regex", ["analyze", "v.safetensors", "--include", "re:(unclosed"], ()),
        ("usage-bad-spike-factor", ["batch", ".", "--spike-factor", "-1"], ()),
        ("usage-threads-abc", ["analyze", "v.safetensors", "--threads", "abc"], usage),
        ("usage-threads-zero", ["analyze", "v.safetensors", "--threads", "0"], ()),
    ]
    for cid, argv, must in rows:
        b.files(cid, 18 if "threads" in cid else 4, argv, st, output_contains=must, timeout=60)


# item 5: bad inputs must exit 2 ------------------------------------------------------

def _st_cases() -> dict[str, bytes]:
    ok = mat(4, 3).tobytes()  # 48 bytes of F32 4x3
    def one(spec: Any, data: bytes = ok, name: str = "w") -> bytes:
        return st_bytes({name: spec}, data)
    F = "F32"
    return {
        "offsets-strings": one({"dtype": F, "shape": [4, 3], "data_offsets": ["0", "48"]}),
        "offsets-floats": one({"dtype": F, "shape": [4, 3], "data_offsets": [0.0, 48.5]}),
        "offsets-null": one({"dtype": F, "shape": [4, 3], "data_offsets": [None, None]}),
        "offsets-negative": one({"dtype": F, "shape": [4, 3], "data_offsets": [-48, 0]}),
        "offsets-reversed": one({"dtype": F, "shape": [4, 3], "data_offsets": [48, 0]}),
        "offsets-overflow": one({"dtype": F, "shape": [4, 3], "data_offsets": [2**70, 2**70 + 48]}),
        "offsets-int64-edge": one({"dtype": F, "shape": [4, 3],
                                   "data_offsets": [2**63 - 48, 2**63]}),
        "offsets-three": one({"dtype": F, "shape": [4, 3], "data_offsets": [0, 24, 48]}),
        "offsets-missing": one({"dtype": F, "shape": [4, 3]}),
        "offsets-dict": one({"dtype": F, "shape": [4, 3], "data_offsets": {"a": 0, "b": 48}}),
        "offsets-bool": one({"dtype": F, "shape": [4, 3], "data_offsets": [False, 48]}),
        "out-of-file": one({"dtype": F, "shape": [400, 300], "data_offsets": [0, 480000]}),
        "dims-negative": one({"dtype": F, "shape": [-4, -3], "data_offsets": [0, 48]}),
        "dims-one-negative": one({"dtype": F, "shape": [-1, 0], "data_offsets": [0, 0]}),
        "dims-float": one({"dtype": F, "shape": [4.5, 3], "data_offsets": [0, 48]}),
        "dims-string": one({"dtype": F, "shape": ["4", "x"], "data_offsets": [0, 48]}),
        "dims-bool": one({"dtype": F, "shape": [True, 12], "data_offsets": [0, 48]}),
        "dims-overflow-int64": one({"dtype": F, "shape": [2**32, 2**32], "data_offsets": [0, 0]}),
        "dims-overflow-huge": one({"dtype": F, "shape": [2**80, 1], "data_offsets": [0, 48]}),
        "dims-product-wraps": one({"dtype": F, "shape": [2**31, 2**31, 4], "data_offsets": [0, 0]}),
        "dims-many": one({"dtype": F, "shape": [1] * 5000 + [4, 3], "data_offsets": [0, 48]}),
        "dims-not-list": one({"dtype": F, "shape": 12, "data_offsets": [0, 48]}),
        "dims-nested": one({"dtype": F, "shape": [[4], [3]], "data_offsets": [0, 48]}),
        "dtype-unknown": one({"dtype": "F128", "shape": [4, 3], "data_offsets": [0, 48]}),
        "dtype-int": one({"dtype": 5, "shape": [4, 3], "data_offsets": [0, 48]}),
        "dtype-list": one({"dtype": ["F32"], "shape": [4, 3], "data_offsets": [0, 48]}),
        "dtype-missing": one({"shape": [4, 3], "data_offsets": [0, 48]}),
        "spec-not-object": st_bytes({"w": [1, 2, 3]}, ok),
        "spec-string": st_bytes({"w": "F32"}, ok),
        "empty-name": one({"dtype": F, "shape": [4, 3], "data_offsets": [0, 48]}, name=""),
        "metadata-not-object": st_bytes({"__metadata__": [1, 2],
                                         "w": {"dtype": F, "shape": [4, 3], "data_offsets": [0, 48]}}, ok),
        "metadata-deep": st_bytes('{"__metadata__": ' + deep_json(100000)
                                  + ', "w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}', ok),
        "deep-json-spec": st_bytes('{"w": ' + deep_json(100000) + '}', ok),
        "deep-json-dims": st_bytes('{"w": {"dtype": "F32", "shape": ' + deep_json(50000)
                                   + ', "data_offsets": [0, 48]}}', ok),
        "non-object-list": st_bytes("[1, 2, 3]", ok),
        "non-object-string": st_bytes('"hello"', ok),
        "non-object-number": st_bytes("12345", ok),
        "non-object-null": st_bytes("null", ok),
        "header-invalid-json": st_bytes('{"w": {"dtype": "F32",', ok),
        "header-not-utf8": st_bytes(b'{"w\xff\xfe": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}', ok),
        "header-nan": st_bytes('{"w": {"dtype": "F32", "shape": [NaN, 3], "data_offsets": [0, 48]}}', ok),
        "header-infinity-offsets": st_bytes('{"w": {"dtype": "F32", "shape": [4, 3], '
                                            '"data_offsets": [0, Infinity]}}', ok),
        "header-big-number-literal": st_bytes('{"w": {"dtype": "F32", "shape": [4, 3], '
                                              '"data_offsets": [0, 1' + "0" * 5000 + ']}}', ok),
        "header-length-huge": st_bytes('{"w": 1}', ok, length=2**63 + 5),
        "header-length-max": st_bytes('{"w": 1}', ok, length=2**64 - 1),
        "header-length-past-end": st_bytes('{"w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}',
                                           ok, length=10_000),
        "header-length-mid-json": st_bytes('{"w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}',
                                           ok, length=20),
        "header-only-8-bytes": struct.pack("<Q", 2) + b"{",
        "overlapping": st_bytes({"a": {"dtype": F, "shape": [4, 3], "data_offsets": [0, 48]},
                                 "b": {"dtype": F, "shape": [4, 3], "data_offsets": [0, 48]}}, ok),
        "overlapping-partial": st_bytes({"a": {"dtype": F, "shape": [4, 3], "data_offsets": [0, 48]},
                                         "b": {"dtype": F, "shape": [3, 3], "data_offsets": [12, 48]}},
                                        ok),
        "duplicate-keys": st_bytes('{"w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}, '
                                   '"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}', ok),
        "truncated-data": st_bytes({"w": {"dtype": F, "shape": [4, 3], "data_offsets": [0, 48]}}, ok[:20]),
    }


#: safetensors cases where accepting the file (exit 0) is also within the contract.
_ST_MAY_PASS = {"overlapping", "overlapping-partial", "duplicate-keys", "dims-many",
                "metadata-not-object"}


def item5(b: Builder) -> None:
    for name, blob in _st_cases().items():
        expect = (0, 2) if name in _ST_MAY_PASS else (2,)
        b.files(f"st-{name}", 5, ["analyze", "w.safetensors"], {"w.safetensors": blob},
                expect=expect, timeout=60)
    # a few through other commands
    bad = _st_cases()["offsets-strings"]
    b.files("st-bad-json-output", 5, ["analyze", "w.safetensors", "--json"], {"w.safetensors": bad})
    b.files("st-bad-in-batch", 5, ["batch", "run", "--no-cache"],
            {"run/step-1.safetensors": good_st(1), "run/step-2.safetensors": bad,
             "run/step-3.safetensors": good_st(3)})
    b.files("st-bad-in-diff", 5, ["diff", "a.safetensors", "b.safetensors"],
            {"a.safetensors": good_st(), "b.safetensors": _st_cases()["dims-overflow-int64"]})
    b.files("st-bad-pseudospectrum", 5, ["pseudospectrum", "w.safetensors"],
            {"w.safetensors": _st_cases()["empty-name"]})
    # torch pickles nested deep
    for depth, kind, container in ((10_000, "list", "zip"), (10_000, "dict", "zip"),
                                   (100_000, "list", "zip"), (10_000, "list", "legacy"),
                                   (10_000, "dict", "raw"), (10_000, "list", "raw")):
        pkl = deep_pickle(depth, kind=kind)
        blob = {"zip": torch_zip, "legacy": torch_legacy, "raw": lambda p: p}[container](pkl)
        b.files(f"pickle-deep-{kind}-{depth}-{container}", 5, ["analyze", "deep.pt"],
                {"deep.pt": blob})
    b.files("pickle-deep-optimizer-sibling", 5, ["analyze", "ckpt/model.safetensors"],
            {"ckpt/model.safetensors": good_st(),
             "ckpt/optimizer.pt": torch_zip(deep_pickle(10_000))}, expect=(0, 2))
    # corrupt zips
    real = (SAMPLES / "tiny-mlp" / "checkpoint.pt").read_bytes()
    npz = (SAMPLES / "tiny-mlp" / "weights.npz").read_bytes()
    corrupt = {
        "zip-truncated-half": real[: len(real) // 2],
        "zip-truncated-64": real[:64],
        "zip-no-central-directory": real[: real.rfind(b"PK\x01\x02")],
        "zip-garbage-after-magic": b"PK\x03\x04" + bytes(range(256)) * 8,
        "zip-flipped-bytes": real[:4000] + bytes(b ^ 0xFF for b in real[4000:4400]) + real[4400:],
        "zip-empty-archive": b"PK\x05\x06" + bytes(18),
        "zip-data-pkl-garbage": torch_zip(b"\x80\x02garbage that is not a pickle"),
        "zip-data-pkl-empty": torch_zip(b""),
        "zip-data-pkl-truncated": torch_zip(pickle.dumps({"a": [1, 2, 3]}, protocol=2)[:-5]),
        "zip-storage-missing": _torch_zip_missing_storage(real),
        "npz-truncated": npz[: len(npz) // 2],
    }
    for name, blob in corrupt.items():
        fname = "w.npz" if name.startswith("npz") else "ckpt.pt"
        # flipped bytes may fall in tensor data, which no format checksums for torch: fine
        expect = (0, 2) if name == "zip-flipped-bytes" else (2,)
        b.files(f"corrupt-{name}", 5, ["analyze", fname], {fname: blob}, expect=expect)
    b.files("corrupt-legacy-truncated", 5, ["analyze", "old.pt"],
            {"old.pt": torch_legacy(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))[:30]})
    b.files("corrupt-empty-file", 5, ["analyze", "empty.pt"], {"empty.pt": b""})
    b.files("corrupt-random-bytes", 5, ["analyze", "rand.pt"], {"rand.pt": bytes(range(256)) * 4})
    b.files("corrupt-npy-header", 5, ["analyze", "m.npy"],
            {"m.npy": b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f8', 'shape': (oops"})
    b.files("corrupt-npy-bad-descr", 5, ["analyze", "m.npy"],
            {"m.npy": npy_header("<f8'); import os; os.system('x", (2, 2)) + bytes(32)})
    b.files("corrupt-npy-negative-shape", 5, ["analyze", "m.npy"],
            {"m.npy": npy_header("<f8", (-2, 2)) + bytes(32)})
    # trainer_state.json garbage beside HF weights
    ts = {
        "not-json": "this is not json {",
        "list": "[]",
        "step-string": '{"global_step": "abc", "log_history": []}',
        "step-inf": '{"global_step": 1e400, "log_history": []}',
        "step-nan": '{"global_step": NaN, "log_history": []}',
        "history-not-list": '{"global_step": 5, "log_history": 7}',
        "history-entries-garbage": '{"global_step": 5, "log_history": [1, "x", null]}',
        "history-loss-string": '{"global_step": 5, "log_history": [{"loss": "x", "step": 1}]}',
        "history-step-dict": '{"global_step": 5, "log_history": [{"loss": 1.0, "step": {}}]}',
        "history-loss-huge": '{"global_step": 5, "log_history": [{"loss": 1e400, "step": 1}]}',
        "deep": '{"global_step": 5, "log_history": ' + deep_json(100000) + "}",
        "not-utf8": b'{"global_step": 5, "\xff\xfe": 1}',
    }
    for name, text in ts.items():
        b.files(f"trainer-state-{name}", 5, ["analyze", "ckpt"],
                {"ckpt/model.safetensors": good_st(), "ckpt/trainer_state.json": text}, expect=(0, 2))
    b.files("trainer-state-directory", 5, ["analyze", "ckpt"],
            {"ckpt/model.safetensors": good_st(), "ckpt/trainer_state.json/x": "dir"}, expect=(0, 2))
    # index.json
    idx_name = "model.safetensors.index.json"
    shard = good_st()
    index_cases = {
        "self-reference": {idx_name: json.dumps({"weight_map": {"w": idx_name}})},
        "cycle": {idx_name: json.dumps({"weight_map": {"w": "b.safetensors.index.json"}}),
                  "b.safetensors.index.json": json.dumps({"weight_map": {"w": idx_name}})},
        "empty-map": {idx_name: json.dumps({"weight_map": {}})},
        "map-list": {idx_name: json.dumps({"weight_map": ["model-1.safetensors"]})},
        "map-string": {idx_name: json.dumps({"weight_map": "model-1.safetensors"})},
        "map-values-int": {idx_name: json.dumps({"weight_map": {"w": 5}})},
        "map-values-null": {idx_name: json.dumps({"weight_map": {"w": None}})},
        "map-values-list": {idx_name: json.dumps({"weight_map": {"w": ["model-1.safetensors"]}})},
        "no-weight-map": {idx_name: json.dumps({"metadata": {}})},
        "not-json": {idx_name: "{{{"},
        "top-level-list": {idx_name: "[]"},
        "deep": {idx_name: '{"weight_map": ' + deep_json(100000) + "}"},
        "not-utf8": {idx_name: b'{"weight_map": {"\xff": "x"}}'},
        "missing-shard": {idx_name: json.dumps({"weight_map": {"w": "model-00001.safetensors"}})},
        "shard-is-directory": {idx_name: json.dumps({"weight_map": {"w": "shard.safetensors"}}),
                               "shard.safetensors/x": "dir"},
        "shard-nul-byte": {idx_name: json.dumps({"weight_map": {"w": "a\u0000b.safetensors"}})},
        "shard-empty-name": {idx_name: json.dumps({"weight_map": {"w": ""}})},
        "shard-dot": {idx_name: json.dumps({"weight_map": {"w": "."}})},
        "shard-is-report": {idx_name: json.dumps({"weight_map": {"w": "r.h5"}}),
                            "r.h5": b"\x89HDF\r\n\x1a\n" + bytes(64)},
        "duplicate-tensor": {idx_name: json.dumps({"weight_map": {"layer.0.weight": "a.safetensors",
                                                                  "x": "b.safetensors"}}),
                             "a.safetensors": shard, "b.safetensors": shard},
    }
    for name, files in index_cases.items():
        b.files(f"index-{name}", 5, ["analyze", "model"], {f"model/{k}": v for k, v in files.items()},
                timeout=60)
    b.files("index-self-reference-direct", 5, ["analyze", f"model/{idx_name}"],
            {f"model/{idx_name}": json.dumps({"weight_map": {"w": idx_name}})})
    b.files("index-bin-self-reference", 5, ["analyze", "model"],
            {"model/pytorch_model.bin.index.json":
             json.dumps({"weight_map": {"w": "pytorch_model.bin.index.json"}})})
    # report into a missing / unwritable location
    st = {"v.safetensors": good_st()}
    b.files("report-into-missing-dir", 5, ["analyze", "v.safetensors", "--report", "no/such/dir/r.h5"], st)
    b.files("report-into-proc", 5, ["analyze", "v.safetensors", "--report", "/proc/spectrum-hostile-r.h5"], st)
    b.files("report-under-a-file", 5, ["analyze", "v.safetensors", "--report", "v.safetensors/r.h5"], st)
    b.files("report-name-empty", 5, ["analyze", "v.safetensors", "--report", ""], st)

    def readonly(d: Path) -> None:
        _write_all(d, st)
        (d / "ro").mkdir()
        os.chmod(d / "ro", 0o555)
    b.add("report-into-readonly-dir", 5, ["analyze", "v.safetensors", "--report", "ro/r.h5"],
          readonly, skip="root ignores directory permissions" if IS_ROOT else None)
    b.files("batch-report-into-missing-dir", 5,
            ["batch", "run", "--no-cache", "--report", "no/dir/t.h5"],
            {"run/step-1.safetensors": good_st(1), "run/step-2.safetensors": good_st(2)})
    b.files("batch-plot-into-missing-dir", 5,
            ["batch", "run", "--no-cache", "--plot", "no/dir/p.png"],
            {"run/step-1.safetensors": good_st(1), "run/step-2.safetensors": good_st(2)})
    # bad configuration values
    npy = {"m.npy": npy_bytes(mat(5, 5).astype(np.float64))}
    configs = {
        "int-1e400": "square_max_dim = 1e400\n",
        "int-inf": "power_max = inf\n",
        "int-nan": "dense_max = nan\n",
        "int-huge": "power_max = 1000000000000000\n",
        "int-negative": "power_max = -5\n",
        "float-string": 'effective_rank_tau = "abc"\n',
        "float-nan": "effective_rank_tau = nan\n",
        "float-negative": "effective_rank_tau = -1.0\n",
        "seed-string": 'seed = "abc"\n',
        "list-int": "include = 5\n",
        "list-mixed": 'exclude = ["a", 1]\n',
        "bool-string": 'eps_relative = "maybe"\n',
        "str-table": "backend = { name = 'dense' }\n",
        "str-list": 'square = ["all"]\n',
        "unknown-key": 'frobnicate = true\n',
        "unknown-square": 'square = "sometimes"\n',
        "eps-garbage": 'eps = ["abc"]\n',
        "eps-negative": "eps = [-1.0]\n",
        "fail-on-garbage": 'fail_on = ["kappa>>"]\n',
        "non-utf8": b'model = "\xff\xfe"\n',
        "invalid-toml": "this is = = not toml\n",
        "duplicate-key": "seed = 1\nseed = 2\n",
        "deep-array": "include = " + "[" * 5000 + "]" * 5000 + "\n",
        "trust-checkpoint": "trust_checkpoint = true\n",
        "allow-global": 'allow_global = ["os.system"]\n',
        "weights-only-false": "weights_only = false\n",
        "trust-kebab": "trust-checkpoint = true\n",
    }
    for name, text in configs.items():
        b.files(f"config-{name}", 5, ["analyze", "m.npy"], {**npy, "spectrum.toml": text}, timeout=60)
    b.files("config-pyproject-trust", 5, ["analyze", "m.npy"],
            {**npy, "pyproject.toml": "[tool.spectrum]\ntrust_checkpoint = true\n"})
    b.files("config-pyproject-not-utf8", 5, ["analyze", "m.npy"],
            {**npy, "pyproject.toml": b"[tool.spectrum]\nseed = 1 # \xff\n"})
    b.files("config-pyproject-tool-not-table", 5, ["analyze", "m.npy"],
            {**npy, "pyproject.toml": "tool = 5\n"}, expect=(0, 2))
    b.files("config-pyproject-spectrum-not-table", 5, ["analyze", "m.npy"],
            {**npy, "pyproject.toml": "[tool]\nspectrum = 5\n"})
    for name, (var, value) in {"env-trust": ("SPECTRUM_TRUST_CHECKPOINT", "1"),
                               "env-int-1e400": ("SPECTRUM_POWER_MAX", "1e400"),
                               "env-seed-abc": ("SPECTRUM_SEED", "abc"),
                               "env-allow-global": ("SPECTRUM_ALLOW_GLOBAL", "os.system")}.items():
        b.files(f"config-{name}", 5, ["analyze", "m.npy"], dict(npy), env={var: value})
    b.files("config-in-batch-folder", 5, ["batch", "run", "--no-cache"],
            {"run/step-1.safetensors": good_st(1), "run/spectrum.toml": "square_max_dim = 1e400\n"})


def _torch_zip_missing_storage(real: bytes) -> bytes:
    import io

    src = zipfile.ZipFile(io.BytesIO(real))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            if "/data/" not in info.filename:
                z.writestr(info.filename, src.read(info))
    return buf.getvalue()


# item 6: malicious pickles and the scanner ---------------------------------------------

def item6(b: Builder) -> None:
    good = good_st()
    for kind in PAYLOADS:
        for container in ("zip", "legacy", "raw"):
            cid = f"pickle-{kind}-{container}"
            pkl = pickle_of(payload(kind, b.marker(cid)), proto=4 if kind in (
                "stack_global", "memo_decoy") else 2)
            blob = {"zip": torch_zip, "legacy": torch_legacy, "raw": lambda p: p}[container](pkl)
            must = ("os.system",) if kind == "memo_decoy" else ()
            b.files(cid, 6, ["analyze", "ckpt.pt"], {"ckpt.pt": blob}, stderr_contains=must)
    mk = b.marker
    body = lambda cid, kind="os_system": pickle_of(payload(kind, mk(cid)))  # noqa: E731
    cid = "pickle-legacy-in-sys-info"
    b.files(cid, 6, ["analyze", "old.pt"], {"old.pt": torch_legacy(body(cid), slot="sys_info")})
    cid = "pickle-legacy-in-storage-keys"
    b.files(cid, 6, ["analyze", "old.pt"], {"old.pt": torch_legacy(body(cid), slot="storage_keys")})
    cid = "pickle-not-nested"
    b.files(cid, 6, ["analyze", "x.pth"], {"x.pth": torch_zip(pickle_of(payload("exec", mk(cid)), nested=False))})
    for ext in ("bin", "ckpt", "pth"):
        cid = f"pickle-ext-{ext}"
        b.files(cid, 6, ["analyze", f"model.{ext}"], {f"model.{ext}": torch_zip(body(cid))})
    cid = "pickle-zip-odd-prefix"
    b.files(cid, 6, ["analyze", "ckpt.pt"], {"ckpt.pt": torch_zip(body(cid), prefix="weird name")})
    cid = "pickle-hf-folder"
    b.files(cid, 6, ["analyze", "model"], {"model/pytorch_model.bin": torch_zip(body(cid))})
    cid = "pickle-hf-shard"
    b.files(cid, 6, ["analyze", "model"], {
        "model/pytorch_model.bin.index.json": json.dumps(
            {"weight_map": {"a": "pytorch_model-00001.bin", "b": "pytorch_model-00002.bin"}}),
        "model/pytorch_model-00001.bin": torch_zip(pickle.dumps({}, protocol=2)),
        "model/pytorch_model-00002.bin": torch_zip(body(cid))})
    cid = "pickle-in-batch"
    b.files(cid, 6, ["batch", "run", "--no-cache"], {
        "run/step-1.safetensors": good_st(1), "run/step-2.pt": torch_zip(body(cid, "exec")),
        "run/step-3.safetensors": good_st(3)})
    cid = "pickle-in-batch-jobs2"
    b.files(cid, 6, ["batch", "run", "--no-cache", "-j", "2"], {
        "run/step-1.safetensors": good_st(1), "run/step-2.pt": torch_zip(body(cid, "exec")),
        "run/step-3.pt": torch_legacy(body(cid, "eval"))})
    cid = "pickle-in-diff"
    b.files(cid, 6, ["diff", "a.safetensors", "b.pt"], {"a.safetensors": good, "b.pt": torch_zip(body(cid))})
    cid = "pickle-in-diff-md"
    b.files(cid, 6, ["diff", "a.pt", "b.safetensors", "--md"],
            {"a.pt": torch_legacy(body(cid)), "b.safetensors": good})
    cid = "pickle-in-pseudospectrum"
    b.files(cid, 6, ["pseudospectrum", "a.pt"], {"a.pt": torch_zip(body(cid, "eval"))})
    cid = "pickle-in-model-command"
    b.files(cid, 6, ["model", "a.pt", "--model", "spectrum_cli.examples:tiny_mlp", "--data",
                     "spectrum_cli.examples:tiny_regression"], {"a.pt": torch_zip(body(cid))})
    cid = "pickle-json-output"
    b.files(cid, 6, ["analyze", "a.pt", "--json"], {"a.pt": torch_zip(body(cid))})
    cid = "pickle-allow-global-unrelated"
    b.files(cid, 6, ["analyze", "a.pt", "--allow-global", "argparse.Namespace"],
            {"a.pt": torch_zip(body(cid))})
    cid = "pickle-allow-global-typo"
    b.files(cid, 6, ["analyze", "a.pt", "--allow-global", "argparse.Namspace"],
            {"a.pt": torch_zip(pickle.dumps({}, protocol=2))},
            output_absent=("corrupt or truncated",), output_contains=("argparse.Namspace",))
    cid = "pickle-allow-global-no-module"
    b.files(cid, 6, ["analyze", "a.pt", "--allow-global", "no_such_module_xyz.Thing"],
            {"a.pt": torch_zip(pickle.dumps({}, protocol=2))},
            output_absent=("corrupt or truncated",))
    cid = "pickle-npy-object"
    b.files(cid, 6, ["analyze", "m.npy"],
            {"m.npy": npy_header("|O", (1,)) + pickle_of(payload("os_system", mk(cid)), nested=False)},
            expect=(2, 5))
    cid = "pickle-npz-object"
    b.files(cid, 6, ["analyze", "m.npz"], {"m.npz": npz_of({
        "w.npy": npy_header("|O", (1,)) + pickle_of(payload("exec", mk(cid)), nested=False)})},
            expect=(2, 5))
    cid = "pickle-trainer-state-sibling-pt"
    b.files(cid, 6, ["analyze", "ckpt"], {
        "ckpt/model.safetensors": good, "ckpt/scheduler.pt": torch_zip(body(cid)),
        "ckpt/rng_state.pth": torch_zip(body(cid, "exec")),
        "ckpt/training_args.bin": torch_zip(body(cid, "eval"))}, expect=(0, 2))


# item 7: declared sizes -----------------------------------------------------------------

def item7(b: Builder) -> None:
    b.add("npz-bomb", 7, ["analyze", "bomb.npz"], lambda d: write_bomb_npz(d / "bomb.npz"),
          timeout=120)
    b.add("npz-bomb-json", 7, ["analyze", "bomb.npz", "--json"],
          lambda d: write_bomb_npz(d / "bomb.npz"), timeout=120)
    b.add("npz-bomb-pseudospectrum", 7, ["pseudospectrum", "bomb.npz"],
          lambda d: write_bomb_npz(d / "bomb.npz"), timeout=120)
    b.add("npz-bomb-diff", 7, ["diff", "bomb.npz", "small.npz"],
          lambda d: (write_bomb_npz(d / "bomb.npz"),
                     write(d / "small.npz", npz_of({"w.npy": npy_bytes(mat(8, 8).astype(np.float64))}))),
          timeout=120)
    b.files("npy-declares-more-than-file", 7, ["analyze", "m.npy"],
            {"m.npy": npy_header("<f8", (100000, 100000)) + bytes(800)})
    b.files("npy-declares-overflow", 7, ["analyze", "m.npy"],
            {"m.npy": npy_header("<f8", (2**40, 2**40)) + bytes(64)})
    b.files("npz-member-declares-more", 7, ["analyze", "m.npz"],
            {"m.npz": npz_of({"w.npy": npy_header("<f8", (60000, 60000)) + bytes(128)})})
    b.files("npz-member-declares-more-deflated", 7, ["analyze", "m.npz"],
            {"m.npz": npz_of({"w.npy": npy_header("<f4", (50000, 40000)) + bytes(4096)}, compress=True)})
    b.files("npz-many-members", 7, ["analyze", "m.npz"],
            {"m.npz": npz_of({f"w{i}.npy": npy_header("<f8", (30000, 30000)) for i in range(50)})})
    # HDF5 reports (made by the real CLI in setup, then altered)
    st = {"v.safetensors": good_st()}
    setup = (("analyze", "v.safetensors", "--report", "r.h5"),)
    huge = {"skipped-name": ("skipped/name", "str"), "errors-message": ("errors/message", "str"),
            "skipped-shape": ("skipped/shape", "str")}
    for name, (dset, kind) in huge.items():
        b.files(f"h5-huge-{name}", 7, ["report", "show", "r.h5"], st, setup=setup,
                mutate=(("h5_huge_dataset", {"file": "r.h5", "dataset": dset, "kind": kind}),),
                timeout=120)
    b.files("h5-huge-json", 7, ["report", "show", "r.h5", "--json"], st, setup=setup,
            mutate=(("h5_huge_dataset", {"file": "r.h5", "dataset": "skipped/name", "kind": "str"}),),
            timeout=120)
    b.files("h5-huge-singular-values-diff", 7, ["diff", "r.h5", "s.h5"], st,
            setup=setup + (("analyze", "v.safetensors", "--report", "s.h5"),),
            mutate=(("h5_huge_dataset", {"file": "r.h5", "dataset": "tensors/*/singular_values",
                                         "kind": "f8"}),), timeout=120)
    b.files("h5-huge-trajectory-indicator", 7, ["report", "show", "t.h5"],
            {"run/step-1.safetensors": good_st(1), "run/step-2.safetensors": good_st(2)},
            setup=(("batch", "run", "--no-cache", "--report", "t.h5"),),
            mutate=(("h5_huge_dataset", {"file": "t.h5", "dataset": "indicators/*", "kind": "f8"}),),
            timeout=120)


# item 8: non-regular files ---------------------------------------------------------------

def item8(b: Builder) -> None:
    st = good_st()

    def fifo_case(cid: str, argv: list[str], fifos: list[str], files: dict[str, bytes | str] | None = None,
                  expect: tuple[int, ...] = (2,), **kw: Any) -> None:
        def make(d: Path) -> None:
            _write_all(d, files or {})
            for f in fifos:
                _fifo(d / f)
        b.add(cid, 8, argv, make, expect=expect, timeout=30, **kw)

    fifo_case("fifo-model-pt", ["analyze", "model.pt"], ["model.pt"])
    fifo_case("fifo-model-safetensors-json", ["analyze", "model.safetensors", "--json"], ["model.safetensors"])
    fifo_case("fifo-npy", ["analyze", "m.npy"], ["m.npy"])
    fifo_case("fifo-in-hf-folder", ["analyze", "model"], ["model/model.safetensors"])
    fifo_case("fifo-in-hf-folder-bin", ["analyze", "model"], ["model/pytorch_model.bin"])
    fifo_case("fifo-index-json", ["analyze", "model"], ["model/model.safetensors.index.json"])
    fifo_case("fifo-shard", ["analyze", "model"], ["model/model-00002.safetensors"], {
        "model/model.safetensors.index.json": json.dumps(
            {"weight_map": {"a": "model-00001.safetensors", "b": "model-00002.safetensors"}}),
        "model/model-00001.safetensors": st})
    fifo_case("fifo-in-batch", ["batch", "run", "--no-cache"], ["run/step-2.pt"],
              {"run/step-1.safetensors": good_st(1), "run/step-3.safetensors": good_st(3)},
              expect=(0, 2))
    fifo_case("fifo-trainer-state", ["analyze", "ckpt"], ["ckpt/trainer_state.json"],
              {"ckpt/model.safetensors": st}, expect=(0, 2))
    fifo_case("fifo-optimizer-sibling", ["analyze", "ckpt/model.safetensors"], ["ckpt/optimizer.pt"],
              {"ckpt/model.safetensors": st}, expect=(0, 2))
    fifo_case("fifo-spectrum-toml", ["analyze", "v.safetensors"], ["spectrum.toml"],
              {"v.safetensors": st}, expect=(0, 2))
    fifo_case("fifo-report-show", ["report", "show", "r.h5"], ["r.h5"])
    fifo_case("fifo-diff", ["diff", "a.safetensors", "b.safetensors"], ["b.safetensors"],
              {"a.safetensors": st})
    fifo_case("fifo-pseudospectrum", ["pseudospectrum", "m.npy"], ["m.npy"])

    def symlink_to_fifo(d: Path) -> None:
        _fifo(d / "pipe")
        os.symlink("pipe", d / "model.pt")
    b.add("fifo-behind-symlink", 8, ["analyze", "model.pt"], symlink_to_fifo, timeout=30)

    def dev_zero(d: Path) -> None:
        _mknod(d / "model.pt", 1, 5)
    b.add("device-zero-as-checkpoint", 8, ["analyze", "model.pt"], dev_zero, timeout=30,
          requires_root=True)

    def dev_zero_st(d: Path) -> None:
        _mknod(d / "model" / "model.safetensors", 1, 5)
    b.add("device-zero-in-hf-folder", 8, ["analyze", "model"], dev_zero_st, timeout=30,
          requires_root=True)
    b.add("proc-file-as-checkpoint", 8, ["analyze", "/proc/self/status"], None, timeout=30)


# item 9: entries near the overflow threshold --------------------------------------------

def item9(b: Builder) -> None:
    r = _rng()
    mats = {
        "1e300-rect": r.standard_normal((12, 7)) * 1e300,
        "1e300-square": r.standard_normal((16, 16)) * 1e300,
        "1e300-negative": -np.abs(r.standard_normal((10, 6))) * 1e300,
        "1e-300-square": r.standard_normal((9, 9)) * 1e-300,
        "mixed-1e300-1e-300": np.diag([1e300, 1.0, 1e-300, 1e-200]),
        "max-float": np.full((4, 4), np.finfo(np.float64).max) * np.eye(4) + np.eye(4),
        "near-max-random": r.standard_normal((8, 8)) * 1e307,
        "subnormal": r.standard_normal((6, 6)) * 5e-320,
    }
    for name, m in mats.items():
        files = {"m.npy": npy_bytes(m.astype(np.float64))}
        b.files(f"huge-entries-{name}-json", 9, ["analyze", "m.npy", "--json"], files, expect=(0,),
                output_absent=("DLASCL", "On entry to"))
    b.files("huge-entries-table", 9, ["analyze", "m.npy"],
            {"m.npy": npy_bytes(r.standard_normal((16, 16)) * 1e300)}, expect=(0,),
            output_absent=("DLASCL", "On entry to", "did not converge"))
    b.files("huge-entries-square-all-json", 9, ["analyze", "m.npy", "--json", "--square", "all",
                                                "--eps", "1e-3"],
            {"m.npy": npy_bytes(r.standard_normal((20, 20)) * 1e300)}, expect=(0,))
    b.files("huge-entries-pseudospectrum-json", 9, ["pseudospectrum", "m.npy", "--json", "--eps", "1e-2",
                                                    "--resolution", "20"],
            {"m.npy": npy_bytes(r.standard_normal((10, 10)) * 1e300)}, expect=(0,))
    b.files("huge-entries-safetensors-json", 9, ["analyze", "w.safetensors", "--json"],
            {"w.safetensors": st_valid({"w": r.standard_normal((8, 5)) * 1e300})}, expect=(0,))
    b.files("huge-entries-diff-json", 9, ["diff", "a.npy", "b.npy", "--json"],
            {"a.npy": npy_bytes(r.standard_normal((8, 8)) * 1e300),
             "b.npy": npy_bytes(r.standard_normal((8, 8)) * 1e300)}, expect=(0,))


# item 10: paths that leave the folder ------------------------------------------------------

def item10(b: Builder) -> None:
    st = good_st(7)
    idx = "model.safetensors.index.json"

    def abs_shard(cid: str) -> Maker:
        def make(d: Path) -> None:
            write(d / "outside" / "secret.safetensors", st)
            write(d / "model" / idx, json.dumps(
                {"weight_map": {"w": str(d / "outside" / "secret.safetensors")}}))
        return make
    b.add("index-absolute-shard", 10, ["analyze", "model"], abs_shard("index-absolute-shard"))
    b.add("index-absolute-shard-json", 10, ["analyze", "model", "--json"],
          abs_shard("index-absolute-shard-json"))
    b.files("index-absolute-proc", 10, ["analyze", "model"],
            {f"model/{idx}": json.dumps({"weight_map": {"w": "/proc/self/environ"}})})
    b.files("index-dotdot-escape", 10, ["analyze", "run/model"], {
        "secret.safetensors": st,
        f"run/model/{idx}": json.dumps({"weight_map": {"w": "../../secret.safetensors"}})})
    b.files("index-dotdot-inner", 10, ["analyze", "model"], {
        "secret.safetensors": st,
        f"model/{idx}": json.dumps({"weight_map": {"w": "sub/../../secret.safetensors"}}),
        "model/sub/.keep": ""})
    b.files("index-bin-dotdot", 10, ["analyze", "model"], {
        "secret.safetensors": st,
        "model/pytorch_model.bin.index.json": json.dumps({"weight_map": {"w": "../secret.safetensors"}})})

    def symlink_out(d: Path) -> None:
        write(d / "outside" / "secret.safetensors", st)
        write(d / "model" / idx, json.dumps({"weight_map": {"w": "model-00001.safetensors"}}))
        os.symlink(d / "outside" / "secret.safetensors", d / "model" / "model-00001.safetensors")
    b.add("index-symlink-shard-out", 10, ["analyze", "model"], symlink_out)

    def symlink_dir_out(d: Path) -> None:
        write(d / "outside" / "model-00001.safetensors", st)
        write(d / "model" / idx, json.dumps({"weight_map": {"w": "shards/model-00001.safetensors"}}))
        os.symlink(d / "outside", d / "model" / "shards")
    b.add("index-symlink-dir-out", 10, ["analyze", "model"], symlink_dir_out)
    # HDF5 external links / external storage in reports
    st0 = {"v.safetensors": good_st()}
    setup = (("analyze", "v.safetensors", "--report", "r.h5"),)
    b.files("h5-external-link-tensors", 10, ["report", "show", "r.h5"], st0,
            setup=setup + (("analyze", "v.safetensors", "--report", "other.h5"),),
            mutate=(("h5_external_link", {"file": "r.h5", "name": "tensors", "target": "other.h5",
                                          "path": "/tensors"}),))
    b.files("h5-external-link-skipped", 10, ["report", "show", "r.h5", "--json"], st0,
            setup=setup + (("analyze", "v.safetensors", "--report", "other.h5"),),
            mutate=(("h5_external_link", {"file": "r.h5", "name": "skipped", "target": "other.h5",
                                          "path": "/skipped"}),))
    b.files("h5-external-link-absolute-missing", 10, ["report", "show", "r.h5"], st0, setup=setup,
            mutate=(("h5_external_link", {"file": "r.h5", "name": "errors",
                                          "target": "/nonexistent/secret.h5", "path": "/errors"}),))
    b.files("h5-external-storage", 10, ["report", "show", "r.h5", "--json"],
            {**st0, "outside-secret.txt": "secret\n" * 64}, setup=setup,
            mutate=(("h5_external_storage", {"file": "r.h5", "dataset": "skipped/name",
                                             "target": "outside-secret.txt"}),))
    b.files("h5-external-link-diff", 10, ["diff", "r.h5", "s.h5"], st0,
            setup=setup + (("analyze", "v.safetensors", "--report", "s.h5"),
                           ("analyze", "v.safetensors", "--report", "other.h5")),
            mutate=(("h5_external_link", {"file": "r.h5", "name": "tensors", "target": "other.h5",
                                          "path": "/tensors"}),))
    b.files("h5-soft-link-loop", 10, ["report", "show", "r.h5"], st0, setup=setup,
            mutate=(("h5_soft_link", {"file": "r.h5", "name": "tensors", "path": "/tensors"}),))


# item 11: names that reach the terminal -------------------------------------------------------

HOSTILE_NAMES = {
    "esc-color": "enc.\x1b[31mred\x1b[0m.weight",
    "esc-clear": "\x1b[2J\x1b[Hcleared.weight",
    "esc-osc-link": "\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07.weight",
    "esc-title": "\x1b]0;owned\x07title.weight",
    "newline": "first.weight\nfake row   1e9   1e9",
    "carriage-return": "real.weight\roverwritten",
    "bell-backspace": "b\x07e\x08l\x7fl.weight",
    "rich-markup": "[bold red]alarm[/bold red].weight",
    "rich-link": "[link=https://evil.example]click[/link].weight",
    "rich-unclosed": "[/].weight[",
    "bidi-override": "\u202eexe.weight",
    "c1-csi": "c1\u009b31mred.weight",
    "long": "x" * 5000 + ".weight",
}


def item11(b: Builder) -> None:
    r = _rng()
    for key, name in HOSTILE_NAMES.items():
        blob = st_valid({name: r.standard_normal((5, 4)).astype(np.float32),
                         "ok.weight": r.standard_normal((4, 4)).astype(np.float32)})
        b.files(f"name-{key}-table", 11, ["analyze", "w.safetensors"], {"w.safetensors": blob},
                expect=(0,))
        if key in ("esc-color", "newline", "rich-markup", "esc-osc-link"):
            b.files(f"name-{key}-json", 11, ["analyze", "w.safetensors", "--json"],
                    {"w.safetensors": blob}, expect=(0,))
            b.files(f"name-{key}-report-show", 11, ["report", "show", "r.h5"],
                    {"w.safetensors": blob}, expect=(0,),
                    setup=(("analyze", "w.safetensors", "--report", "r.h5"),))
    esc_meta = st_bytes({"__metadata__": {"note": "\x1b[31mred\x1b[0m"},
                         "\x1b[1mw": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}},
                        mat(4, 3).tobytes())
    b.files("name-esc-in-batch", 11, ["batch", "run", "--no-cache"],
            {"run/step-1.safetensors": esc_meta, "run/step-2.safetensors": esc_meta}, expect=(0,))
    b.files("name-esc-in-error-message", 11, ["analyze", "w.safetensors"],
            {"w.safetensors": st_bytes({"\x1b[31mbad": {"dtype": "F32", "shape": [4, 3],
                                                        "data_offsets": ["x", 48]}}, mat(4, 3).tobytes())})
    b.files("name-esc-in-filename", 11, ["analyze", "\x1b[31mevil.safetensors"],
            {"\x1b[31mevil.safetensors": good_st()}, expect=(0,))
    b.files("name-esc-in-missing-filename", 11, ["analyze", "\x1b[2Jmissing.safetensors"], {})
    b.files("name-esc-in-report-attrs", 11, ["report", "show", "r.h5"], {"v.safetensors": good_st()},
            setup=(("analyze", "v.safetensors", "--report", "r.h5"),),
            mutate=(("h5_set_attr", {"file": "r.h5", "object": "/", "attr": "source_path",
                                     "value": "\x1b[2J\x1b]0;owned\x07evil\nrow"}),
                    ("h5_set_attr", {"file": "r.h5", "object": "tensors/*", "attr": "name",
                                     "value": "\x1b[31mred[bold]x\nfake"})),
            expect=(0,))
    # diff --md: names must not inject links or rows
    md_names = {"md-link": "[click](http://evil.example/).weight",
                "md-row": "a.weight\n| injected | 1 | 2 | 3 | 4 | 5 |",
                "md-pipe": "a|b|c.weight", "md-html": "<img src=x onerror=alert(1)>.weight",
                "md-backticks": "``` code ```.weight"}
    for key, name in md_names.items():
        a = st_valid({name: r.standard_normal((5, 4)).astype(np.float32)})
        bb = st_valid({name: r.standard_normal((5, 4)).astype(np.float32)})
        b.files(f"diff-{key}", 11, ["diff", "a.safetensors", "b.safetensors", "--md"],
                {"a.safetensors": a, "b.safetensors": bb}, expect=(0,),
                stdout_absent_re=(r"^\| injected", r"(?<!\\)\[click\]\(http", r"<img src",
                                  r"(?<!\\)\|b(?<!\\)\|c\.weight", r"^```"))
    esc = st_valid({"\x1b[31mred\x1b[0m": r.standard_normal((5, 4)).astype(np.float32)})
    esc2 = st_valid({"\x1b[31mred\x1b[0m": r.standard_normal((5, 4)).astype(np.float32)})
    b.files("diff-esc-table", 11, ["diff", "a.safetensors", "b.safetensors"],
            {"a.safetensors": esc, "b.safetensors": esc2}, expect=(0,))
    b.files("diff-esc-md", 11, ["diff", "a.safetensors", "b.safetensors", "--md"],
            {"a.safetensors": esc, "b.safetensors": esc2}, expect=(0,))


# item 13: the batch cache -------------------------------------------------------------------

def item13(b: Builder) -> None:
    run = {"run/step-1.safetensors": good_st(1), "run/step-2.safetensors": good_st(2)}
    setup = (("batch", "run", "--cache-dir", "cache"),)
    no_tmp = ("cache/.*.tmp*", "cache/*.tmp*", "run/.*.tmp*")
    for name, content in {"empty-object": "{}", "array": "[]", "null": "null", "garbage": "\x00garbage{",
                          "string": '"x"', "doc-not-dict": '{"document": 5, "status": "ok"}',
                          "deep": deep_json(100000), "not-utf8": "\udcff", "dir": None}.items():
        b.files(f"cache-entry-{name}", 13, ["batch", "run", "--cache-dir", "cache"], run, expect=(0,),
                setup=setup, mutate=(("cache_entries", {"dir": "cache", "content": content}),),
                unprotected=("cache",), forbidden_globs=no_tmp)
    b.files("cache-path-is-file", 13, ["batch", "run", "--cache-dir", "cachefile"],
            {**run, "cachefile": "i am a file, not a folder\n"}, expect=(0,),
            output_contains=("cache",))
    b.files("cache-path-is-input", 13, ["batch", "run", "--cache-dir", "run/step-1.safetensors"],
            run, expect=(0,))
    b.files("cache-env-is-file", 13, ["batch", "run"], {**run, "cachefile": "a file\n"}, expect=(0,),
            env={"SPECTRUM_CACHE_DIR": "cachefile"})
    b.files("cache-xdg-is-file", 13, ["batch", "run"], {**run, "xdgfile": "a file\n"}, expect=(0,),
            env={"XDG_CACHE_HOME": "xdgfile"})
    b.files("cache-in-proc", 13, ["batch", "run", "--cache-dir", "/proc/spectrum-hostile-cache"],
            run, expect=(0,))

    def fifo_cache(d: Path) -> None:
        _write_all(d, run)
        _fifo(d / "cachepipe")
    b.add("cache-path-is-fifo", 13, ["batch", "run", "--cache-dir", "cachepipe"], fifo_cache,
          expect=(0,), timeout=30)

    def ro_cache(d: Path) -> None:
        _write_all(d, run)
        (d / "cache").mkdir()
        os.chmod(d / "cache", 0o555)
    b.add("cache-unwritable", 13, ["batch", "run", "--cache-dir", "cache"], ro_cache, expect=(0,),
          skip="root ignores directory permissions" if IS_ROOT else None, forbidden_globs=no_tmp)
    b.files("cache-entry-dir-jobs2", 13, ["batch", "run", "--cache-dir", "cache", "-j", "2"], run,
            expect=(0,), setup=setup, mutate=(("cache_entries", {"dir": "cache", "content": None}),),
            unprotected=("cache",), forbidden_globs=no_tmp)


# item 14: diff of differently shaped tensors -----------------------------------------------

def item14(b: Builder) -> None:
    r = _rng()
    a = st_valid({"w": r.standard_normal((4, 3)).astype(np.float32),
                  "v": r.standard_normal((3, 3)).astype(np.float32)})
    bt = st_valid({"w": r.standard_normal((3, 4)).astype(np.float32),
                   "v": r.standard_normal((3, 3)).astype(np.float32)})
    c = st_valid({"w": r.standard_normal((6, 3)).astype(np.float32),
                  "v": r.standard_normal((3, 3)).astype(np.float32)})
    b.files("diff-shape-transposed", 14, ["diff", "a.safetensors", "b.safetensors"],
            {"a.safetensors": a, "b.safetensors": bt}, expect=(0, 2), output_contains=("shape",))
    b.files("diff-shape-json", 14, ["diff", "a.safetensors", "b.safetensors", "--json"],
            {"a.safetensors": a, "b.safetensors": c}, expect=(0, 2), output_contains=("shape",))
    b.files("diff-shape-md", 14, ["diff", "a.safetensors", "b.safetensors", "--md"],
            {"a.safetensors": a, "b.safetensors": c}, expect=(0, 2), output_contains=("shape",))
    b.files("diff-shape-reports", 14, ["diff", "ra.h5", "rb.h5"],
            {"a.safetensors": a, "b.safetensors": c}, expect=(0, 2), output_contains=("shape",),
            setup=(("analyze", "a.safetensors", "--report", "ra.h5"),
                   ("analyze", "b.safetensors", "--report", "rb.h5")))


# item 19: batch accepts analyze's options --------------------------------------------------

def item19(b: Builder) -> None:
    run = {"run/step-1.safetensors": good_st(1), "run/step-2.safetensors": good_st(2)}
    for opt in (["--weights-key", ""], ["--conv", "skip"], ["--backend", "dense"],
                ["--svd-route", "gesdd"], ["--square-max-dim", "8"]):
        b.files(f"batch-option{opt[0].replace('--', '-')}", 19, ["batch", "run", "--no-cache", *opt],
                run, expect=(0,))
    b.files("batch-option-bad-conv", 19, ["batch", "run", "--no-cache", "--conv", "fold"], run)


#: Cases run only with ``declare(..., full=True)`` (``HOSTILE_FULL=1``; the script writes
#: them all): variants of a class the core set already covers, kept out of the default run
#: so that the suite fits CI (2 cores).
EXTENDED = frozenset({
    # item 4: more of the same usage errors
    "usage-top-negative", "usage-report-show-top-zero", "usage-seed-float", "usage-bad-svd-route",
    "usage-bad-device", "usage-bad-eps-negative", "usage-bad-fail-on-empty", "usage-unknown-subcommand",
    # item 5: safetensors header variants
    "st-offsets-int64-edge", "st-offsets-three", "st-offsets-dict", "st-offsets-bool", "st-dims-bool",
    "st-dims-nested", "st-dtype-list", "st-spec-string", "st-non-object-number", "st-non-object-null",
    "st-header-nan", "st-header-only-8-bytes", "st-overlapping-partial", "st-header-length-max",
    "st-dims-one-negative", "st-dims-not-list", "st-dtype-missing", "st-offsets-null",
    "st-header-infinity-offsets",
    # item 5: pickles, zips, trainer_state.json, index.json, configuration
    "pickle-deep-dict-10000-raw", "pickle-deep-list-10000-raw", "corrupt-zip-garbage-after-magic",
    "corrupt-zip-data-pkl-empty", "corrupt-zip-flipped-bytes", "corrupt-zip-truncated-64",
    "trainer-state-step-string", "trainer-state-step-nan", "trainer-state-history-entries-garbage",
    "trainer-state-history-loss-string", "trainer-state-history-loss-huge", "trainer-state-directory",
    "index-map-values-null", "index-map-values-list", "index-top-level-list", "index-shard-empty-name",
    "index-shard-dot", "index-map-string", "index-not-json",
    "config-int-nan", "config-float-negative", "config-list-mixed", "config-str-list",
    "config-unknown-square", "config-eps-negative", "config-trust-kebab", "config-duplicate-key",
    "config-pyproject-tool-not-table", "config-env-seed-abc", "config-float-nan", "config-str-table",
    "config-bool-string", "config-seed-string",
    # item 6: the payload x container matrix beyond one container per payload
    *(f"pickle-{k}-legacy" for k in ("posix_system", "exec", "eval", "open", "memo_global", "obj",
                                     "build")),
    *(f"pickle-{k}-raw" for k in ("os_system", "posix_system", "eval", "stack_global",
                                  "memo_global", "inst", "build")),
    "pickle-ext-pth", "pickle-in-diff-md", "pickle-allow-global-no-module",
    # item 11: the same names through more outputs
    "name-bell-backspace-table", "name-rich-unclosed-table", "name-esc-title-table",
    "name-esc-osc-link-json", "name-rich-markup-json", "name-esc-osc-link-report-show",
    "name-newline-report-show", "diff-md-backticks",
    # item 13
    "cache-entry-string", "cache-entry-null",
})


GROUPS = (item1, item2, item3, item4, item5, item6, item7, item8, item9, item10, item11, item13,
          item14, item19)


def declare(root: Path, full: bool = True) -> list[Case]:
    """The cases (with ``full``, also :data:`EXTENDED`), each with its folder
    ``root / case.id``; nothing is written."""
    b = Builder(Path(root))
    for group in GROUPS:
        group(b)
    unknown = EXTENDED - {c.id for c in b.cases}
    assert not unknown, f"EXTENDED names unknown cases: {sorted(unknown)}"
    if not full:
        b.cases = [c for c in b.cases if c.id not in EXTENDED]
    for c in b.cases:
        if c.requires_root and not IS_ROOT and c.skip is None:
            c.skip = "needs root (mknod)"
    return b.cases


def materialize(case: Case, root: Path) -> Path:
    """Write the case's folder (an empty git root with HOME inside) and return it."""
    d = Path(root) / case.id
    d.mkdir(parents=True, exist_ok=False)
    (d / ".git").mkdir()  # stops the configuration search here
    (d / "home").mkdir()
    if case.make is not None:
        case.make(d)
    return d


def inventory(d: Path, case: Case) -> list[str]:
    """The paths (relative) the run must leave as they are: what the generator wrote, but
    the scratch folders and the case's unprotected paths."""
    if case.protected is not None:
        return list(case.protected)
    out = []
    for dirpath, dirnames, filenames in os.walk(d, followlinks=False):
        rel_dir = Path(dirpath).relative_to(d)
        if rel_dir.parts and rel_dir.parts[0] in SCRATCH:
            dirnames[:] = []
            continue
        for n in sorted(dirnames + filenames):
            rel = str(rel_dir / n) if rel_dir.parts else n
            if rel.split("/")[0] in SCRATCH:
                continue
            if any(rel == u or rel.startswith(u.rstrip("/") + "/") for u in case.unprotected):
                continue
            out.append(rel)
    return sorted(out)


# --------------------------------------------------------------------------- mutations
# Applied by the test after the setup runs: alterations of real reports and caches.

def _h5():
    import h5py

    return h5py


def _expand(f, pattern: str) -> list[str]:
    """``group/*/name`` -> the matching paths in an open HDF5 file."""
    parts = pattern.split("/")
    paths = [""]
    for p in parts:
        nxt = []
        for base in paths:
            if p == "*":
                grp = f[base] if base else f
                nxt.extend(f"{base}/{k}" if base else k for k in grp.keys())
            else:
                nxt.append(f"{base}/{p}" if base else p)
        paths = nxt
    return paths


def m_h5_huge_dataset(d: Path, file: str, dataset: str, kind: str) -> None:
    """Replace ``dataset`` by one declaring 10^9 elements (chunked, nothing written)."""
    h5py = _h5()
    with h5py.File(d / file, "r+") as f:
        for path in _expand(f, dataset):
            if path in f:
                del f[path]
            dt = h5py.string_dtype() if kind == "str" else np.dtype(kind)
            f.create_dataset(path, shape=(10**9,), dtype=dt, chunks=(4096,))


def m_h5_external_link(d: Path, file: str, name: str, target: str, path: str) -> None:
    h5py = _h5()
    with h5py.File(d / file, "r+") as f:
        if name in f:
            del f[name]
        f[name] = h5py.ExternalLink(target, path)


def m_h5_soft_link(d: Path, file: str, name: str, path: str) -> None:
    h5py = _h5()
    with h5py.File(d / file, "r+") as f:
        if name in f:
            del f[name]
        f[name] = h5py.SoftLink(path)


def m_h5_external_storage(d: Path, file: str, dataset: str, target: str) -> None:
    h5py = _h5()
    size = (d / target).stat().st_size
    with h5py.File(d / file, "r+") as f:
        if dataset in f:
            del f[dataset]
        f.create_dataset(dataset, shape=(size,), dtype="S1", external=[(target, 0, size)])


def m_h5_set_attr(d: Path, file: str, object: str, attr: str, value: str) -> None:  # noqa: A002
    h5py = _h5()
    with h5py.File(d / file, "r+") as f:
        targets = [object] if "*" not in object else _expand(f, object)
        for t in targets:
            (f if t in ("/", "") else f[t]).attrs[attr] = value


def m_cache_entries(d: Path, dir: str, content: str | None) -> None:  # noqa: A002
    entries = sorted((d / dir).rglob("*.json"))
    if not entries:
        raise RuntimeError(f"no cache entries under {dir} after setup")
    for e in entries:
        if content is None:
            e.unlink()
            e.mkdir()
            (e / "inside").write_text("x")
        else:
            e.write_bytes(content.encode("utf-8", "surrogateescape"))


def m_write(d: Path, path: str, text: str) -> None:
    write(d / path, text)


MUTATIONS: dict[str, Callable[..., None]] = {
    "h5_huge_dataset": m_h5_huge_dataset, "h5_external_link": m_h5_external_link,
    "h5_soft_link": m_h5_soft_link, "h5_external_storage": m_h5_external_storage,
    "h5_set_attr": m_h5_set_attr, "cache_entries": m_cache_entries, "write": m_write,
}


def apply_mutations(case: Case, d: Path) -> None:
    for name, kwargs in case.mutate:
        MUTATIONS[name](d, **kwargs)


# --------------------------------------------------------------------------- script


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/hostile/make_cases.py OUTDIR", file=sys.stderr)
        return 2
    root = Path(argv[0]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cases = declare(root)
    counts: dict[int, int] = {}
    skipped = 0
    for c in cases:
        if c.skip:
            skipped += 1
            continue
        materialize(c, root)
        counts[c.cls] = counts.get(c.cls, 0) + 1
    (root / "cases.json").write_text(json.dumps([c.manifest() for c in cases], indent=1))
    for cls in sorted(counts):
        print(f"item {cls:2d}: {counts[cls]:3d} cases")
    print(f"total: {sum(counts.values())} cases written to {root}"
          + (f" ({skipped} skipped here)" if skipped else ""))
    print("setup runs and mutations (reports, caches) are applied by tests/hostile/test_hostile.py")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
