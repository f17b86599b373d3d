"""The built-in readers, registered in the ``spectrum.readers`` entry-point group exactly
as a third-party reader would be (xarray's ``BackendEntrypoint`` pattern).

A reader has ``name``, ``description``, ``priority`` (lower is tried first),
``can_open(probe)`` -> bool, judged from content (:class:`Probe`: the path, whether it
is a directory, its size and first 64 bytes), never from the name alone, and
``open(path, policy)`` -> a :class:`~spectrum_cli.io.base.TensorSource` (tensors listed
cheaply, then read one at a time; ``optimizer_state()`` and ``scalars()`` give the
training state and the loss/step the file stores). Nothing here imports torch until a
torch file is opened.
"""

from __future__ import annotations

import math
from typing import Any

from spectrum_cli.io.base import LoadPolicy, Probe, TensorSource

#: Steps a checkpoint may store: what TensorBoard's and HDF5's int64 steps can hold.
MAX_STEP = 2**63 - 1


def stored_step(value: Any) -> int | None:
    """A training step read from a checkpoint (``step``, ``global_step``, ...) as an
    int in ``0 .. 2**63 - 1``; None for anything else (a bool, a string, NaN, a
    negative step, one beyond int64): the step is a courtesy, never a reason to fail."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    return value if 0 <= value <= MAX_STEP else None


def stored_loss(value: Any) -> float | None:
    """A loss read from a checkpoint as a finite float; None for anything else (an int
    too large for a float included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        loss = float(value)
    except OverflowError:
        return None
    return loss if math.isfinite(loss) else None


def _is_zip(p: Probe) -> bool:
    return not p.is_dir and p.head.startswith(b"PK\x03\x04")


class TorchZipReader:
    name = "torch-zip"
    description = "torch.save zip files (.pt/.pth/.bin/.ckpt), weights-only"
    priority = 10

    def can_open(self, p: Probe) -> bool:
        return _is_zip(p) and any(n.endswith("data.pkl") for n in p.zip_names())

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        from spectrum_cli.io.torch_file import TorchSource

        return TorchSource(path, policy, is_zip=True)


class NpzReader:
    name = "npz"
    description = "numpy .npz archives, never unpickled"
    priority = 20

    def can_open(self, p: Probe) -> bool:
        if not _is_zip(p):
            return False
        names = p.zip_names()
        return bool(names) and all(n.endswith(".npy") for n in names)

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        from spectrum_cli.io.numpy_file import NpzSource

        return NpzSource(path)


class NpyReader:
    name = "npy"
    description = "numpy .npy arrays, never unpickled"
    priority = 30

    def can_open(self, p: Probe) -> bool:
        return not p.is_dir and p.head.startswith(b"\x93NUMPY")

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        from spectrum_cli.io.numpy_file import NpySource

        return NpySource(path)


class SafetensorsReader:
    name = "safetensors"
    description = "safetensors files, parsed with numpy (no torch)"
    priority = 40

    def can_open(self, p: Probe) -> bool:
        from spectrum_cli.io.safetensors_file import looks_like_safetensors

        return not p.is_dir and looks_like_safetensors(p.head, p.size)

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        from spectrum_cli.io.safetensors_file import SafetensorsSource

        return SafetensorsSource(path)


class TorchLegacyReader:
    name = "torch-legacy"
    description = "legacy (non-zip) torch.save pickles, weights-only"
    priority = 50

    def can_open(self, p: Probe) -> bool:
        return (not p.is_dir and p.head[:1] == b"\x80"
                and p.head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        from spectrum_cli.io.torch_file import TorchSource

        return TorchSource(path, policy, is_zip=False)


class ShardIndexReader:
    name = "shard-index"
    description = "*.index.json shards (safetensors or pytorch_model.bin), confined"
    priority = 5

    def can_open(self, p: Probe) -> bool:
        return not p.is_dir and p.path.endswith(".index.json")

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        from spectrum_cli.io.composite import open_index

        return open_index(path, policy)


class HFFolderReader:
    name = "hf-folder"
    description = "Hugging Face model folders (model.safetensors[.index.json], " \
                  "pytorch_model.bin[.index.json])"
    priority = 100

    def can_open(self, p: Probe) -> bool:
        return p.is_dir

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        from spectrum_cli.io.detect import open_directory

        return open_directory(path, policy)


BUILTIN: tuple[Any, ...] = (ShardIndexReader(), TorchZipReader(), NpzReader(), NpyReader(),
                            SafetensorsReader(), TorchLegacyReader(), HFFolderReader())
