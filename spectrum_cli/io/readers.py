"""The built-in readers, registered in the ``spectrum.readers`` entry-point group exactly
as a third-party reader would be (xarray's ``BackendEntrypoint`` pattern).

A reader has ``name``, ``description``, ``priority`` (lower is tried first),
``can_open(probe)`` -> bool, judged from content (:class:`Probe`: the path, whether it
is a directory, its size and first 64 bytes), never from the name alone, and
``open(path, policy)`` -> a :class:`~spectrum_cli.io.base.TensorSource` (tensors listed
cheaply, then read one at a time; ``optimizer_state()`` and ``scalars()`` give the
training state and the loss/step the file stores). Nothing here imports torch until a
torch file is opened.

A reader also declares the layout of what it reads, from which ``batch`` and ``watch``
find checkpoints in a folder (:mod:`spectrum_cli.io.layout` takes the union over the
installed readers):

- ``suffixes``: the endings of the names of files that are each one checkpoint it reads
  (``(".pt", ".pth", ".ckpt", ".bin")``); a file that is only part of a checkpoint (a
  shard, a DCP ``.distcp``) is left out, or a folder would list each part;
- ``folder_markers``: :class:`~spectrum_cli.io.base.FolderMarker` s of the folders it
  reads whole (a folder holding DCP's ``.metadata``; an HF ``checkpoint-<step>/``, with
  what it still lacks while it is being written); a plain string ``F`` stands for "a
  folder holding the file F".

Both are optional (default: none): a reader without them is still chosen by
``can_open`` for a file or folder named outright (``spectrum analyze FILE``, a glob),
only a folder's discovery does not see its format.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from spectrum_cli.core.errors import InputError
from spectrum_cli.io import storage
from spectrum_cli.io.base import FolderMarker, LoadPolicy, Probe, TensorSource
from spectrum_cli.io.base import stored_loss, stored_step  # noqa: F401 (their old home)
from spectrum_cli.io.composite import open_index, read_shard_names
from spectrum_cli.io.detect import HF_CANDIDATES, open_directory
from spectrum_cli.io.numpy_file import NpySource, NpzSource
from spectrum_cli.io.safetensors_file import SafetensorsSource, looks_like_safetensors
from spectrum_cli.io.torch_file import TorchSource

#: What the HF Trainer writes into a ``checkpoint-<step>/`` folder after the weights.
TRAINER_STATE = "trainer_state.json"


#: What torch.save files are named (zip or legacy alike).
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def _is_zip(p: Probe) -> bool:
    return not p.is_dir and p.head.startswith(b"PK\x03\x04")


class TorchZipReader:
    name = "torch-zip"
    description = "torch.save zip files (.pt/.pth/.bin/.ckpt), weights-only"
    priority = 10
    suffixes = TORCH_SUFFIXES
    folder_markers: tuple[FolderMarker, ...] = ()

    def can_open(self, p: Probe) -> bool:
        return _is_zip(p) and any(n.endswith("data.pkl") for n in p.zip_names())

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        return TorchSource(path, policy, is_zip=True)


class NpzReader:
    name = "npz"
    description = "numpy .npz archives, never unpickled"
    priority = 20
    suffixes = (".npz",)
    folder_markers: tuple[FolderMarker, ...] = ()

    def can_open(self, p: Probe) -> bool:
        if not _is_zip(p):
            return False
        names = p.zip_names()
        return bool(names) and all(n.endswith(".npy") for n in names)

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        return NpzSource(path)


class NpyReader:
    name = "npy"
    description = "numpy .npy arrays, never unpickled"
    priority = 30
    suffixes = (".npy",)
    folder_markers: tuple[FolderMarker, ...] = ()

    def can_open(self, p: Probe) -> bool:
        return not p.is_dir and p.head.startswith(b"\x93NUMPY")

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        return NpySource(path)


class SafetensorsReader:
    name = "safetensors"
    description = "safetensors files, parsed with numpy (no torch)"
    priority = 40
    suffixes = (".safetensors",)
    folder_markers: tuple[FolderMarker, ...] = ()

    def can_open(self, p: Probe) -> bool:
        return not p.is_dir and looks_like_safetensors(p.head, p.size)

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        return SafetensorsSource(path)


class TorchLegacyReader:
    name = "torch-legacy"
    description = "legacy (non-zip) torch.save pickles, weights-only"
    priority = 50
    suffixes = TORCH_SUFFIXES
    folder_markers: tuple[FolderMarker, ...] = ()

    def can_open(self, p: Probe) -> bool:
        return (not p.is_dir and p.head[:1] == b"\x80"
                and p.head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        return TorchSource(path, policy, is_zip=False)


class ShardIndexReader:
    name = "shard-index"
    description = "*.index.json shards (safetensors or pytorch_model.bin), confined"
    priority = 5
    #: None: in a folder, an index's shards are found by their own suffixes (listing
    #: the index as well would read each shard twice).
    suffixes: tuple[str, ...] = ()
    folder_markers: tuple[FolderMarker, ...] = ()

    def can_open(self, p: Probe) -> bool:
        return not p.is_dir and p.path.endswith(".index.json")

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        return open_index(path, policy)


def hf_missing(path: str, files: Mapping[str, Any]) -> str | None:
    """What an HF ``checkpoint-<step>/`` folder (local or a URL; ``files``: its files by
    relative name) still lacks: its weights, a shard its index names, or
    ``trainer_state.json``, which the Trainer writes after them (None: complete)."""
    weights = next((c for c in HF_CANDIDATES if c in files), None)
    if weights is None:
        return "weights (" + " or ".join(c for c in HF_CANDIDATES
                                          if not c.endswith(".json")) + ")"
    if weights.endswith(".index.json"):
        try:
            shards = read_shard_names(storage.pjoin(path, weights))
        except (InputError, OSError):
            shards = []  # a damaged index: once settled, the analysis says what is wrong
        absent = [s for s in shards if os.path.normpath(s) not in files]
        if absent:
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            return f"shard {absent[0]}{more}"
    if TRAINER_STATE not in files:
        return TRAINER_STATE
    return None


#: An HF Trainer's checkpoint folder, by its name (there before its files are).
HF_CHECKPOINT = FolderMarker("hf", "checkpoint-<step>/ folders", name=r"checkpoint-\d+",
                             missing=hf_missing)


class HFFolderReader:
    name = "hf-folder"
    description = "Hugging Face model folders (model.safetensors[.index.json], " \
                  "pytorch_model.bin[.index.json])"
    priority = 100
    #: Any folder given outright opens as a model folder; in a run's folder only the
    #: Trainer's ``checkpoint-<step>/`` are checkpoints (its weights are files found
    #: by their own suffixes).
    suffixes: tuple[str, ...] = ()
    folder_markers = (HF_CHECKPOINT,)

    def can_open(self, p: Probe) -> bool:
        return p.is_dir

    def open(self, path: str, policy: LoadPolicy) -> TensorSource:
        return open_directory(path, policy)


BUILTIN: tuple[Any, ...] = (ShardIndexReader(), TorchZipReader(), NpzReader(), NpyReader(),
                            SafetensorsReader(), TorchLegacyReader(), HFFolderReader())
