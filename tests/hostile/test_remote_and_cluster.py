"""Hostile object stores and Dask clusters (issues 22 item 5 and 26), each through the
installed console script in a subprocess with a timeout: an object replaced between two
ranged reads, a store that ignores Range, endpoints and schedulers that accept and never
answer, scheduler files that are not files, workers that all die, and workers that hold
no credentials while the client does. Real components only: moto's S3 server, a Dask
scheduler and worker processes, tiny socket servers, all on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from safetensors.numpy import save_file

SPECTRUM = Path(sys.executable).parent / "spectrum"
ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any AWS or spectrum scheduler variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SPECTRUM_SCHEDULER"))}
    return {**env, "NO_COLOR": "1", "COLUMNS": "200", **extra}


def _limit_memory() -> None:  # a runaway read fails instead of taking the machine
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def spectrum(*args: object, env: dict[str, str], timeout: float = 90,
             cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPECTRUM), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd, preexec_fn=_limit_memory)


def refused(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    for f in fragments:
        assert f in r.stderr, (f, r.stderr[-3000:])


def sigma_max(doc: dict) -> dict[str, float]:
    """tensor name -> its σ_max, wherever the document keeps it."""
    def find(node: object) -> float | None:
        if isinstance(node, dict):
            if isinstance(node.get("sigma_max"), (int, float)):
                return float(node["sigma_max"])
            for v in node.values():
                got = find(v)
                if got is not None:
                    return got
        return None

    return {t["name"]: find(t) for t in doc["tensors"]}


# --------------------------------------------------------------------------- servers

@contextmanager
def silent_server() -> Iterator[tuple[str, int]]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        sock.close()
        for c in held:
            c.close()
        thread.join(5)


@contextmanager
def range_ignoring_s3() -> Iterator[str]:
    """An S3 look-alike whose objects are 1000 bytes but whose GETs ignore Range and
    announce a 1 TB body (of which it sends 1 MiB, then stalls until closed)."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _headers(self, length: int) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
            self.send_header("Last-Modified", "Mon, 01 Dec 2025 00:00:00 GMT")
            self.send_header("Content-Type", "binary/octet-stream")
            self.end_headers()

        def do_HEAD(self) -> None:
            self._headers(1000)

        def do_GET(self) -> None:
            self._headers(1 << 40)
            try:
                self.wfile.write(b"\0" * (1 << 20))
                self.wfile.flush()
            except OSError:
                return
            stop.wait(120)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from tests.remote import moto_s3

    with moto_s3() as server:
        yield server


def matrices(scale: float = 1.0, n: int = 96) -> dict[str, np.ndarray]:
    """Two float32 matrices whose σ_max grows with ``scale``."""
    rng = np.random.default_rng(3)
    return {"a.weight": (scale * rng.standard_normal((n, 64)) / 8).astype(np.float32),
            "b.weight": (scale * rng.standard_normal((80, 72)) / 8).astype(np.float32)}


