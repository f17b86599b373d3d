"""``torch.distributed.checkpoint`` (DCP) folders: ``.metadata`` + ``*.distcp`` files,
what FSDP and ``torch.distributed.checkpoint.save`` write, as a ``spectrum.readers``
plugin (:class:`DCPReader`).

Metadata: read into inert stand-ins and validated by :mod:`spectrum_cli.io.dcp_metadata`
(only DCP's own metadata classes admitted; storage confined to the folder).

Tensors. Each tensor is split into chunks (``ChunkStorageMetadata``: ``offsets`` and
``sizes`` in the full tensor); ``storage_data`` maps each chunk to a byte range of a
file in the folder. ``FileSystemWriter`` stores a chunk as ``torch.save`` of it: the
range is read into memory and loaded with ``torch.load(weights_only=True)`` (torch's
safe unpickler), then copied into the float64 result at its offsets; chunks must tile
the tensor exactly (no overlap, no gap). One tensor (and one chunk's bytes) is in memory
at a time.

Names. DCP flattens nested state dicts to dotted keys (``model.0.weight``,
``optim.state.0.exp_avg``). Optimizer state (``<p>.state.*`` and ``<p>.param_groups.*``
where ``<p>.param_groups`` exists) is skipped; the weights are the tensors under the
first of :data:`~spectrum_cli.io.torch_file.WEIGHT_KEYS` present as a prefix (``model.``,
stripped) or, when none is, every other tensor (``--weights-key`` chooses); ``notes``
says which. ``BytesStorageMetadata`` entries (pickled non-tensor state) are listed and
skipped, never unpickled (except top-level ``step``/``loss`` for :meth:`scalars`,
through the weights-only unpickler).
"""

from __future__ import annotations

import io
import math
import pickle
import warnings
from typing import Any, Iterator

import numpy as np

from spectrum_cli.core.errors import InputError, UsageError
from spectrum_cli.io import storage
from spectrum_cli.io.base import (FolderMarker, LoadPolicy, Probe, SourceBase, TensorInfo,
                                  input_errors, open_regular, stored_loss, stored_step)
from spectrum_cli.io.dcp_metadata import (METADATA_NAME, Chunk, Layout, TensorPlan,
                                          load_metadata)
from spectrum_cli.io.pickle_scan import scan_pickles
from spectrum_cli.io.torch_file import WEIGHT_KEYS

#: Largest pickled scalar (``step``, ``loss``) read for :meth:`DCPSource.scalars`.
MAX_SCALAR_BYTES = 1 << 20

#: Optimizer-state entries are skipped with this reason (as the torch reader does).
OPTIMIZER = "optimizer state"
NON_TENSOR = "non-tensor state (pickled bytes; not read)"


# --- names ---------------------------------------------------------------------------


def _cuts(name: str, part: str) -> Iterator[int]:
    """Where the dotted component ``part`` followed by more components starts in
    ``name`` (the length of the prefix before it: 0 for a name starting with it)."""
    if name.startswith(part + "."):
        yield 0
    needle = f".{part}."
    at = name.find(needle)
    while at >= 0:
        yield at
        at = name.find(needle, at + 1)


def optimizer_prefixes(names: list[str]) -> set[str]:
    """Dotted prefixes ``p`` such that ``p.param_groups.*`` exists (an optimizer's
    flattened state dict; ``""`` for one saved at the top level): the part of each name
    before its first ``param_groups`` component, so one prefix per name at most."""
    out = set()
    for name in names:
        cut = next(_cuts(name, "param_groups"), None)
        if cut is not None:
            out.add(name[:cut])
    return out


def is_optimizer(name: str, prefixes: set[str]) -> bool:
    """Whether ``name`` is ``p.state.*`` or ``p.param_groups.*`` for a prefix ``p`` of
    ``prefixes`` (only the name's own cut points are tried: linear in the name, whatever
    the number of prefixes)."""
    if not prefixes:
        return False
    lengths = {len(p) for p in prefixes}
    return any(cut in lengths and name[:cut] in prefixes
               for part in ("state", "param_groups") for cut in _cuts(name, part))


def weights_prefix(names: list[str], every: list[str], key: str | None
                   ) -> tuple[str | None, str]:
    """The dotted prefix the weights live under (None: every name) and a note:
    ``key`` (``--weights-key``, any entry's prefix) or the first of ``WEIGHT_KEYS``
    that prefixes one of ``names`` (the tensors outside the optimizer state)."""
    if key is not None:
        key = key.strip(".")
        if key and not any(n.startswith(key + ".") for n in every):
            raise UsageError(f"--weights-key {key!r}: no such key in the checkpoint")
        return key or None, (f"weights taken from the {key + '.'!r} entries" if key else
                             "weights: every tensor outside the optimizer state")
    for candidate in WEIGHT_KEYS:
        if any(n.startswith(candidate + ".") for n in names):
            return candidate, (f"weights taken from the {candidate + '.'!r} entries "
                               "(choose another with --weights-key)")
    return None, "weights: every tensor outside the optimizer state (no 'model.' prefix)"


