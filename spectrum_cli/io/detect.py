"""Pick a reader by content (magic bytes), not only by extension.

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
import zipfile

from spectrum_cli.core.errors import InputError
from spectrum_cli.io.base import LoadPolicy, TensorSource

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

#: HF-style folder layouts, in order of preference.
HF_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def open_source(path: str, policy: LoadPolicy | None = None) -> TensorSource:
    """Open ``path`` (file or directory) with the reader its content calls for."""
    policy = policy or LoadPolicy()
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        return open_directory(path, policy)
    if path.endswith(".index.json"):
        return _open_index(path, policy)
    return _open_file(path, policy)


def _open_file(path: str, policy: LoadPolicy) -> TensorSource:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise InputError(f"{path}: empty file")
    from spectrum_cli.io import safetensors_file

    if head.startswith(b"PK\x03\x04"):
        return _open_zip(path, policy)
    if head.startswith(b"\x93NUMPY"):
        from spectrum_cli.io.numpy_file import NpySource

        return NpySource(path)
    if safetensors_file.looks_like_safetensors(head, size):
        return safetensors_file.SafetensorsSource(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        from spectrum_cli.io.torch_file import TorchSource

        return TorchSource(path, policy, is_zip=False)
    if head.startswith(_HDF5_MAGIC):
        raise InputError(f"{path}: an HDF5 file, not a checkpoint (for a spectrum report "
                         "use `spectrum report show`)")
    raise InputError(f"{path}: unrecognized format (not torch.save, safetensors, .npy, "
                     ".npz or an HF model folder)")


def _open_zip(path: str, policy: LoadPolicy) -> TensorSource:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{path}: corrupt or truncated zip archive ({exc})") from None
    if any(n.endswith("data.pkl") for n in names):
        from spectrum_cli.io.torch_file import TorchSource

        return TorchSource(path, policy, is_zip=True)
    if names and all(n.endswith(".npy") for n in names):
        from spectrum_cli.io.numpy_file import NpzSource

        return NpzSource(path)
    if "model.weights.h5" in names:
        raise InputError(f"{path}: a Keras .keras archive; not supported yet")
    raise InputError(f"{path}: a zip archive that is neither a torch checkpoint nor .npz")


def _open_index(path: str, policy: LoadPolicy) -> TensorSource:
    from spectrum_cli.io.composite import open_index

    return open_index(path, policy)


def open_directory(path: str, policy: LoadPolicy) -> TensorSource:
    """An HF-style model folder: the first of :data:`HF_CANDIDATES` that exists."""
    try:
        listing = sorted(os.listdir(path))
    except OSError as exc:
        raise InputError(f"{path}: cannot list directory ({exc.strerror})") from None
    if not listing:
        raise InputError(f"{path}: empty directory")
    for name in HF_CANDIDATES:
        if name in listing:
            full = os.path.join(path, name)
            return _open_index(full, policy) if name.endswith(".json") else _open_file(
                full, policy)
    shown = ", ".join(listing[:8]) + (" ..." if len(listing) > 8 else "")
    raise InputError(f"{path}: no model weights found (looked for {', '.join(HF_CANDIDATES)}; "
                     f"found {shown})")
