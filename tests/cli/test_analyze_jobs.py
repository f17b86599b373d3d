"""Issue 12 items 1 and 5: ``analyze --jobs N`` measures tensors in worker processes with
the numbers of ``--jobs 1``; ``--max-memory`` lowers the parallelism; a killed analysis
resumes from per-tensor results cached like batch's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from spectrum_cli.runs.threads import available_cores
from tests.helpers import run_cli, run_json, stripped
from tests.processes import running



@pytest.fixture
def several(tmp_path, rng):
    """A few hundred KB: matrices of several sizes (the largest is not first), an LSTM
    recurrent weight (whole + gate blocks: one stored tensor, several results), a square
    matrix, a conv kernel and a bias (skipped)."""
    tensors = {
        "embed.weight": rng.standard_normal((64, 48)),
        "block.0.attn.weight": rng.standard_normal((160, 128)),
        "block.0.mlp.weight": rng.standard_normal((96, 200)),
        "rnn.weight_hh_l0": rng.standard_normal((4 * 24, 24)) / 5,
        "square.weight": rng.standard_normal((40, 40)) / 7,
        "conv.weight": rng.standard_normal((16, 8, 3, 3)),
        "head.weight": rng.standard_normal((10, 64)),
        "head.bias": rng.standard_normal(10),
        "zlast.weight": rng.standard_normal((220, 160)),  # the largest, stored last
    }
    path = tmp_path / "several.safetensors"
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(path))
    return path


def test_jobs_2_gives_the_document_of_jobs_1(several):
    one, r1 = run_json(several, "--threads", "1", "--no-cache")
    two, r2 = run_json(several, "--threads", "1", "--jobs", "2", "--no-cache")
    assert r1.exit_code == r2.exit_code == 0, r2.stderr
    assert stripped(two) == stripped(one)  # every number, bit for bit, in plan order
    names = [t["name"] for t in two["tensors"]]
    assert names[0] == "block.0.attn.weight" and names[-1] == "zlast.weight"  # not by size
    assert any(t["name"] == "rnn.weight_hh_l0[f]" for t in two["tensors"])
    assert one["settings"]["run"]["workers"] == 0
    assert one["settings"]["run"]["executor"] == "serial"
    run = two["settings"]["run"]
    assert (run["jobs"], run["workers"], run["threads"], run["executor"]) == (2, 2, 1,
                                                                             "processes")


def test_thread_plan_is_recorded_and_fits_the_cores(several):
    doc, result = run_json(several, "--jobs", "2", "--no-cache")
    assert result.exit_code == 0, result.stderr
    run = doc["settings"]["run"]
    assert run["cores"] == available_cores()
    assert max(1, run["workers"]) * run["threads"] <= max(run["cores"], run["workers"])
    assert run["expected_peak_bytes"] > 0 and "8·m·n" in run["memory_rule"]
    assert doc["summary"]["from_cache"] == 0


def test_max_memory_lowers_the_workers(several):
    doc, _ = run_json(several, "--threads", "1", "--no-cache")
    # The largest stored tensor (220x160, dense, gesdd): its float32 bytes + 8·m·n·(1 + 1).
    largest = 220 * 160 * 4 + 8 * 220 * 160 * 2
    limited, result = run_json(several, "--threads", "1", "--jobs", "2", "--no-cache",
                               "--max-memory", str(largest + 1000))
    assert result.exit_code == 0, result.stderr
    run = limited["settings"]["run"]
    assert run["jobs"] == 2 and run["workers"] == 0  # one at a time: in this process
    assert run["max_memory"] == largest + 1000
    assert run["expected_peak_bytes"] == largest
    assert "expected peak memory" in result.stderr
    assert stripped(limited) == stripped(doc)


def test_max_memory_below_the_largest_tensor_is_exit_2(several):
    result = run_cli("analyze", several, "--jobs", "2", "--no-cache", "--max-memory", "100KiB")
    assert result.exit_code == 2
    assert "zlast.weight" in result.stderr and "--max-memory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("bad", ["lots", "-1GiB", "8XB", "0"])
def test_bad_max_memory_is_exit_2(several, bad):
    result = run_cli("analyze", several, "--no-cache", "--max-memory", bad)
    assert result.exit_code == 2, result.stderr
    assert "--max-memory" in result.stderr


@pytest.mark.parametrize("huge", ["1e400", "1e300TiB"])
def test_an_overflowing_max_memory_is_exit_2(several, huge, tmp_path):
    """Issue 22: 1e400 bytes was an OverflowError (exit 3) on the command line, in a
    configuration file and through the API."""
    result = run_cli("analyze", several, "--no-cache", "--max-memory", huge)
    assert result.exit_code == 2, result.stderr
    assert "--max-memory" in result.stderr and "Traceback" not in result.stderr
    r = subprocess.run([_spectrum(), "analyze", str(several), "--no-cache",
                        "--max-memory", huge], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--max-memory" in r.stderr, r.stderr
    folder = tmp_path / "cfg"
    folder.mkdir()
    shutil.copy(several, folder / several.name)
    (folder / "spectrum.toml").write_text(f'max_memory = "{huge}"\n')
    result = run_cli("analyze", folder / several.name, "--no-cache")
    assert result.exit_code == 2, result.stderr
    assert "max_memory" in result.stderr and "Traceback" not in result.stderr
    import spectrum_cli
    from spectrum_cli.core.errors import UsageError

    for value in (huge, 10**400):
        with pytest.raises(UsageError, match="max.memory"):
            spectrum_cli.analyze(several, use_config=False, max_memory=value)


@pytest.mark.parametrize("huge", ["1e400", "1e300TiB", "9" * 400])
def test_parse_size_refuses_what_overflows(huge):
    """The parser every path shares (CLI, configuration, API, batch): a UsageError
    naming the option, never an OverflowError."""
    from spectrum_cli.core.errors import UsageError
    from spectrum_cli.settings import parse_size

    with pytest.raises(UsageError, match="max_memory: .* too large"):
        parse_size(huge, "max_memory")
    assert parse_size(10**400, "max_memory") == 10**400  # exact; the settings cap it


def test_cache_reuses_every_tensor_and_equals_a_clean_run(several, tmp_path):
    cache = tmp_path / "cache"
    args = (several, "--threads", "1", "--square", "all", "--eps", "0.05")
    clean, _ = run_json(*args, "--no-cache")
    first, _ = run_json(*args, "--cache-dir", cache)
    again, _ = run_json(*args, "--cache-dir", cache)
    assert first["summary"]["from_cache"] == 0
    assert again["summary"]["from_cache"] == again["summary"]["analysed"] > 0
    assert stripped(again) == stripped(first) == stripped(clean)
    assert again["settings"]["run"]["cache"] == str(cache)
    # Another setting is another key: nothing reused.
    other, _ = run_json(several, "--threads", "1", "--square", "none", "--cache-dir", cache)
    assert other["summary"]["from_cache"] == 0


def test_no_cache_and_small_inputs_write_nothing(several, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRUM_CACHE_DIR", str(tmp_path / "default"))
    doc, _ = run_json(several, "--no-cache")
    assert doc["settings"]["run"]["cache"] is None
    doc, _ = run_json(several)  # the default cache serves big checkpoints only
    assert doc["settings"]["run"]["cache"] is None
    assert not any((tmp_path / "default").rglob("*.json"))
    result = run_cli("analyze", several, "--no-cache", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 2


def test_a_damaged_or_foreign_cache_entry_is_a_miss(several, tmp_path):
    cache = tmp_path / "cache"
    run_json(several, "--threads", "1", "--cache-dir", cache)
    entries = sorted(cache.glob("*.json"))
    assert entries
    record = json.loads(entries[0].read_text())
    record["results"] = [{"__dc__": "os:system", "fields": {}}]  # never imported or called
    entries[0].write_text(json.dumps(record))
    entries[1].write_text("{not json")
    doc, result = run_json(several, "--threads", "1", "--cache-dir", cache)
    assert result.exit_code == 0, result.stderr
    assert 0 < doc["summary"]["from_cache"] < doc["summary"]["analysed"]
    clean, _ = run_json(several, "--threads", "1", "--no-cache")
    assert stripped(doc) == stripped(clean)
    again, _ = run_json(several, "--threads", "1", "--cache-dir", cache)  # rewritten
    assert again["summary"]["from_cache"] == again["summary"]["analysed"]


def test_result_codec_round_trips_exactly(rng):
    from spectrum_cli.runs import codec as pipeline
    from spectrum_cli.api import analyze_matrix

    t = analyze_matrix(rng.standard_normal((30, 30)) / 6, square="all", eps=["0.1"])
    assert t.nonnormal is not None
    back = pipeline.decode(json.loads(json.dumps(pipeline.encode(t))))
    from spectrum_cli.report.document import tensor_entry

    assert tensor_entry(back) == tensor_entry(t)
    assert np.array_equal(back.singular_values.values, t.singular_values.values)
    assert back.eigenvalues.values.dtype == t.eigenvalues.values.dtype
    with pytest.raises(ValueError):
        pipeline.decode({"__dc__": "subprocess:Popen", "fields": {"args": "true"}})


# --------------------------------------------------------------------------- resume


def _spectrum() -> str:
    found = shutil.which("spectrum", path=str(Path(sys.executable).parent))
    return found or shutil.which("spectrum")


@pytest.fixture
def slow(tmp_path, rng):
    """Square matrices whose eigen and non-normal analysis (--square all) takes a
    noticeable time each."""
    path = tmp_path / "slow.safetensors"
    save_file({f"layer{i}.weight": (rng.standard_normal((120, 120)) / 12).astype(np.float32)
               for i in range(8)}, str(path))
    return path


def _descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (the forkserver and its workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - out
        out |= frontier
    return out


def _kill_after(cmd: list[str], cache: Path, entries: int, env: dict) -> set[int]:
    """Start ``cmd``, SIGKILL it once ``entries`` results are cached; its descendants."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    family: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(list(cache.glob("*.json"))) < entries:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            family |= _descendants(proc.pid)
            time.sleep(0.05)
        family |= _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return family


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_killed_analysis_resumes_from_the_cached_tensors(slow, tmp_path, jobs):
    cache = tmp_path / "cache"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    args = [str(slow), "--threads", "1", "--square", "all", "--json"]
    family = _kill_after([_spectrum(), "analyze", *args, "--jobs", jobs, "--cache-dir",
                          str(cache)], cache, 2, env)
    done = len(list(cache.glob("*.json")))
    assert 2 <= done < 8
    if jobs == "2":  # the workers (and their forkserver) died with the parent
        assert family and not any(running(p, grace=10) for p in family)
    resumed, result = run_json(*args[:-1], "--cache-dir", cache)
    assert result.exit_code == 0, result.stderr
    assert resumed["summary"]["from_cache"] == done  # only the missing ones computed
    assert len(list(cache.glob("*.json"))) == 8
    clean, _ = run_json(*args[:-1], "--no-cache")
    assert stripped(resumed) == stripped(clean)


def test_progress_shows_tensors_and_bytes():
    import io

    from rich.console import Console

    from spectrum_cli.cli.analyze import analysis_progress
    from spectrum_cli.runs.dispatch import Tick

    out = io.StringIO()
    tty = Console(file=out, force_terminal=True, width=120)
    with analysis_progress(tty, enabled=True) as bar:
        bar.tick(Tick(1, 4, 4 << 20, 16 << 20, 0, "a.weight"))
        bar.tick(Tick(4, 4, 16 << 20, 16 << 20, 0, "d.weight"))
    text = out.getvalue()
    assert "4/4 tensors" in text and "MB" in text
