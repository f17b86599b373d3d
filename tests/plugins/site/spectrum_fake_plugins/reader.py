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


class MagicReader:
    """A reader of files whose first line is ``magic``; :meth:`source` reads the rest."""

    magic = MAGIC

    def can_open(self, probe):
        return not probe.is_dir and probe.head.startswith(self.magic)

    def open(self, path, policy):
        with open(path, "rb") as fh:
            return self.source(path, fh.read()[len(self.magic):])


class FakeMatReader(MagicReader):
    name = "fakemat"
    description = "FAKEMAT1 text matrices (test plugin)"
    priority = 1

    def source(self, path, blob):
        return JsonSource(path, "fakemat", json.loads(blob), 7)
