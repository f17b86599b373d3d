"""Pick a reader by content (magic bytes), not only by extension: the registered
readers (``spectrum.readers``, built-ins in io/readers.py) are asked in priority order.

======================  ==========================================================
first bytes             reader
======================  ==========================================================
``PK\\x03\\x04`` (zip)   torch zip if it has ``*/data.pkl``; ``.npz`` if ``*.npy``
``\\x93NUMPY``           ``.npy``
8-byte length + ``{``    safetensors
``\\x80`` + protocol     legacy torch file (a pickle), weights-only
a directory             HF-style model folder (see :func:`open_directory`)
``*.index.json``        sharded safetensors or ``pytorch_model.bin`` shards
======================  ==========================================================
"""

from __future__ import annotations

import os
import stat
from typing import Any

from spectrum_cli import plugins
from spectrum_cli.core.errors import CheckpointNotFoundError, InputError
from spectrum_cli.io import storage
from spectrum_cli.io.base import (LoadPolicy, Probe, TensorSource, confine, file_size,
                                  input_errors, open_regular, require_regular)
from spectrum_cli.io.safetensors_file import SafetensorsSource

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

#: HF-style folder layouts, in order of preference.
HF_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def readers() -> list[Any]:
    """The registered readers (``spectrum.readers``), in the order they are tried."""
    return sorted(plugins.readers.loaded().values(),
                  key=lambda r: (getattr(r, "priority", 50), r.name))


def open_source(path: str, policy: LoadPolicy | None = None) -> TensorSource:
    """Open ``path`` (file or directory) with the first registered reader whose
    ``can_open`` accepts its content.

    Whatever the bytes, a failure is a :class:`SpectrumError` naming the file (one guard,
    :func:`~spectrum_cli.io.base.input_errors`, around the whole dispatch)."""
    policy = policy or LoadPolicy()
    storage.configure(policy.storage_options)
    path = storage.local_path(path)
    with input_errors(path):
        if storage.is_url(path):
            if storage.is_dir(path):
                return _dispatch(Probe(path.rstrip("/"), True), policy)
            return open_file(path, policy)
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{path}: no such file or directory", path) from None
        except OSError as exc:  # a symlink loop, a name too long, no permission
            raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        if is_dir:
            return _dispatch(Probe(path, True), policy)
        return open_file(path, policy)


def open_file(path: str, policy: LoadPolicy) -> TensorSource:
    """A single (regular) checkpoint file or shard index, never a folder."""
    with open_regular(path) as fh:
        size = file_size(fh)
        head = fh.read(64)
    if size == 0:
        raise InputError(f"{path}: empty file")
    return _dispatch(Probe(path, False, size, head), policy)


def _dispatch(probe: Probe, policy: LoadPolicy) -> TensorSource:
    for reader in readers():
        if reader.can_open(probe):
            return reader.open(probe.path, policy)
    path = probe.path
    if probe.is_dir:
        raise InputError(f"{path}: no reader takes this folder")
    if probe.head.startswith(_HDF5_MAGIC):
        raise InputError(f"{path}: an HDF5 file, not a checkpoint (for a spectrum report "
                         "use `spectrum report show`)")
    if _is_zip_head(probe.head):
        names = probe.zip_names()
        if "model.weights.h5" in names:
            raise InputError(f"{path}: a Keras .keras archive; not supported yet")
        raise InputError(f"{path}: a zip archive that is neither a torch checkpoint nor .npz")
    if path.endswith(".safetensors"):  # its header parser says precisely what is wrong
        return SafetensorsSource(path)
    raise InputError(f"{path}: unrecognized format (not torch.save, safetensors, .npy, "
                     ".npz or an HF model folder)")


def _is_zip_head(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04")


def open_directory(path: str, policy: LoadPolicy) -> TensorSource:
    """An HF-style model folder: the first of :data:`HF_CANDIDATES` that exists."""
    remote = storage.is_url(path)
    try:
        listing = storage.listdir(path) if remote else sorted(os.listdir(path))
    except OSError as exc:
        raise InputError(f"{path}: cannot list directory ({exc.strerror})") from None
    if not listing:
        raise InputError(f"{path}: empty directory")
    for name in HF_CANDIDATES:
        if name in listing:
            full = storage.join(path, name) if remote else os.path.join(path, name)
            if not remote:  # a symlink out of the folder (to /proc, say) is not followed
                confine(path, full, full)
            require_regular(full)  # a FIFO or folder by that name is refused, not opened
            return open_file(full, policy)
    shown = ", ".join(listing[:8]) + (" ..." if len(listing) > 8 else "")
    raise InputError(f"{path}: no model weights found (looked for {', '.join(HF_CANDIDATES)}; "
                     f"found {shown})")
