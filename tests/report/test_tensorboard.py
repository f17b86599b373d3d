"""TensorBoardWriter: event files that TensorBoard's own reader reads back; the log
folder's rules (created when missing, refused when not a folder, nothing overwritten)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from spectrum_cli.core.errors import UsageError
from spectrum_cli.report import tensorboard as T
from spectrum_cli.report.tensorboard import TensorBoardWriter

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read(logdir) -> EventAccumulator:
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    return ea


def test_scalars_and_histograms_read_back(tmp_path, rng):
    logdir = tmp_path / "a" / "b" / "tb"  # created, parents too
    sigma = np.sort(rng.lognormal(size=300))[::-1]
    with TensorBoardWriter(logdir) as tb:
        tb.add(0, {"tensors.max_kappa": 12.5, "tensors.min_stable_rank": 1 / 3},
               {"fc.weight": sigma})
        tb.add(10, {"tensors.max_kappa": float("inf")})
        tb.add(20, {"tensors.max_kappa": np.float64(1e40)}, {"flat": np.full(5, 2.0)})
    ea = read(logdir)
    kappa = ea.Scalars("tensors.max_kappa")
    assert [e.step for e in kappa] == [0, 10, 20]
    # TensorBoard's scalars are float32: 12.5 exactly, inf as inf, 1e40 beyond float32.
    assert [e.value for e in kappa] == [12.5, float("inf"), float("inf")]
    assert ea.Scalars("tensors.min_stable_rank")[0].value == np.float32(1 / 3)
    (h,) = ea.Histograms("fc.weight")
    hv = h.histogram_value
    assert h.step == 0 and hv.num == 300
    assert hv.min == sigma.min() and hv.max == sigma.max()
    assert hv.sum == pytest.approx(sigma.sum(), rel=1e-12)
    assert hv.sum_squares == pytest.approx(np.sum(sigma**2), rel=1e-12)
    counts, edges = np.histogram(sigma, bins=T.HISTOGRAM_BUCKETS)
    assert list(hv.bucket) == counts.tolist()
    np.testing.assert_allclose(hv.bucket_limit, edges[1:], rtol=1e-15)
    (flat,) = ea.Histograms("flat")
    assert list(flat.histogram_value.bucket) == [5] and flat.histogram_value.min == 2.0
    assert set(ea.Tags()["distributions"]) == {"fc.weight", "flat"}


def test_non_finite_entries_are_left_out_of_a_histogram(tmp_path):
    with TensorBoardWriter(tmp_path) as tb:
        tb.add(1, {}, {"h": np.array([1.0, np.nan, 3.0, np.inf]), "empty": np.array([])})
    ea = read(tmp_path)
    assert ea.Tags()["histograms"] == ["h"]
    hv = ea.Histograms("h")[0].histogram_value
    assert (hv.num, hv.min, hv.max, hv.sum) == (2, 1.0, 3.0, 4.0)


def test_two_writers_write_two_files_and_nothing_is_replaced(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    with TensorBoardWriter(tmp_path) as a, TensorBoardWriter(tmp_path) as b:
        a.add(1, {"x": 1.0})
        b.add(2, {"x": 2.0})
    files = sorted(p.name for p in tmp_path.iterdir() if "tfevents" in p.name)
    assert len(files) == 2 and a.path != b.path
    assert all(f.endswith(".spectrum") for f in files)
    assert keep.read_text() == "mine"
    assert sorted(e.step for e in read(tmp_path).Scalars("x")) == [1, 2]


def test_an_existing_event_file_name_is_refused(tmp_path, monkeypatch):
    taken = tmp_path / "events.out.tfevents.1.host.1.0.spectrum"
    taken.write_bytes(b"someone else's")
    monkeypatch.setattr(T, "_event_path", lambda logdir: str(taken))
    with pytest.raises(UsageError, match="exists already"):
        TensorBoardWriter(tmp_path)
    assert taken.read_bytes() == b"someone else's"


def test_a_symlink_at_the_event_path_is_not_followed(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    link = tmp_path / "tb" / "events.out.tfevents.1.host.1.0.spectrum"
    link.parent.mkdir()
    link.symlink_to(target)  # dangling: O_CREAT alone would create "elsewhere"
    monkeypatch.setattr(T, "_event_path", lambda logdir: str(link))
    with pytest.raises(UsageError, match="exists already"):
        TensorBoardWriter(link.parent)
    assert not target.exists()


def test_a_logdir_that_is_not_a_folder_is_refused(tmp_path):
    f = tmp_path / "tb"
    f.write_text("data")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        TensorBoardWriter(f)
    assert f.read_text() == "data"
    with pytest.raises(UsageError, match="cannot create"):
        TensorBoardWriter(f / "sub")


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UsageError, match=r"pip install 'spectrum-cli\[tensorboard\]'"):
        TensorBoardWriter(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_bad_arguments(tmp_path):
    tb = TensorBoardWriter(tmp_path)
    with pytest.raises(ValueError, match="step"):
        tb.add(1.5, {"x": 1.0})
    with pytest.raises(ValueError, match="scalars\\['x'\\]"):
        tb.add(1, {"x": "big"})
    tb.close()
    tb.close()  # idempotent
    with pytest.raises(ValueError, match="after close"):
        tb.add(1, {"x": 1.0})


def test_writing_imports_neither_torch_nor_tensorflow(tmp_path):
    code = ("import sys\nfrom spectrum_cli.report.tensorboard import TensorBoardWriter\n"
            f"with TensorBoardWriter({str(tmp_path)!r}) as tb:\n"
            "    tb.add(1, {'x': 1.0})\n"
            "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"
    assert os.listdir(tmp_path)


def test_batch_tensorboard_writes_every_checkpoint(tmp_path):
    """`spectrum batch --tensorboard`: each checkpoint's indicators as scalars at its step
    (TensorBoard's own reader), and the log10 singular-value histogram."""
    import json

    from tests.batch.folders import weights_only_run
    from tests.helpers import run_cli

    run = weights_only_run(tmp_path / "run", steps=3)
    logdir = tmp_path / "tb"
    r = run_cli("batch", run, "--json", "--no-cache", "--tensorboard", logdir)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    ea = read(logdir)
    tags = ea.Tags()
    kappa = "tensors.max_kappa"
    assert kappa in tags["scalars"] and "singular_values/log10" in tags["histograms"]
    events = ea.Scalars(kappa)
    assert [e.step for e in events] == [c["step"] for c in doc["checkpoints"]]
    for e, c in zip(events, doc["checkpoints"]):
        assert e.value == pytest.approx(c["indicators"][kappa], rel=1e-6)  # float32
    hists = ea.Histograms("singular_values/log10")
    # 3 matrices per checkpoint: 16 + 16 + 4 singular values
    assert [h.histogram_value.num for h in hists] == [36, 36, 36]


def test_steps_an_event_cannot_hold_are_dropped_not_raised(tmp_path):
    """Steps come from checkpoints (data): a negative one or one beyond int64 is left
    out and listed in ``dropped``; the steps that fit are written."""
    with TensorBoardWriter(tmp_path) as tb:
        assert tb.add(-1, {"x": 1.0}) is False
        assert tb.add(2**63, {"x": 1.0}) is False
        assert tb.add(2**63 - 1, {"x": 2.0}) is True
        assert tb.add(3, {"x": 10**400, "bad\udcffname": 1.0}) is True
    assert tb.dropped == [-1, 2**63]
    acc = read(tmp_path)
    assert sorted(e.step for e in acc.Scalars("x")) == [3, 2**63 - 1]
    assert [e.value for e in acc.Scalars("x") if e.step == 3] == [float("inf")]
    assert [e.step for e in acc.Scalars("bad\\xffname")] == [3]
