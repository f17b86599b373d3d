"""Sharded checkpoints: an ``*.index.json`` whose ``weight_map`` names the shard files
(``model.safetensors.index.json``, ``pytorch_model.bin.index.json``).

Shard names come from file content, so they are confined: a relative path inside the
index's folder, no ``..``, not absolute, not itself an index (no cycles), and a regular
file that resolves (symlinks followed) inside the folder, or inside the ``blobs/`` folder
of a Hugging Face hub cache (``<repo>/snapshots/<rev>/x -> ../../blobs/<hash>``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterator

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.io import storage
from spectrum_cli.io.base import (LoadPolicy, SourceBase, TensorInfo, TensorSource,
                                  allowed_roots, file_size, input_errors, open_regular)
from spectrum_cli.io.detect import open_file

#: Largest index file read (real ones are well under 1 MB).
MAX_INDEX_BYTES = 64 * 1024 * 1024


class ShardedSource(SourceBase):
    """Several sources read as one; tensor names must not repeat across shards."""

    def __init__(self, path: str, fmt: str, shards: list[TensorSource]) -> None:
        files = tuple(f for s in shards for f in s.files)
        super().__init__(path, fmt, files)
        self._shards = shards
        self.shareable = all(getattr(s, "shareable", False) for s in shards)
        self._owner: dict[str, TensorSource] = {}
        for shard in shards:
            self.notes.extend(shard.notes)
            for info in shard.entries():
                if info.name in self._owner:
                    raise InputError(f"{path}: tensor {info.name!r} appears in two shards")
                self._owner[info.name] = shard

    def entries(self) -> Iterator[TensorInfo]:
        for shard in self._shards:
            yield from shard.entries()

    def read(self, name: str) -> np.ndarray:
        return self._owner[name].read(name)

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


def read_shard_names(index_path: str) -> list[str]:
    """The distinct shard names of an index's ``weight_map`` (non-empty strings)."""
    with open_regular(index_path) as fh:
        size = file_size(fh)
        if size > MAX_INDEX_BYTES:
            raise InputError(f"{index_path}: index larger than {MAX_INDEX_BYTES} bytes")
        raw = fh.read(size + 1)  # no more than stat said: a /proc file says 0, never ends
    if len(raw) != size:
        raise InputError(f"{index_path}: holds other than the {size} bytes its size says "
                         "(changed while read, or not a plain file); refusing it")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise InputError(f"{index_path}: not a checkpoint index (JSON nested too "
                         "deeply)") from None
    except ValueError as exc:
        raise InputError(f"{index_path}: not a checkpoint index ({exc})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise InputError(f"{index_path}: not a checkpoint index (no \"weight_map\" object)")
    if not weight_map:
        raise InputError(f"{index_path}: the index's weight_map is empty")
    bad = [v for v in weight_map.values() if not isinstance(v, str) or not v]
    if bad:
        raise InputError(f"{index_path}: weight_map values must be shard file names, "
                         f"got {bad[0]!r}")
    return sorted(set(weight_map.values()))


def shard_path(index_path: str, name: str) -> str:
    """The path of shard ``name``, refused when it could leave the index's folder."""
    parts = re.split(r"[\\/]", name)
    if (os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
            or ".." in parts or "\x00" in name):
        raise InputError(f"{index_path}: shard {name!r} is outside the index's folder; "
                         "shard names must be relative paths inside it")
    if name.endswith(".index.json"):
        raise InputError(f"{index_path}: shard {name!r} is itself an index (an index may "
                         "only name weight files)")
    if storage.is_url(index_path):  # no symlinks in an object store: lexical check only
        full_url = storage.inside(storage.dirname(index_path), name)
        if full_url is None:
            raise InputError(f"{index_path}: shard {name!r} is outside the index's folder")
        return full_url
    folder = os.path.dirname(index_path) or "."
    full = os.path.join(folder, name)
    real = os.path.realpath(full)
    if not any(os.path.commonpath([real, root]) == root for root in allowed_roots(folder)):
        raise InputError(f"{index_path}: shard {name!r} resolves to {real}, outside the "
                         "index's folder")
    return full


def open_index(index_path: str, policy: LoadPolicy) -> ShardedSource:
    paths = [shard_path(index_path, s) for s in read_shard_names(index_path)]
    missing = [p for p in paths
               if not (storage.exists(p) if storage.is_url(p) else os.path.lexists(p))]
    if missing:
        raise InputError(f"{index_path}: missing shard(s): {', '.join(missing)}")
    sources: list[TensorSource] = []
    try:
        for p in paths:
            with input_errors(p):
                sources.append(open_file(p, policy))  # regular files only, never an index
        fmt = sources[0].format.removesuffix("-legacy") + "-sharded"
        return ShardedSource(index_path, fmt, sources)
    except BaseException:
        for s in sources:
            s.close()
        raise
