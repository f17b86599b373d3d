"""Where spectrum may write (issue 10, item 1): never over an input, a device, a FIFO, a
directory or a file that is not already a spectrum output (without --force); failures
of the write itself become exit 2 with the old file untouched and no temporary left."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import save_file

from spectrum_cli.core.errors import InputError
from spectrum_cli.report import output
from spectrum_cli.report.output import atomic_path, check_target, is_output, printable
from tests.helpers import run_cli


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "v.safetensors"
    save_file({"w": np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)},
              str(path))
    return path


@pytest.fixture
def report(tmp_path, ckpt):
    path = tmp_path / "r.h5"
    assert run_cli("analyze", ckpt, "--report", path).exit_code == 0
    return path


def _tmp_left(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_report_over_the_checkpoint_is_refused_and_leaves_it_intact(ckpt):
    before = ckpt.read_bytes()
    result = run_cli("analyze", ckpt, "--report", ckpt)
    assert result.exit_code == 2, result.stderr
    assert "refused" in result.stderr and ckpt.name in result.stderr
    assert ckpt.read_bytes() == before


def test_an_input_is_refused_even_with_force(ckpt, report, tmp_path):
    with pytest.raises(InputError, match="over an input"):
        check_target(ckpt, kind="report", inputs=[ckpt], force=True)
    link = tmp_path / "hard.safetensors"
    os.link(ckpt, link)  # same inode, other name
    with pytest.raises(InputError, match="over an input"):
        check_target(link, kind="report", inputs=[ckpt], force=True)
    # A report given as input (diff, report show) is refused too, though it is ours.
    with pytest.raises(InputError, match="over an input"):
        check_target(report, kind="report", inputs=[report])


def test_files_inside_an_input_folder(tmp_path, ckpt, report):
    folder = tmp_path  # a run folder: it holds another input (batch's folder), or is listed
    for run in ({"inputs": [folder, ckpt]}, {"listed": [folder]}):
        with pytest.raises(InputError, match="over an input"):
            check_target(ckpt, kind="report", force=True, **run)
        assert check_target(folder / "new.h5", kind="report", **run)
        # A spectrum report of an earlier run in the folder is ours, not the checkpoint's.
        assert check_target(report, kind="report", **run) == str(report.resolve())
        with pytest.raises(InputError, match="over an input"):
            check_target(folder, kind="report", **run)


def test_nothing_is_written_inside_a_folder_read_whole(tmp_path, ckpt, report):
    """Issue 26: a folder read as one checkpoint (an HF checkpoint-1/, a model folder)
    takes no new file, not even spectrum's own, whether alone or under a run folder."""
    hf = tmp_path / "run" / "checkpoint-1"
    hf.mkdir(parents=True)
    (hf / "model.safetensors").write_bytes(ckpt.read_bytes())
    (hf / "r.h5").write_bytes(report.read_bytes())
    for inputs in ([hf], [tmp_path / "run", hf]):
        for target in (hf / "new.h5", hf / "r.h5", hf / "sub" / "new.h5"):
            with pytest.raises(InputError, match="inside an input folder"):
                check_target(target, kind="report", inputs=inputs, force=True)
        with pytest.raises(InputError, match="inside an input folder"):
            output.check_folder_target(hf / "tb", what="the log", inputs=inputs)
        with pytest.raises(InputError, match="input folder"):
            output.check_folder_target(hf, what="the log", inputs=inputs)
    assert check_target(tmp_path / "run" / "new.h5", kind="report",
                        inputs=[tmp_path / "run", hf])
    output.check_folder_target(tmp_path / "run" / "tb", what="the log",
                               inputs=[tmp_path / "run", hf])


def test_existing_files_of_another_kind_need_force(tmp_path, report):
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    with pytest.raises(InputError, match="--force"):
        check_target(other, kind="report")
    assert check_target(other, kind="report", force=True) == str(other.resolve())
    assert check_target(report, kind="report") == str(report.resolve())
    with pytest.raises(InputError, match="not a spectrum plot"):
        check_target(report, kind="plot")
    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    svg = tmp_path / "p.svg"
    svg.write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>')
    assert is_output(str(png), "plot") and is_output(str(svg), "plot")
    assert not is_output(str(other), "plot") and not is_output(str(png), "report")
    with pytest.raises(ValueError):
        check_target(png, kind="json")


