"""A sharded LLM checkpoint in one run: --jobs 1, --jobs 2, Dask, a numpy loop, WeightWatcher.

    .venv/bin/python bench/make_llm_shaped.py /tmp/llm/tinyllama --shape tinyllama
    .venv/bin/python bench/bench_llm.py /tmp/llm/tinyllama [--baseline-sample 2] [--s3]
                                        [--runs 1] [--no-ww] [--json-out FIGURES.json]

Whole processes, each timed with ``time.perf_counter`` around it, in this order (after
one untimed read of every file, so that all runs find the page cache equally warm),
``--runs`` rounds of spectrum's runs interleaved (medians and min-max printed; the numpy
loop and WeightWatcher, minutes each, in the first round only):

  jobs1    .venv/bin/spectrum analyze FOLDER --json --no-cache --jobs 1 --threads 1
           (spectrum's own process, one BLAS thread: the one-core run)
  jobs2    ... --jobs 2 --threads 1           (2 worker processes x 1 BLAS thread)
  dask     ... --executor dask --scheduler tcp://127.0.0.1:P  (a LocalCluster of 2 worker
           processes x 1 thread that this script starts; Dask's nanny gives each one BLAS
           thread; the workers are warmed by an untimed one-tensor run first, as a
           standing cluster would be; ``--executor dask`` because ``--scheduler`` alone
           with ``--jobs 1`` computes in the client, and a run whose ``settings.run``
           does not say ``dask`` is counted as failed)
  numpy    bench/baseline_numpy_svd.py FOLDER: load, .to(float64), np.linalg.svd(
           compute_uv=False) per matrix, default BLAS threads (every core);
           ``--baseline-sample K`` times K matrices per distinct shape and extrapolates by
           count (labelled "extrapolated"); ``--numpy-one-thread`` adds the same loop at
           one BLAS thread, printed against --jobs 1 (one core each)
  ww       WeightWatcher 0.7.7 (bench/.venv-peers, from ``bash bench/setup_peers.sh``) on
           the same folder, for reference; skipped when absent

BLAS threads: the thread variables (OMP/OPENBLAS/MKL_NUM_THREADS) are removed from every
child's environment, so each tool uses its own default; the threads each run used are
printed (spectrum's from ``settings.run``, the baseline's from threadpoolctl, the Dask
workers' from threadpoolctl on the workers).

Peak RSS per worker: VmHWM of every process of a run's tree, polled every 50 ms (workers
are forked from spectrum's forkserver; a forked process starts its own high-water mark),
plus ``ru_maxrss`` of the whole tree from a small launcher (Linux carries the RSS peak
across fork and exec, so a child forked from this process would report this process's
peak; one forked from the launcher starts from the launcher's, as in tests/hostile).
Dask workers outlive the run: their VmHWM is reset (``/proc/PID/clear_refs`` 5) before
it and read after it.

Identity: every metric of every tensor must agree across jobs1, jobs2 and dask (max
relative difference <= 1e-12; every run uses one BLAS thread per process, so they
usually agree bit for bit). Targets (issue #12, for the
tinyllama shape): jobs2 >= 1.8x jobs1; numpy loop >= 4x jobs2's time; dask <= 1.35x
jobs2's time; peak RSS per worker <= 1 GB (10^9 bytes), over jobs1, jobs2 and dask.

S3 (``--s3``): moto's server (``moto.server.ThreadedMotoServer``) in a child process,
counting the bytes of every response body it writes (a WSGI wrapper, independent of
spectrum and s3fs); the folder is uploaded (not counted), and jobs1, jobs2 and dask run
on ``s3://BUCKET/NAME`` with ``--storage-option endpoint_url=`` the server in every round
(interleaved with the local runs, medians reported), plus one ``--include`` of one layer.
Numbers must equal the local runs'; the one-layer run must read < 5% of the folder's
bytes (a target for tinyllama: a layer is 4.0% of it; on the small shape a layer alone
is 11%). moto is a Python process on the same cores as the runs (it used ~4 s of CPU to
serve the 2 GB folder): the S3 bytes are exact, the S3 times are not a real object
store's, and the --jobs 2 run, which has no idle core to give moto, pays most of it. :func:`measure_target` is the hook: a target (path or
URL) plus storage options in, timed runs out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the launcher the tests measure peak memory with
from tests.processes import REAPER  # noqa: E402

PEERS = HERE / ".venv-peers" / "bin" / "python"
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GB = 10**9
MIB = 2**20
#: Relative difference allowed between the runs' metrics.
IDENTICAL = 1e-12
TARGETS = {"jobs2_speedup": 1.8, "numpy_over_jobs2": 4.0, "dask_over_jobs2": 1.35,
           "rss_per_worker": 1 * GB, "include_fraction": 0.05}



# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    pid: int
    ppid: int
    cmdline: str
    hwm: int = 0  # bytes, the largest VmHWM seen


@dataclass
class Run:
    label: str
    argv: list[str]
    wall: float = 0.0
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    tree_maxrss: int = 0  # bytes, ru_maxrss of the launcher's child and its waited-for tree
    procs: dict[int, Proc] = field(default_factory=dict)
    main_pid: int = 0
    workers: dict[int, int] = field(default_factory=dict)  # pid -> peak RSS bytes
    doc: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    except (OSError, ValueError):
        pass
    return out


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _status(pid: int) -> tuple[int, int] | None:
    """(ppid, VmHWM bytes) of a live process; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            text = fh.read()
    except OSError:
        return None
    hwm = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    ppid = re.search(r"^PPid:\s+(\d+)", text, re.M)
    if hwm is None or ppid is None:
        return None
    return int(ppid.group(1)), int(hwm.group(1)) * 1024


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def reset_hwm(pid: int) -> None:
    """Reset a live process's VmHWM to its current RSS (Linux ``clear_refs`` 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without BLAS thread variables (each tool picks its default)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update({"NO_COLOR": "1", "COLUMNS": "100"})
    env.update(extra or {})
    return env


def _watch(root: int, run: Run, stop: Any, poll: float) -> None:
    """Poller thread: the largest VmHWM of every process under ``root`` until ``stop``."""
    while not stop.is_set():
        for pid in _tree(root)[1:]:
            st = _status(pid)
            if st is None:
                continue
            p = run.procs.get(pid)
            if p is None:
                p = run.procs[pid] = Proc(pid, st[0], _cmdline(pid))
            p.hwm = max(p.hwm, st[1])
        stop.wait(poll)


def run_measured(label: str, argv: list[str], env: dict[str, str],
                 timeout: float | None = None, poll: float = 0.05) -> Run:
    """Run ``argv`` under the launcher; wall time (the wait for its exit, not the poll),
    exit code, output, ru_maxrss of the tree, and the largest VmHWM seen of every
    process in it (polled every ``poll`` seconds from a thread)."""
    import threading

    run = Run(label, list(argv))
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        out_p, err_p, rss_p = (Path(tmp) / n for n in ("out", "err", "rss"))
        with open(out_p, "wb") as out, open(err_p, "wb") as err:
            stop = threading.Event()
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-c", REAPER, str(rss_p), *argv],
                                    stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
            watcher = threading.Thread(target=_watch, args=(proc.pid, run, stop, poll),
                                       daemon=True)
            watcher.start()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                run.extra["timed_out"] = timeout
            finally:
                if proc.returncode is None:  # timed out, or Ctrl-C here
                    with _suppress():
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                run.wall = time.perf_counter() - t0
                stop.set()
                watcher.join()
        run.rc = proc.returncode
        run.stdout = out_p.read_text(errors="replace")
        run.stderr = err_p.read_text(errors="replace")
        with _suppress():
            run.tree_maxrss = int(rss_p.read_text())
        with _suppress():  # workers left behind by a failed run
            os.killpg(proc.pid, signal.SIGKILL)
    mains = [p for p in run.procs.values() if p.ppid == proc.pid]
    run.main_pid = mains[0].pid if mains else 0
    run.workers = _local_workers(run)
    return run


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], (OSError, ValueError, EOFError))


def _local_workers(run: Run) -> dict[int, int]:
    """The processes that measured tensors and their peaks: the forkserver's (or a spawn
    context's) children; none: the main process did (--jobs 1)."""
    forkservers = {p.pid for p in run.procs.values() if "forkserver" in p.cmdline}
    workers = {p.pid: p.hwm for p in run.procs.values()
               if p.ppid in forkservers or "spawn_main" in p.cmdline}
    if workers:
        return workers
    if run.main_pid:
        return {run.main_pid: max(run.tree_maxrss, run.procs[run.main_pid].hwm)}
    return {-1: run.tree_maxrss}  # over before the first poll: the launcher's figure