# --- the source ----------------------------------------------------------------------


class DCPSource(SourceBase):
    """A torch.distributed.checkpoint folder, read one tensor at a time."""

    def __init__(self, path: str, policy: LoadPolicy | None = None) -> None:
        policy = policy or LoadPolicy()
        meta_path = storage.pjoin(path, METADATA_NAME)
        layout = Layout(path, load_metadata(meta_path))
        super().__init__(path, "torch-dcp", (meta_path, *sorted(layout.sizes)))
        self._layout = layout
        every = [*layout.tensors, *layout.bytes]
        self._prefixes = optimizer_prefixes(every)
        plain = [n for n in layout.tensors if not is_optimizer(n, self._prefixes)]
        prefix, note = weights_prefix(plain, every, policy.weights_key)
        self.notes.append(f"torch.distributed.checkpoint folder: {len(layout.tensors)} "
                          f"tensors in {len(layout.sizes)} storage files"
                          + (f" (DCP {layout.version})" if layout.version else ""))
        self.notes.append(note)
        self._names = self._name_tensors(prefix)

    def _name_tensors(self, prefix: str | None) -> dict[str, tuple[str, str | None]]:
        """Display name -> (fqn, skip). Weights lose the prefix unless that would make
        two names equal."""
        out: dict[str, tuple[str, str | None]] = {}
        head = f"{prefix}." if prefix else ""
        for fqn, t in self._layout.tensors.items():
            if is_optimizer(fqn, self._prefixes):
                out[fqn] = (fqn, OPTIMIZER)
            elif head and not fqn.startswith(head):
                out[fqn] = (fqn, f"outside the weights ({prefix!r})")
            else:
                out[fqn] = (fqn, t.skip)
        if head:
            stripped = {(n[len(head):] if n.startswith(head) and v[1] != OPTIMIZER
                         else n): v for n, v in out.items()}
            if len(stripped) == len(out):
                out = stripped
            else:
                self.notes.append(f"names keep their {head!r} prefix (stripping it would "
                                  "make two names equal)")
        return out

    def entries(self) -> Iterator[TensorInfo]:
        for name, (fqn, skip) in self._names.items():
            t = self._layout.tensors[fqn]
            yield TensorInfo(name, t.shape, t.dtype, skip)
        for fqn in self._layout.bytes:
            skip = OPTIMIZER if is_optimizer(fqn, self._prefixes) else NON_TENSOR
            yield TensorInfo(fqn, (), "bytes", skip)

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name``, chunk by chunk, as a new float64 array."""
        import torch

        if name not in self._names:
            raise KeyError(name)
        t = self._layout.tensors[self._names[name][0]]
        if t.skip and t.skip.startswith(("unsupported", "stored with")):
            raise InputError(f"{self.path}: tensor {t.fqn!r}: {t.skip}")
        out = np.empty(t.shape, dtype=np.float64)
        filled = np.zeros(t.shape, dtype=bool)
        target = torch.from_numpy(out)
        for chunk in t.chunks:
            where = tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))
            if filled[where].any():
                raise InputError(f"{self._layout.meta_path}: tensor {t.fqn!r}: chunks "
                                 f"overlap at {chunk.offsets}")
            piece = self._load_chunk(t, chunk)
            target[where].copy_(piece)
            filled[where] = True
            del piece
        if not filled.all():
            raise InputError(f"{self._layout.meta_path}: tensor {t.fqn!r}: its chunks do "
                             "not cover it")
        return out

    def _load_chunk(self, t: TensorPlan, chunk: Chunk) -> Any:
        """One chunk's ``torch.save`` bytes, loaded weights-only, checked against the
        metadata (a tensor, strided, of the declared dtype and size)."""
        import torch

        label = f"{chunk.where()}, tensor {t.fqn!r}"
        data = read_range(chunk)
        with input_errors(label):
            piece = load_weights_only(data, label)
        del data
        if not isinstance(piece, torch.Tensor) or piece.layout != torch.strided:
            raise InputError(f"{label}: holds a {type(piece).__name__}, not a dense tensor")
        if tuple(piece.shape) != chunk.sizes or str(piece.dtype) != f"torch.{t.dtype}":
            raise InputError(f"{label}: holds {tuple(piece.shape)} {piece.dtype}, the "
                             f"metadata says {chunk.sizes} {t.dtype}")
        return piece

    def scalars(self) -> dict[str, Any]:
        """``step`` and ``loss`` stored as top-level DCP entries (a Python number in a
        bytes entry, or a one-element tensor), when readable weights-only."""
        out: dict[str, Any] = {}
        for key in ("step", "global_step", "iteration", "epoch"):
            step = stored_step(self._scalar(key))
            if step is not None:
                out["step"] = step
                break
        loss = stored_loss(self._scalar("loss"))
        if loss is not None:
            out["loss"] = loss
        return out

    def _scalar(self, key: str) -> float | int | None:
        chunk = self._layout.bytes.get(key)
        if chunk is None and key in self._layout.tensors:
            t = self._layout.tensors[key]
            if math.prod(t.shape) == 1 and len(t.chunks) == 1 and not t.skip:
                chunk = t.chunks[0]
        if chunk is None or chunk.length > MAX_SCALAR_BYTES or chunk.transforms:
            return None
        try:
            value = load_weights_only(read_range(chunk), chunk.where())
            if hasattr(value, "numel") and value.numel() == 1:
                value = value.item()
        except Exception:  # noqa: BLE001 - a courtesy: an unreadable scalar is left out
            return None
        return value

    def close(self) -> None:
        self._names = {}


def read_range(chunk: Chunk) -> bytes:
    """Exactly ``chunk.length`` bytes at ``chunk.start`` of its (regular) file."""
    with input_errors(chunk.file), open_regular(chunk.file) as fh:
        fh.seek(chunk.start)
        data = fh.read(chunk.length)
    if len(data) != chunk.length:
        raise InputError(f"{chunk.file}: truncated: {chunk.where()} holds only "
                         f"{len(data)} bytes")
    return data


def load_weights_only(data: bytes, label: str) -> Any:
    """``torch.load(weights_only=True)`` of one ``torch.save`` blob; a refusal names the
    globals it asked for (by static disassembly: nothing runs)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise
        names = ", ".join(_blob_globals(data)) or "(not named)"
        raise InputError(f"{label}: refused: the chunk's pickle needs globals outside "
                         f"the weights-only allowlist: {names}. Nothing from it was run."
                         ) from None


