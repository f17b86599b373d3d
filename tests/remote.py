"""A real S3 for tests: moto's server on 127.0.0.1, optionally behind a byte-counting TCP
proxy (what crosses the wire, measured outside spectrum and outside s3fs)."""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class CountingProxy:
    """Forwards TCP connections from 127.0.0.1:``port`` to ``target``; ``received``
    counts the bytes the server sent back (the data a client downloaded)."""

    target: tuple[str, int]
    port: int = 0
    received: int = 0
    #: Called with each piece a client sends, before it is forwarded (a test's hook:
    #: replace an object just before a given request reaches the server).
    on_request: Callable[[bytes], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sock: socket.socket | None = None

    def start(self) -> "CountingProxy":
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if not count and self.on_request is not None:
                    self.on_request(data)
                if count:
                    with self._lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self) -> None:
        with self._lock:
            self.received = 0

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()


@dataclass
class S3:
    endpoint: str  # through the proxy
    proxy: CountingProxy

    @property
    def env(self) -> dict[str, str]:
        """What a subprocess needs to reach this S3 with the standard variables."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def fs(self, direct: bool = False):
        """An s3fs filesystem of this S3 (``direct``: not through the proxy)."""
        import s3fs

        where = f"http://{self.proxy.target[0]}:{self.proxy.target[1]}" if direct \
            else self.endpoint
        return s3fs.S3FileSystem(key="testing", secret="testing",
                                 endpoint_url=where, skip_instance_cache=True)

    def upload(self, local: str | os.PathLike, url: str) -> str:
        """Copy a local file or folder to ``s3://bucket/key`` (bucket created)."""
        fs = self.fs()
        bucket = url[len("s3://"):].split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        local = os.fspath(local)
        if os.path.isdir(local):
            for root, _, files in os.walk(local):
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), local)
                    fs.put(os.path.join(root, f), url.rstrip("/") + "/" + rel)
        else:
            fs.put(local, url)
        return url


@contextmanager
def moto_s3() -> Iterator[S3]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = CountingProxy((host, port)).start()
    try:
        yield S3(f"http://127.0.0.1:{proxy.port}", proxy)
    finally:
        proxy.stop()
        server.stop()
