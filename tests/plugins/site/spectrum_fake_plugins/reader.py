"""A reader for a made-up text format: the line FAKEMAT1, then one JSON object mapping
tensor names to nested lists of numbers."""

import json

import numpy as np

from spectrum_cli.io.base import SourceBase, TensorInfo

MAGIC = b"FAKEMAT1\n"


class FakeMatSource(SourceBase):
    def __init__(self, path):
        super().__init__(path, "fakemat", (path,))
        with open(path, "rb") as fh:
            self._data = json.loads(fh.read()[len(MAGIC):])

    def entries(self):
        for name, value in self._data.items():
            yield TensorInfo(name, np.shape(value), "float64")

    def read(self, name):
        return np.asarray(self._data[name], dtype=np.float64)

    def scalars(self):
        return {"step": 7}


class FakeMatReader:
    name = "fakemat"
    description = "FAKEMAT1 text matrices (test plugin)"
    priority = 1

    def can_open(self, probe):
        return not probe.is_dir and probe.head.startswith(MAGIC)

    def open(self, path, policy):
        return FakeMatSource(path)