def _blob_globals(data: bytes) -> list[str]:
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            member = next(n for n in zf.namelist() if n.endswith("data.pkl"))
            with zf.open(member) as pkl:
                return sorted(set(scan_pickles(pkl, limit=1).globals))
    except Exception:  # noqa: BLE001 - only for the message
        return []


# --- the reader plugin ---------------------------------------------------------------


def _metadata_is_pickle(path: str) -> bool:
    """Whether ``path`` looks like DCP's pickle (a non-regular file counts, so that
    opening it refuses it by name rather than another reader misjudging the folder)."""
    try:
        with open_regular(path) as fh:
            return fh.read(1) == b"\x80"
    except InputError:
        return storage.plexists(path)


class DCPReader:
    """``spectrum.readers`` plugin: a folder holding DCP's ``.metadata``, that file
    itself, or one of its ``*.distcp`` files (each opens the whole checkpoint: a
    ``.distcp`` alone is a run of chunks that only the metadata can place). Priority 8:
    before ``torch-zip`` (10), which would otherwise take a ``.distcp`` for a torch file
    and read one chunk of it, and the legacy torch reader (50) and ``hf-folder`` (100),
    which misjudge the other two."""

    name = "torch-dcp"
    description = "torch.distributed.checkpoint folders (.metadata + *.distcp), " \
                  "metadata read into inert stand-ins, tensors weights-only"
    priority = 8
    #: A ``.distcp`` is only part of a checkpoint: discovery looks for the folder.
    suffixes: tuple[str, ...] = ()
    #: A folder holding ``.metadata``, which DCP writes last: complete once it is there.
    folder_markers = (FolderMarker("dcp", "DCP folders holding .metadata",
                                   holds=(METADATA_NAME,)),)

    def can_open(self, p: Probe) -> bool:
        if p.is_dir:
            return _metadata_is_pickle(storage.pjoin(p.path, METADATA_NAME))
        base = storage.pbasename(p.path)
        if base == METADATA_NAME:
            return p.head[:1] == b"\x80"
        return base.endswith(".distcp") and _metadata_is_pickle(
            storage.pjoin(storage.pdirname(p.path), METADATA_NAME))

    def open(self, path: str, policy: LoadPolicy) -> DCPSource:
        folder = path if storage.pisdir(path) else storage.pdirname(path)
        source = DCPSource(folder, policy)
        if folder != path:
            source.notes.append(f"{path} is part of a DCP checkpoint: read the whole "
                                f"checkpoint in {folder}")
        return source
