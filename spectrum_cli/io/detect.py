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
import stat
import zipfile

from spectrum_cli.core.errors import InputError
from spectrum_cli.io.base import (LoadPolicy, TensorSource, input_errors, open_regular,
                                  require_regular)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

#: HF-style folder layouts, in order of preference.
HF_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def open_source(path: str, policy: LoadPolicy | None = None) -> TensorSource:
    """Open ``path`` (file or directory) with the reader its content calls for.

    Whatever the bytes, a failure is a :class:`SpectrumError` naming the file (one guard,
    :func:`~spectrum_cli.io.base.input_errors`, around the whole dispatch)."""
    policy = policy or LoadPolicy()
    with input_errors(path):
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file or directory") from None
        except OSError as exc:  # a symlink loop, a name too long, no permission
            raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        if is_dir:
            return open_directory(path, policy)
        if path.endswith(".index.json"):
            return _open_index(path, policy)
        return open_file(path, policy)


def open_file(path: str, policy: LoadPolicy) -> TensorSource:
    """A single (regular) checkpoint file, never an index or a folder."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(64)
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
    if path.endswith(".safetensors"):  # its header parser says precisely what is wrong
        return safetensors_file.SafetensorsSource(path)
    raise InputError(f"{path}: unrecognized format (not torch.save, safetensors, .npy, "
                     ".npz or an HF model folder)")


def _open_zip(path: str, policy: LoadPolicy) -> TensorSource:
    try:
        with open_regular(path) as fh, zipfile.ZipFile(fh) as zf:
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
            require_regular(full)  # a FIFO or folder by that name is refused, not opened
            return _open_index(full, policy) if name.endswith(".json") else open_file(
                full, policy)
    shown = ", ".join(listing[:8]) + (" ..." if len(listing) > 8 else "")
    raise InputError(f"{path}: no model weights found (looked for {', '.join(HF_CANDIDATES)}; "
                     f"found {shown})")