def _parse_json(run: Run) -> None:
    try:
        run.doc = json.loads(run.stdout)
    except ValueError:
        run.doc = None


# --------------------------------------------------------------------------- dask


class DaskCluster:
    """A LocalCluster of ``n`` worker processes x 1 thread on 127.0.0.1, with a client
    to find its workers' pids and threads."""

    def __init__(self, n: int = 2) -> None:
        import distributed

        self.cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1,
                                                processes=True, host="127.0.0.1",
                                                dashboard_address=None)
        self.client = distributed.Client(self.cluster, set_as_default=False)
        self.client.wait_for_workers(n)
        self.address = self.cluster.scheduler_address

    def pids(self) -> dict[str, int]:
        return self.client.run(os.getpid)

    def threads(self) -> list[int]:
        def blas() -> int:
            from threadpoolctl import threadpool_info

            return max((i["num_threads"] for i in threadpool_info()), default=0)

        return sorted(self.client.run(blas).values())

    def close(self) -> None:
        with _suppress():
            self.client.close()
        with _suppress():
            self.cluster.close()


def run_on_dask(label: str, argv: list[str], env: dict[str, str], dask: DaskCluster,
                timeout: float | None) -> Run:
    """``argv`` (a spectrum command sending its tasks to ``dask``), with the workers'
    VmHWM reset before and read after."""
    pids = dask.pids()
    for pid in pids.values():
        reset_hwm(pid)
    run = run_measured(label, argv, env, timeout)
    run.workers = {pid: (_status(pid) or (0, 0))[1] for pid in pids.values()}
    return run