def data_start(path: Path) -> int:
    """Where a safetensors file's tensor bytes begin (after its header)."""
    with open(path, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def replace_on_read_from(s3, url: str, local_v2: Path, offset: int) -> list[str]:
    """Arrange that ``url`` is replaced by ``local_v2`` just before the first ranged GET
    of it at or after byte ``offset`` reaches the server (deterministic: the proxy holds
    that request until the new version is in place). Returns a list that records it."""
    bucket, key = url[len("s3://"):].split("/", 1)
    line = re.compile(rb"GET /" + re.escape(f"{bucket}/{key}".encode()) + rb"[ ?]")
    rng = re.compile(rb"[Rr]ange: bytes=(\d+)-")
    done: list[str] = []
    lock = threading.Lock()

    def hook(data: bytes) -> None:
        m = rng.search(data)
        if not line.search(data) or m is None or int(m.group(1)) < offset:
            return
        with lock:
            if not done:
                s3.fs(direct=True).put(str(local_v2), url)
                done.append(url)

    s3.proxy.on_request = hook
    return done


# --------------------------------------------------------------------------- S3 objects

def test_object_replaced_between_ranged_reads_is_exit_2_and_never_cached(s3, tmp_path):
    """v1's header, then v2's bytes: refused (exit 2 naming the object), and nothing is
    cached: a later clean run gives v2's own numbers, not a mix."""
    v1, v2 = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    save_file(matrices(1.0), str(v1))
    save_file(matrices(1000.0), str(v2))
    url = s3.upload(v1, "s3://hostile-swap/model.safetensors")
    env = clean_env(**s3.env)
    cache = tmp_path / "cache"
    swapped = replace_on_read_from(s3, url, v2, data_start(v1))
    try:
        r = spectrum("analyze", url, "--json", "--cache-dir", cache, env=env)
    finally:
        s3.proxy.on_request = None
    assert swapped == [url]  # the object did change between two ranged reads
    refused(r, url, "changed while it was being read")
    local = spectrum("analyze", v2, "--json", "--no-cache", env=clean_env())
    assert local.returncode == 0, local.stderr
    again = spectrum("analyze", url, "--json", "--cache-dir", cache, env=env)
    assert again.returncode == 0, again.stderr
    assert sigma_max(json.loads(again.stdout)) == pytest.approx(
        sigma_max(json.loads(local.stdout)), rel=1e-12)


def test_a_store_that_ignores_range_is_refused_before_its_body_is_read(tmp_path):
    with range_ignoring_s3() as endpoint:
        r = spectrum("analyze", "s3://bucket/model.safetensors",
                     env=clean_env(**CREDENTIALS, AWS_ENDPOINT_URL=endpoint,
                                   SPECTRUM_STORAGE_TIMEOUT="5"), timeout=60)
    refused(r, "s3://bucket/model.safetensors", "ignores Range", endpoint)


def test_an_s3_endpoint_that_never_answers_times_out_naming_it(tmp_path):
    with silent_server() as (host, port):
        endpoint = f"http://{host}:{port}"
        r = spectrum("analyze", "s3://bucket/model.safetensors",
                     env=clean_env(**CREDENTIALS, AWS_ENDPOINT_URL=endpoint,
                                   SPECTRUM_STORAGE_TIMEOUT="1"), timeout=60)
    refused(r, "s3://bucket/model.safetensors", endpoint)


# --------------------------------------------------------------------------- Dask

@pytest.fixture
def several(tmp_path) -> Path:
    path = tmp_path / "several.safetensors"
    save_file(matrices(1.0), str(path))
    return path


def test_a_scheduler_that_never_answers_times_out_naming_it(several):
    pytest.importorskip("distributed")
    with silent_server() as (host, port):
        address = f"tcp://{host}:{port}"
        r = spectrum("analyze", several, "--no-cache", "--scheduler", address,
                     env=clean_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s"),
                     timeout=60)
    refused(r, address)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_scheduler_file_that_is_not_a_file_is_refused_unread(several, tmp_path, kind):
    pytest.importorskip("distributed")
    if kind == "fifo":
        path = tmp_path / "scheduler.json"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    r = spectrum("analyze", several, "--no-cache", "--scheduler-file", path,
                 env=clean_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s"), timeout=60)
    refused(r, str(path), "not a regular file")


@contextmanager
def cluster_without_aws(monkeypatch, n_workers: int = 2) -> Iterator[object]:
    """A scheduler and worker processes started with no AWS variable at all."""
    distributed = pytest.importorskip("distributed")
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                  processes=True, host="127.0.0.1",
                                  dashboard_address=None) as c:
        yield c


def test_workers_read_s3_with_the_clients_credentials(s3, several, monkeypatch):
    """Issue 22 item 5: the workers have no AWS variable, the client has the endpoint
    and keys: the run succeeds with the numbers of the local file."""
    url = s3.upload(several, "s3://hostile-dask/several.safetensors")
    with cluster_without_aws(monkeypatch) as cluster:
        r = spectrum("analyze", url, "--json", "--no-cache", "--jobs", "2",
                     "--scheduler", cluster.scheduler_address, env=clean_env(**s3.env))
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["settings"]["run"]["executor"] == "dask"
    local = spectrum("analyze", several, "--json", "--no-cache", env=clean_env())
    assert sigma_max(doc) == pytest.approx(sigma_max(json.loads(local.stdout)), rel=1e-12)


def test_a_store_failure_on_a_worker_is_told_once_with_its_address(s3, tmp_path,
                                                                   monkeypatch):
    """The object is replaced after the client opened it, before the workers read its
    tensors: exit 2, one message naming the object and the worker, not one per tensor."""
    v1, v2 = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    many = {f"layer.{i}.weight": m for i in range(6) for m in matrices(1.0).values()}
    save_file({k: v for k, v in zip(many, many.values())}, str(v1))
    save_file({k: 2 * v for k, v in many.items()}, str(v2))
    url = s3.upload(v1, "s3://hostile-dask-swap/model.safetensors")
    with cluster_without_aws(monkeypatch) as cluster:
        swapped = replace_on_read_from(s3, url, v2, data_start(v1))
        try:
            r = spectrum("analyze", url, "--no-cache", "--jobs", "2",
                         "--scheduler", cluster.scheduler_address, env=clean_env(**s3.env))
        finally:
            s3.proxy.on_request = None
    assert swapped == [url]
    refused(r, url, "on Dask worker tcp://127.0.0.1:")
    assert r.stderr.count("changed while it was being read") == 1, r.stderr[-3000:]


def test_every_worker_killed_mid_run_is_exit_2(several, tmp_path):
    """Every worker dies as it starts a tensor (no nanny brings it back): the tensors are
    reported failed and the exit is 2, instead of waiting for workers forever."""
    distributed = pytest.importorskip("distributed")
    preload = Path(__file__).with_name("dask_kill_preload.py")
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "dask"), "worker", cluster.scheduler_address,
             "--no-nanny", "--nthreads", "1", "--preload", str(preload),
             "--no-dashboard", "--host", "127.0.0.1"],
            env=clean_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            with distributed.Client(cluster.scheduler_address, set_as_default=False) as c:
                c.wait_for_workers(1, timeout=60)
            r = spectrum("analyze", several, "--no-cache", "--scheduler",
                         cluster.scheduler_address,
                         env=clean_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s"),
                         timeout=90)
        finally:
            worker.kill()
            worker.wait(10)
    refused(r, "lost every worker", cluster.scheduler_address)