@pytest.mark.parametrize("make", ["dir", "fifo", "device", "socket"])
def test_non_regular_targets_are_refused_even_with_force(tmp_path, make):
    target = tmp_path / "target"
    if make == "dir":
        target.mkdir()
    elif make == "fifo":
        os.mkfifo(target)
    elif make == "device":
        try:  # a copy of /dev/full
            os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        except (PermissionError, OSError):
            pytest.skip("mknod not permitted here")
    else:
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.bind(str(target))
        s.close()
    with pytest.raises(InputError, match="not a regular file"):
        check_target(target, kind="report", force=True)


def test_cli_refuses_devices_and_fifos_untouched(tmp_path, ckpt):
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    result = run_cli("analyze", ckpt, "--report", fifo)
    assert result.exit_code == 2 and "FIFO" in result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _tmp_left(tmp_path) == []


def test_symlinks_are_judged_by_their_target(tmp_path, ckpt, report):
    to_ckpt = tmp_path / "link-to-ckpt.h5"
    to_ckpt.symlink_to(ckpt)
    before = ckpt.read_bytes()
    result = run_cli("analyze", ckpt, "--report", to_ckpt)
    assert result.exit_code == 2, result.stderr
    assert ckpt.read_bytes() == before and to_ckpt.is_symlink()
    # A link to a report of ours: the report is replaced, the link kept.
    to_report = tmp_path / "link-to-report.h5"
    to_report.symlink_to(report)
    old = report.stat().st_mtime_ns
    assert run_cli("analyze", ckpt, "--report", to_report).exit_code == 0
    assert to_report.is_symlink() and report.stat().st_mtime_ns != old
    dangling = tmp_path / "dangling.h5"
    dangling.symlink_to(tmp_path / "nowhere" / "x.h5")
    with pytest.raises(InputError, match="symlink to a missing file"):
        check_target(dangling, kind="report")
    to_dev = tmp_path / "null.h5"
    to_dev.symlink_to("/dev/null")
    with pytest.raises(InputError, match="character device"):
        check_target(to_dev, kind="report", force=True)


def test_missing_folder_is_exit_2(tmp_path, ckpt):
    result = run_cli("analyze", ckpt, "--report", tmp_path / "no" / "r.h5")
    assert result.exit_code == 2 and "does not exist" in result.stderr


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOENT])
def test_os_errors_while_writing_become_input_errors(tmp_path, report, monkeypatch, code):
    before = report.read_bytes()

    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(output.os, "replace", fail)
    with pytest.raises(InputError, match=str(report.name)):
        with atomic_path(report, kind="report") as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"new")
    assert report.read_bytes() == before and _tmp_left(tmp_path) == []


def test_readonly_folder(tmp_path, ckpt):
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = run_cli("analyze", ckpt, "--report", folder / "r.h5")
        assert result.exit_code == 2 and "not writable" in result.stderr
    finally:
        folder.chmod(0o700)


def test_full_disk_through_the_console_script(tmp_path, ckpt, report):
    """A file-size limit makes every write past 4 KiB fail (EFBIG, as a full disk
    would): exit 2 naming the path, the old report intact, no temporary left."""
    big = tmp_path / "big.safetensors"
    save_file({f"w{i}": np.random.default_rng(i).standard_normal((64, 64)).astype(np.float32)
               for i in range(8)}, str(big))
    before = report.read_bytes()
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from spectrum_cli.cli.app import main
        sys.argv = ["spectrum", "analyze", {str(big)!r}, "--report", {str(report)!r}]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, COLUMNS="80", NO_COLOR="1"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and report.name in proc.stderr
    assert report.read_bytes() == before and _tmp_left(tmp_path) == []


def test_stale_temporaries_with_suffix_are_swept(tmp_path):
    target = tmp_path / "p.png"
    dead = tmp_path / ".p.png.tmp-999999999-abcd1234.png"
    dead.write_bytes(b"x")
    with atomic_path(target, kind="plot") as tmp:
        assert tmp.endswith(".png")  # matplotlib picks the format from the suffix
        with open(tmp, "wb") as fh:
            fh.write(b"\x89PNG\r\n\x1a\n")
    assert not dead.exists() and target.read_bytes().startswith(b"\x89PNG")


def test_printable_escapes_control_characters():
    assert printable("layer.0.weight") == "layer.0.weight"
    assert printable("a\x1b[31mb\r\nc\x9bd\x7f") == "a\\x1b[31mb\\x0d\\x0ac\\x9bd\\x7f"
    assert printable("x\u202ey\u2028") == "x\\u202ey\\u2028"
    assert printable("κ(V) ü 漢") == "κ(V) ü 漢"