# --------------------------------------------------------------------------- identity


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return None


def max_relative_difference(docs: dict[str, Any]) -> tuple[float, str, list[str]]:
    """The largest relative difference of any metric of any tensor between the first
    document and each other one, where it is, and structural mismatches (tensors or
    metrics present in one and not the other, non-numbers that differ)."""
    labels = list(docs)
    ref = {t["name"]: t for t in docs[labels[0]]["tensors"]}
    worst, where, problems = 0.0, "", []
    for label in labels[1:]:
        other = {t["name"]: t for t in docs[label]["tensors"]}
        if set(other) != set(ref):
            problems.append(f"{label}: tensors differ from {labels[0]}'s "
                            f"({len(set(other) ^ set(ref))} names)")
        for name in sorted(set(ref) & set(other)):
            a, b = ref[name].get("metrics", {}), other[name].get("metrics", {})
            if set(a) != set(b):
                problems.append(f"{label}: {name}: metrics differ ({sorted(set(a) ^ set(b))})")
            for key in sorted(set(a) & set(b)):
                x, y = _number(a[key]), _number(b[key])
                if x is None or y is None:
                    if a[key] != b[key]:
                        problems.append(f"{label}: {name}.{key}: {a[key]!r} != {b[key]!r}")
                    continue
                if x == y or (math.isnan(x) and math.isnan(y)):
                    continue
                scale = max(abs(x), abs(y))
                rel = abs(x - y) / scale if math.isfinite(scale) and scale else math.inf
                if rel > worst:
                    worst, where = rel, f"{label}: {name}.{key} ({x!r} vs {y!r})"
    return worst, where, problems


# --------------------------------------------------------------------------- the runs


def spectrum_path(given: str | None) -> str:
    if given:
        return given
    beside = Path(sys.executable).parent / "spectrum"
    if beside.exists():
        return str(beside)
    sys.exit("no spectrum console script beside this Python: run with .venv/bin/python "
             "or pass --spectrum PATH")


