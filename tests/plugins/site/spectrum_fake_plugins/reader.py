"""A reader for a made-up text format: the line FAKEMAT1, then one JSON object mapping
tensor names to nested lists of numbers."""

import json

import numpy as np

from spectrum_cli.io.base import SourceBase, TensorInfo

MAGIC = b"FAKEMAT1\n"


class JsonSource(SourceBase):
    """Tensors given as nested lists of numbers (``tensors``: name -> list), at ``step``."""

    def __init__(self, path, fmt, tensors, step, files=None):
        super().__init__(path, fmt, files or (path,))
        self._data, self._step = tensors, step

    def entries(self):
        for name, value in self._data.items():
            yield TensorInfo(name, np.shape(value), "float64")

    def read(self, name):
        return np.asarray(self._data[name], dtype=np.float64)

    def scalars(self):
        return {"step": self._step}


class FakeMatReader:
    name = "fakemat"
    description = "FAKEMAT1 text matrices (test plugin)"
    priority = 1

    def can_open(self, probe):
        return not probe.is_dir and probe.head.startswith(MAGIC)

    def open(self, path, policy):
        with open(path, "rb") as fh:
            return JsonSource(path, "fakemat", json.loads(fh.read()[len(MAGIC):]), 7)
