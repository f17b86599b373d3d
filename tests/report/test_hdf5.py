"""HDF5 reports: schema, round trip, spectra, atomic replacement."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectrum_cli.core.analyze import AnalyzeOptions, analyze_source
from spectrum_cli.plugins import get_backend
from spectrum_cli.core.errors import InputError
from spectrum_cli.core.results import SourceInfo
from spectrum_cli.io import open_source
from spectrum_cli.report import hdf5
from spectrum_cli.report.document import build_document, json_safe


@pytest.fixture
def analysed(tmp_path):
    g = torch.Generator().manual_seed(3)
    sd = {"a/b.weight": torch.randn(40, 40, generator=g), "big": torch.randn(2000, 3, generator=g),
          "zero": torch.zeros(3, 3), "vec": torch.ones(5)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    src = open_source(str(tmp_path / "m.safetensors"))
    result = analyze_source(src, SourceInfo("m", "safetensors", src.files, 1, "ab" * 32),
                            AnalyzeOptions(square="all"), get_backend)
    return result, build_document(result)


def test_layout_and_round_trip(tmp_path, analysed):
    result, doc = analysed
    path = tmp_path / "r.h5"
    hdf5.write_report(str(path), doc, result)
    with h5py.File(path) as f:
        assert f.attrs["schema"] == "spectrum.analysis"
        assert f.attrs["schema_version"] == "1.0.0"
        assert f.attrs["source_sha256"] == "ab" * 32
        assert list(f["tensors"]) == ["a|b.weight", "big", "zero"]  # analysis order
        g = f["tensors/a|b.weight"]
        assert g.attrs["name"] == "a/b.weight"
        sv = g["singular_values"][()]
        np.testing.assert_array_equal(sv, result.tensors[0].singular_values.values)
        assert g["eigenvalues"].dtype == np.complex128
        assert g.attrs["kappa"] == result.tensors[0].metrics["kappa"]
        assert "spectral_entropy" in list(np.atleast_1d(
            __import__("json").loads(f["tensors/zero"].attrs["undefined_metrics"])))
        assert list(f["skipped/name"].asstr()[()]) == ["vec"]
    # Equal as JSON (non-finite numbers nested in JSON attributes come back as "inf").
    assert json_safe(hdf5.read_report(str(path))) == json_safe(doc)
    back = hdf5.read_report(str(path), spectra=True)
    np.testing.assert_array_equal(back["tensors"][1]["spectra"]["singular_values"],
                                  result.tensors[1].singular_values.values)


def test_killed_write_leaves_previous_report_intact(tmp_path, analysed, monkeypatch):
    result, doc = analysed
    path = tmp_path / "r.h5"
    hdf5.write_report(str(path), doc, result)
    before = path.read_bytes()

    def die(*a, **k):
        raise KeyboardInterrupt  # as if the run were stopped mid-write

    monkeypatch.setattr(hdf5, "_write_table", die)
    with pytest.raises(KeyboardInterrupt):
        hdf5.write_report(str(path), doc, result)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_stale_temp_files_of_dead_runs_are_swept(tmp_path, analysed):
    result, doc = analysed
    path = tmp_path / "r.h5"
    dead = tmp_path / ".r.h5.tmp-999999999-abcd1234"
    alive = tmp_path / f".r.h5.tmp-{os.getpid()}-abcd1234"
    dead.write_bytes(b"partial")
    alive.write_bytes(b"in progress elsewhere")
    hdf5.write_report(str(path), doc, result)
    assert not dead.exists() and alive.exists()


def test_reading_something_else_is_a_clear_error(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["schema"] = "someone.else"
    with pytest.raises(InputError, match="not a spectrum report"):
        hdf5.read_report(str(tmp_path / "other.h5"))
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable HDF5"):
        hdf5.read_report(str(tmp_path / "junk.h5"))
    with h5py.File(tmp_path / "future.h5", "w") as f:
        f.attrs["schema"] = "spectrum.analysis"
        f.attrs["schema_version"] = "2.0.0"
    with pytest.raises(InputError, match="2.0.0 is not supported"):
        hdf5.read_report(str(tmp_path / "future.h5"))