def matrix_names(folder: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the folder's 2-D tensors, read from the shards' headers."""
    import struct

    out = []
    for shard in sorted(folder.glob("*.safetensors")):
        with open(shard, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        out += [(k, tuple(v["shape"])) for k, v in header.items()
                if k != "__metadata__" and len(v["shape"]) == 2]
    return out


def measure_target(target: str, storage_options: dict[str, str] | None,
                   spectrum: str, env: dict[str, str], dask: DaskCluster | None,
                   warm_include: str, timeout: float | None = None,
                   counter: Any = None) -> dict[str, Run]:
    """The hook of the local and the S3 variants: ``spectrum analyze TARGET --json
    --no-cache`` with ``--jobs 1``, ``--jobs 2`` and (``dask`` given) on the cluster,
    ``TARGET`` a folder or a URL read with ``storage_options`` (``--storage-option
    KEY=VALUE`` each). ``counter`` (S3): an object with ``reset()`` and ``read()`` of
    the bytes transferred, recorded per run as ``extra['bytes']``."""
    base = [spectrum, "analyze", target, "--json", "--no-cache", "--no-progress"]
    for key, value in (storage_options or {}).items():
        base += ["--storage-option", f"{key}={value}"]
    # One BLAS thread per process everywhere: --jobs 1 is the one-core baseline (the issue
    # measured 208 s "on one core"), and equal thread counts make the numbers comparable
    # bit for bit (BLAS with another thread count rounds differently).
    cmds = {"jobs1": base + ["--jobs", "1", "--threads", "1"],
            "jobs2": base + ["--jobs", "2", "--threads", "1"]}
    runs: dict[str, Run] = {}
    for label, argv in cmds.items():
        if counter:
            counter.reset()
        runs[label] = run_measured(label, argv, env, timeout)
        if counter:
            runs[label].extra["bytes"] = counter.read()
    if dask is not None:
        # --executor dask: with --jobs 1, --scheduler alone computes in the client.
        argv = base + ["--executor", "dask", "--scheduler", dask.address]
        warm = run_measured("dask-warm-up", argv + ["--include", warm_include], env, timeout)
        if not warm.ok:
            print(f"warning: the Dask warm-up run failed (exit {warm.rc}): "
                  f"{warm.stderr.strip()[-400:]}", file=sys.stderr)
        if counter:
            counter.reset()
        runs["dask"] = run_on_dask("dask", argv, env, dask, timeout)
        if counter:
            runs["dask"].extra["bytes"] = counter.read()
    for run in runs.values():
        _parse_json(run)
    dask_run = runs.get("dask")
    if dask_run is not None and dask_run.ok:
        executor = ((dask_run.doc or {}).get("settings", {}).get("run") or {}).get("executor")
        if executor != "dask":  # the tasks did not reach the cluster: not a Dask figure
            dask_run.rc = -1
            dask_run.stderr += f"\nthe run's executor was {executor!r}, not 'dask'"
    return runs


def baseline(folder: Path, sample: int, env: dict[str, str],
             timeout: float | None, one_thread: bool = False) -> Run:
    """The numpy loop with the machine's default BLAS threads (every core), or with one
    (``one_thread``: the per-core comparison with --jobs 1)."""
    argv = [sys.executable, str(HERE / "baseline_numpy_svd.py"), str(folder)]
    if sample:
        argv += ["--sample", str(sample)]
    if one_thread:
        env = {**env, **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS")}}
    run = run_measured("numpy1" if one_thread else "numpy", argv, env, timeout)
    _parse_json(run)
    if run.doc and run.doc["extrapolated"]:
        # The measured process minus its timed loop, plus the loop over every matrix.
        run.extra["wall_full"] = run.wall - run.doc["loop_s"] + run.doc["loop_extrapolated_s"]
    return run


def effective_wall(run: Run) -> float:
    """The run's wall time, or its extrapolation to every matrix (numpy sample mode)."""
    return run.extra.get("wall_full", run.wall)


def median_run(runs: list[Run]) -> Run:
    """The run of median wall time (the lower one of an even count; a failed run if any
    failed), with every run's wall time under ``extra['walls']``."""
    failed = [r for r in runs if not r.ok]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=effective_wall)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.extra["walls"] = [effective_wall(r) for r in ordered]
    return chosen


def weightwatcher(folder: Path, peers: Path, env: dict[str, str],
                  timeout: float | None) -> Run | None:
    if not peers.exists():
        return None
    return run_measured("ww", [str(peers), str(HERE / "peer_weightwatcher.py"), str(folder)],
                        env, timeout)


def warm_page_cache(folder: Path) -> int:
    total = 0
    for path in sorted(folder.iterdir()):
        if path.is_file():
            with open(path, "rb") as fh:
                while chunk := fh.read(8 << 20):
                    total += len(chunk)
    return total


# --------------------------------------------------------------------------- S3


class _Counting:
    """WSGI middleware around moto's app: adds the bytes of every response body to
    ``down`` and of every request body to ``up`` (shared counters), as they are written;
    independent of spectrum and s3fs. Counting here rather than in a proxy keeps a
    second copy of every byte, and a third process, off the cores the runs use."""

    def __init__(self, app: Any, down: Any, up: Any) -> None:
        self.app, self.down, self.up = app, down, up

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            sent = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            sent = 0
        with self.up.get_lock():
            self.up.value += sent
        body = self.app(environ, start_response)
        try:
            for chunk in body:
                with self.down.get_lock():
                    self.down.value += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


def _ranged_gets() -> None:
    """Make moto answer ``Range: bytes=A-B`` GETs in O(B - A), as S3 does. moto (5.2)
    reads and copies the WHOLE object for every ranged GET and slices it afterwards:
    seconds per request on a 1 GB shard, which would time moto, not spectrum. Here a
    simple range is read from the object's buffer; every other request goes through
    moto unchanged, and :meth:`S3Service.check_ranges` compares the bytes served with
    the files'."""
    import re
    import threading

    from moto.s3.models import FakeKey
    from moto.s3.responses import S3Response

    span = threading.local()
    whole = FakeKey.value

    def value(key: Any) -> bytes:
        ab = getattr(span, "ab", None)
        if ab is None:
            return whole.fget(key)
        with key.lock:
            key._value_buffer.seek(ab[0])
            return key._value_buffer.read(ab[1] - ab[0] + 1)

    FakeKey.value = property(value, whole.fset)
    get_object = S3Response.get_object

    def ranged(self: Any) -> Any:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("range") or "")
        if m is None or self._get_int_param("partNumber"):
            return get_object(self)
        size = self._get_key()[0].size
        a, b = int(m.group(1)), min(int(m.group(2)), size - 1)
        if a > b:
            return get_object(self)  # moto's own answer (416, or the whole object)
        span.ab = (a, b)
        try:
            status, headers, body = get_object(self)
        finally:
            span.ab = None
        if status != 200:
            return status, headers, body
        for h in [h for h in headers if h.startswith("x-amz-checksum-")]:
            del headers[h]  # as moto does for a range
        headers["content-range"] = f"bytes {a}-{b}/{size}"
        headers["content-length"] = str(len(body))
        return 206, headers, body

    S3Response.get_object = ranged


