"""Sharded checkpoints: an ``*.index.json`` whose ``weight_map`` names the shard files
(``model.safetensors.index.json``, ``pytorch_model.bin.index.json``)."""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from spectrum_cli.core.errors import InputError
from spectrum_cli.io.base import LoadPolicy, SourceBase, TensorInfo, TensorSource


class ShardedSource(SourceBase):
    """Several sources read as one; tensor names must not repeat across shards."""

    def __init__(self, path: str, fmt: str, shards: list[TensorSource]) -> None:
        files = tuple(f for s in shards for f in s.files)
        super().__init__(path, fmt, files)
        self._shards = shards
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


def open_index(index_path: str, policy: LoadPolicy) -> ShardedSource:
    from spectrum_cli.io.detect import open_source

    try:
        with open(index_path, encoding="utf-8") as fh:
            weight_map = json.load(fh)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{index_path}: not a checkpoint index ({exc!r})") from None
    base = os.path.dirname(index_path)
    paths = [os.path.join(base, s) for s in shards]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{index_path}: missing shard(s): {', '.join(missing)}")
    shard_sources = [open_source(p, policy) for p in paths]
    fmt = shard_sources[0].format.removesuffix("-legacy") + "-sharded"
    return ShardedSource(index_path, fmt, shard_sources)
