"""Made-up formats that declare their layout (issue 23): FAKECKPT files (a line, then
JSON ``{"step": N, "tensors": {...}}``) with the suffix ``.fakeckpt``, folders holding
FAKE_MANIFEST (a JSON of the same kind), and NOLAYOUT files from a reader written before
readers declared a layout."""

import json
import os

from spectrum_fake_plugins.reader import JsonSource, MagicReader

MAGIC = b"FAKECKPT\n"
NOLAYOUT = b"NOLAYOUT\n"


def _source(path, fmt, blob, files=None):
    doc = json.loads(blob)
    return JsonSource(path, fmt, doc["tensors"], doc["step"], files)


class FakeCkptReader(MagicReader):
    name = "fakeckpt"
    description = "FAKECKPT files (discovery test plugin)"
    priority = 60
    suffixes = (".fakeckpt",)
    magic = MAGIC

    def source(self, path, blob):
        return _source(path, "fakeckpt", blob)


class FakeFolderReader:
    name = "fakefolder"
    description = "folders holding FAKE_MANIFEST (discovery test plugin)"
    priority = 90  # before hf-folder (100), which takes any folder
    folder_markers = ("FAKE_MANIFEST",)

    def can_open(self, probe):
        return probe.is_dir and os.path.isfile(os.path.join(probe.path, "FAKE_MANIFEST"))

    def open(self, path, policy):
        manifest = os.path.join(path, "FAKE_MANIFEST")
        with open(manifest, "rb") as fh:
            return _source(path, "fakefolder", fh.read(), (manifest,))


class NoLayoutReader(MagicReader):
    """A reader written before readers declared a layout: no suffixes, no markers."""

    name = "nolayout"
    description = "NOLAYOUT files (discovery test plugin)"
    priority = 61
    magic = NOLAYOUT

    def source(self, path, blob):
        return _source(path, "nolayout", blob)