def _serve_moto(conn: Any, fast_ranges: bool, down: Any, up: Any) -> None:
    """Child process: moto's S3 server on 127.0.0.1, its bytes counted by
    :class:`_Counting`; sends its port, runs until the parent sends anything or goes
    away."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    if fast_ranges:
        _ranged_gets()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    wsgi = getattr(server, "_server", None)  # werkzeug's server: it calls .app per request
    if wsgi is None or not hasattr(wsgi, "app"):
        raise RuntimeError("moto's ThreadedMotoServer changed: no werkzeug server to count at")
    wsgi.app = _Counting(wsgi.app, down, up)
    conn.send(server.get_host_and_port()[1])
    with _suppress():
        conn.recv()
    server.stop()


class S3Service:
    """moto's S3 server in a child process (spawned: this process may hold a Dask event
    loop thread), counting the bytes it serves; ``endpoint`` is its URL."""

    BUCKET = "spectrum-bench"

    def __init__(self, fast_ranges: bool = True) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.down, self.up = ctx.Value("q", 0), ctx.Value("q", 0)
        self._conns, self._procs = [], []
        port = self._start(ctx, _serve_moto, fast_ranges, self.down, self.up)
        self.endpoint = f"http://127.0.0.1:{port}"

    def _start(self, ctx: Any, target: Any, *args: Any) -> int:
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        proc.start()
        self._conns.append(conn)
        self._procs.append(proc)
        if not conn.poll(60):
            self.close()
            raise RuntimeError(f"{target.__name__} did not start within 60 s")
        return conn.recv()

    def reset(self) -> None:
        with self.down.get_lock():
            self.down.value = 0
        with self.up.get_lock():
            self.up.value = 0

    def read(self) -> dict[str, int]:
        return {"down": self.down.value, "up": self.up.value}

    def upload(self, folder: Path) -> str:
        """Upload the folder's files to moto (not counted: runs reset the counters); its
        s3:// URL."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=self.BUCKET)
        for path in sorted(folder.iterdir()):
            if path.is_file():
                s3.upload_file(str(path), self.BUCKET, f"{folder.name}/{path.name}")
        return f"s3://{self.BUCKET}/{folder.name}"

    def check_ranges(self, folder: Path, url: str, tries: int = 20) -> None:
        """RuntimeError unless ranged GETs return the files' bytes
        (random ranges of every file, and its last byte)."""
        import random

        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        bucket, prefix = url[len("s3://"):].split("/", 1)
        rnd = random.Random(0)
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            size = path.stat().st_size
            spans = [(size - 1, size - 1)] + [
                (a, min(size - 1, a + rnd.randrange(1, 1 << 20)))
                for a in (rnd.randrange(size) for _ in range(tries))]
            with open(path, "rb") as fh:
                for a, b in spans:
                    got = s3.get_object(Bucket=bucket, Key=f"{prefix}/{path.name}",
                                        Range=f"bytes={a}-{b}")["Body"].read()
                    fh.seek(a)
                    if got != fh.read(b - a + 1):
                        raise RuntimeError(f"moto served wrong bytes {a}-{b} of {path}")

    def close(self) -> None:
        for conn in self._conns:
            with _suppress():
                conn.send("stop")
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


#: Fake credentials for moto only; real AWS settings are kept out of the runs.
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
AWS_DROP = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
            "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def s3_supported(spectrum: str) -> str:
    """'' when ``spectrum analyze s3://`` can work here, else why not."""
    code = "import spectrum_cli.io.storage, fsspec, s3fs, moto.server, boto3"
    python = Path(spectrum).parent / "python"
    done = subprocess.run([str(python if python.exists() else sys.executable), "-c", code],
                          capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{last} (spectrum_cli.io.storage is the s3:// support; moto, s3fs: "
                ".venv/bin/pip install -c constraints.txt 'moto[server]' s3fs)")
    return ""


# --------------------------------------------------------------------------- report


def fmt_mib(n: int) -> str:
    return f"{n / MIB:7.0f} MiB" if n else "      n/a"


def threads_of(run: Run, dask_threads: list[int] | None = None) -> str:
    if run.label.startswith("dask") and dask_threads is not None:
        return f"{len(dask_threads)} workers x {max(dask_threads, default=0)} (nanny)"
    if run.label in ("numpy", "numpy1") and run.doc:
        pools = ", ".join(f"{p['api']} {p['num_threads']}" for p in run.doc["threadpools"])
        return f"1 process: {pools}"
    if run.label == "ww":
        return "default (all cores)"
    if run.doc:
        r = run.doc["settings"]["run"]
        if r["workers"]:
            return f"{r['workers']} workers x {r['threads']}"
        return f"1 process x {r['threads']}"
    return "?"


def peak_worker(run: Run) -> int:
    return max(run.workers.values(), default=0)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def print_runs(title: str, runs: dict[str, Run], dask_threads: list[int] | None,
               folder_bytes: int) -> None:
    print(title)
    print(f"  {'run':10s} {'wall s':>9s}  {'BLAS threads':28s} {'peak RSS/worker':>15s}"
          f" {'ru_maxrss':>12s}  notes")
    for label, run in runs.items():
        wall = run.extra.get("wall_full", run.wall)
        notes = []
        walls = run.extra.get("walls", [])
        if len(walls) > 1:
            notes.append(f"median of {len(walls)} ({walls[0]:.2f}-{walls[-1]:.2f})")
        if "wall_full" in run.extra:
            notes.append(f"EXTRAPOLATED from {run.doc['timed']} of {run.doc['matrices']} "
                         f"matrices (measured process {run.wall:.1f} s)")
        if run.workers and len(run.workers) > 1:
            notes.append("workers " + ", ".join(f"{v / MIB:.0f}" for v in
                                                sorted(run.workers.values())) + " MiB")
        if "bytes" in run.extra:
            b = run.extra["bytes"]["down"]
            notes.append(f"read {b / MIB:.1f} MiB = {b / folder_bytes:.3f} of the folder")
        if not run.ok:
            notes.append(f"FAILED exit {run.rc}: "
                         + (run.stderr.strip().splitlines() or ["?"])[-1][:200])
        label_s = label + ("*" if "wall_full" in run.extra else "")
        print(f"  {label_s:10s} {wall:9.2f}  {threads_of(run, dask_threads):28s} "
              f"{fmt_mib(peak_worker(run)):>15s} {fmt_mib(run.tree_maxrss):>12s}  "
              + "; ".join(notes))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a folder from bench/make_llm_shaped.py")
    ap.add_argument("--baseline-sample", type=int, default=0, metavar="K",
                    help="time K matrices per distinct shape in the numpy loop and "
                         "extrapolate by count (0: every matrix)")
    ap.add_argument("--runs", type=int, default=1,
                    help="rounds of spectrum's local and --s3 runs, interleaved; medians "
                         "are reported (the numpy loop and WeightWatcher run in the first)")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--numpy-one-thread", action="store_true",
                    help="also time the numpy loop at one BLAS thread (against --jobs 1)")
    ap.add_argument("--no-ww", action="store_true", help="skip WeightWatcher")
    ap.add_argument("--s3", action="store_true",
                    help="also from moto's S3 server (counting the bytes it serves)")
    ap.add_argument("--moto-whole-reads", action="store_true",
                    help="--s3: leave moto reading a whole object per ranged GET (slow)")
    ap.add_argument("--peers-python", type=Path, default=PEERS)
    ap.add_argument("--spectrum", help="the spectrum console script (default: beside "
                                       "this Python)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per run (default: none)")
    ap.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()

    folder = args.folder.resolve()
    if not (folder / "model.safetensors.index.json").exists():
        sys.exit(f"{folder}: no model.safetensors.index.json (make one with "
                 "bench/make_llm_shaped.py)")
    spectrum = spectrum_path(args.spectrum)
    matrices = matrix_names(folder)
    smallest = min(matrices, key=lambda t: t[1][0] * t[1][1])[0]
    layer = "model.layers.0.*"
    s3_why = s3_supported(spectrum) if args.s3 else ""
    if args.s3 and s3_why:
        print(f"--s3: spectrum analyze s3:// cannot run here: {s3_why}", file=sys.stderr)
        return 2
    cores = len(os.sched_getaffinity(0))
    config = json.loads((folder / "config.json").read_text()) \
        if (folder / "config.json").exists() else {}
    shape = config.get("spectrum_bench", {}).get("shape", "?")
    folder_bytes = warm_page_cache(folder)
    print(f"bench_llm: {folder} ({shape}: {len(matrices)} matrices, "
          f"{folder_bytes / MIB:.1f} MiB in {len(list(folder.glob('*.safetensors')))} "
          f"shards); {cores} cores (sched_getaffinity); page cache warmed; load average "
          f"{os.getloadavg()[0]:.2f} (other work on the machine skews the ratios)")
    print(f"spectrum: {spectrum} analyze FOLDER --json --no-cache --no-progress; BLAS "
          f"thread variables removed from every run's environment")

    s3: S3Service | None = None
    if args.s3:
        os.environ.update(MOTO_ENV)  # before the cluster starts: its workers inherit it
        for k in AWS_DROP:
            os.environ.pop(k, None)
        s3 = S3Service(fast_ranges=not args.moto_whole_reads)
    env = child_env()
    dask = None if args.no_dask else DaskCluster(2)
    figures: dict[str, Any] = {"folder": str(folder), "shape": shape, "cores": cores,
                               "folder_bytes": folder_bytes}
    try:
        dask_threads = dask.threads() if dask else None
        url = ""
        if s3 is not None:
            url = s3.upload(folder)
            s3.check_ranges(folder, url)
        rounds: dict[str, list[Run]] = {}
        s3_rounds: dict[str, list[Run]] = {}
        for k in range(args.runs):  # interleaved: slow drifts of the machine hit all alike
            one_round = measure_target(str(folder), None, spectrum, env, dask, smallest,
                                       args.timeout)
            if s3 is not None:
                for label, run in measure_target(url, {"endpoint_url": s3.endpoint}, spectrum,
                                                 env, dask, smallest, args.timeout,
                                                 counter=s3).items():
                    s3_rounds.setdefault(label, []).append(run)
            # The baselines (minutes each, far from their targets) run in the first round.
            if not args.no_numpy and not k:
                one_round["numpy"] = baseline(folder, args.baseline_sample, env,
                                              args.timeout)
                if args.numpy_one_thread:
                    one_round["numpy1"] = baseline(folder, args.baseline_sample, env,
                                                   args.timeout, one_thread=True)
            if not args.no_ww and not k:
                ww = weightwatcher(folder, args.peers_python, env, args.timeout)
                if ww is not None:
                    one_round["ww"] = ww
            for label, run in one_round.items():
                rounds.setdefault(label, []).append(run)
        if not args.no_ww and not args.peers_python.exists():
            print(f"ww: skipped ({args.peers_python} missing: bash bench/setup_peers.sh)")
        runs = {label: median_run(rs) for label, rs in rounds.items()}
        s3_runs = {label: median_run(rs) for label, rs in s3_rounds.items()}
        if s3 is not None:
            base = [spectrum, "analyze", url, "--json", "--no-cache", "--no-progress",
                    "--storage-option", f"endpoint_url={s3.endpoint}", "--include", layer]
            s3.reset()
            one = run_measured("layer0", base, env, args.timeout)
            one.extra["bytes"] = s3.read()
            _parse_json(one)
            s3_runs["layer0"] = one
    finally:
        if dask is not None:
            dask.close()
        if s3 is not None:
            s3.close()

    print_runs("local folder (* extrapolated)", runs, dask_threads, folder_bytes)
    if s3_runs:
        print_runs(f"from S3 (moto, bytes counted by the server, {s3.endpoint}; medians)", s3_runs,
                   dask_threads, folder_bytes)
    figures["runs"] = {k: {"wall": r.extra.get("wall_full", r.wall), "measured_wall": r.wall,
                           "rc": r.rc, "peak_rss_worker": peak_worker(r),
                           "tree_maxrss": r.tree_maxrss, **r.extra}
                       for k, r in {**runs, **{f"s3-{k}": v for k, v in s3_runs.items()}}.items()}
    figures["targets"] = targets(runs, s3_runs, folder_bytes, matrices, layer)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(t["ok"] is not False for t in figures["targets"]) else 1


def targets(runs: dict[str, Run], s3_runs: dict[str, Run], folder_bytes: int,
            matrices: list[tuple[str, tuple[int, ...]]], layer: str) -> list[dict]:
    """Print the ratios against the issue's targets; return them."""
    out: list[dict] = []

    def row(name: str, value: str, target: str, ok: bool | None) -> None:
        out.append({"name": name, "value": value, "target": target, "ok": ok})
        print(f"  {name:44s} {value:>14s}   target {target:10s} {verdict(ok)}")

    ok = {k: r for k, r in runs.items() if r.ok}
    print("targets (issue #12; they apply to the tinyllama shape)")
    if "jobs1" in ok and "jobs2" in ok:
        s = ok["jobs1"].wall / ok["jobs2"].wall
        row("--jobs 2 speed-up over --jobs 1", f"{s:.2f}x", f">= {TARGETS['jobs2_speedup']}x",
            s >= TARGETS["jobs2_speedup"])
    if "numpy" in ok and "jobs2" in ok:
        wall = ok["numpy"].extra.get("wall_full", ok["numpy"].wall)
        tag = " (extrap.)" if "wall_full" in ok["numpy"].extra and \
            ok["numpy"].doc["extrapolated"] else ""
        s = wall / ok["jobs2"].wall
        row("numpy float64 SVD loop / --jobs 2" + tag, f"{s:.2f}x",
            f">= {TARGETS['numpy_over_jobs2']}x", s >= TARGETS["numpy_over_jobs2"])
        if "jobs1" in ok:
            print(f"  {'  (numpy loop / --jobs 1, for information)':44s} "
                  f"{wall / ok['jobs1'].wall:13.2f}x")
    if "numpy1" in ok and "jobs1" in ok:
        wall = effective_wall(ok["numpy1"])
        print(f"  {'  (numpy loop 1 thread / --jobs 1, per core)':44s} "
              f"{wall / ok['jobs1'].wall:13.2f}x   ({wall:.1f} s / {ok['jobs1'].wall:.1f} s)")
    if "dask" in ok and "jobs2" in ok:
        s = ok["dask"].wall / ok["jobs2"].wall
        row("Dask 2x1 wall / --jobs 2 wall", f"{s:.2f}", f"<= {TARGETS['dask_over_jobs2']}",
            s <= TARGETS["dask_over_jobs2"])
    peaks = {k: peak_worker(r) for k, r in ok.items() if k in ("jobs1", "jobs2", "dask")}
    if peaks:
        worst = max(peaks, key=peaks.get)
        row(f"peak RSS per worker (max: {worst})", f"{peaks[worst] / MIB:.0f} MiB",
            "<= 1 GB", peaks[worst] <= TARGETS["rss_per_worker"])
    if "ww" in ok and "jobs2" in ok:
        print(f"  {'  (WeightWatcher / --jobs 2, for reference)':44s} "
              f"{ok['ww'].wall / ok['jobs2'].wall:13.2f}x")
    docs = {k: ok[k].doc for k in ("jobs1", "jobs2", "dask") if k in ok and ok[k].doc}
    docs.update({f"s3-{k}": r.doc for k, r in s3_runs.items()
                 if k != "layer0" and r.ok and r.doc})
    if len(docs) > 1:
        rel, where, problems = max_relative_difference(docs)
        row(f"max rel. difference of metrics ({len(docs)} runs)", f"{rel:.1e}",
            f"<= {IDENTICAL:g}", rel <= IDENTICAL and not problems)
        for p in problems[:10]:
            print(f"    {p}")
        if where:
            print(f"    largest at {where}")
    if "numpy" in ok and "jobs1" in ok and ok["jobs1"].doc:
        ours = {t["name"]: t["metrics"].get("kappa") for t in ok["jobs1"].doc["tensors"]}
        errs = [abs(ours[n] - k) / k for n, k in ok["numpy"].doc["kappa"].items()
                if isinstance(ours.get(n), float)]
        if errs:
            print(f"  {'  worst rel. kappa error vs numpy gesdd':44s} {max(errs):14.1e}"
                  f"   ({len(errs)} matrices; information)")
    s3ok = {k: r for k, r in s3_runs.items() if r.ok}
    if "jobs1" in s3ok and "jobs2" in s3ok:
        s = s3ok["jobs1"].wall / s3ok["jobs2"].wall
        row("S3: --jobs 2 speed-up over --jobs 1", f"{s:.2f}x",
            f">= {TARGETS['jobs2_speedup']}x", s >= TARGETS["jobs2_speedup"])
    if "dask" in s3ok and "jobs2" in s3ok:
        s = s3ok["dask"].wall / s3ok["jobs2"].wall
        row("S3: Dask 2x1 wall / --jobs 2 wall", f"{s:.2f}",
            f"<= {TARGETS['dask_over_jobs2']}", s <= TARGETS["dask_over_jobs2"])
    peaks = {k: peak_worker(r) for k, r in s3ok.items() if k in ("jobs1", "jobs2", "dask")}
    if peaks:
        worst = max(peaks, key=peaks.get)
        row(f"S3: peak RSS per worker (max: {worst})", f"{peaks[worst] / MIB:.0f} MiB",
            "<= 1 GB", peaks[worst] <= TARGETS["rss_per_worker"])
    one = s3_runs.get("layer0")
    if one is not None and one.ok:
        frac = one.extra["bytes"]["down"] / folder_bytes
        own = sum(math.prod(s) * 2 for n, s in matrices if n.startswith("model.layers.0."))
        row(f"--include '{layer}' bytes read / folder", f"{100 * frac:.2f}%",
            f"< {100 * TARGETS['include_fraction']:.0f}%", frac < TARGETS["include_fraction"])
        print(f"    (the layer's own matrices are {100 * own / folder_bytes:.2f}% of the "
              "folder)")
    return out


if __name__ == "__main__":
    sys.exit(main())
