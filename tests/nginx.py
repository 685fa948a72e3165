"""A real nginx serving a folder, for pull tests: Range requests as any static server answers them.

Started on a free port with a generated config (``daemon off``, every path in a temporary
folder, ``master_process off`` so one process is the whole server and killing it drops
every connection at once). The access log records each request's path, status, Range
header and body bytes sent, so a test counts what was served. ``limit_rate`` slows every
response so a test can stop the server in the middle of a pull.
"""
from __future__ import annotations

import dataclasses
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from typing import Optional

import pytest

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
_PROBE = "/__started__"  # the request that waits for the server to answer; not counted

_CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format counted '$uri $status $body_bytes_sent "$http_range"';
    access_log {work}/access.log counted;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    sendfile on;
    keepalive_requests 100000;
    types {{ application/json json; application/x-tar tar; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {limit}
    }}
}}
"""


@dataclasses.dataclass(frozen=True)
class Served:
    path: str
    status: int
    bytes: int
    range: Optional[str]


class Nginx:
    """One nginx process over ``root``; :meth:`start` and :meth:`stop` may be called again to restart it."""

    def __init__(self, root: pathlib.Path, work: pathlib.Path, limit_rate: Optional[str] = None):
        self.root, self.work, self.limit_rate = root, work, limit_rate
        self.port = 0
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, limit_rate: Optional[str] = None) -> "Nginx":
        if self.port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "access.log").write_text("")  # each start counts afresh
        rate = limit_rate or self.limit_rate
        config = _CONFIG.format(work=self.work, port=self.port, root=self.root,
                                limit=f"limit_rate {rate};" if rate else "")
        (self.work / "nginx.conf").write_text(config)
        self.process = subprocess.Popen([NGINX, "-c", str(self.work / "nginx.conf"), "-p", str(self.work)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"{self.url}{_PROBE}", timeout=1).close()
            except urllib.error.HTTPError:
                break  # it answers (404)
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.process.stderr.read().decode()}"
                                       f"{(self.work / 'error.log').read_text()}")
                time.sleep(0.05)
            else:
                break
        return self

    def kill(self) -> None:
        """Stop at once (SIGKILL): connections in flight end mid-body."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def served(self) -> list[Served]:
        """Every request answered since the last start (nginx writes a line when a response ends)."""
        rows = []
        for line in (self.work / "access.log").read_text().splitlines():
            path, status, sent, ranged = line.split(" ", 3)
            ranged = ranged.strip('"')
            if path == _PROBE:
                continue
            rows.append(Served(path, int(status), int(sent), None if ranged in ("", "-") else ranged))
        return rows

    def bytes_served(self, suffix: str = "") -> int:
        return sum(row.bytes for row in self.served() if row.path.endswith(suffix))


@pytest.fixture
def nginx(tmp_path):
    """An nginx serving ``tmp_path / "www"`` (create the repository there)."""
    if not pathlib.Path(NGINX).exists():
        pytest.fail("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    server = Nginx(tmp_path / "www", tmp_path / "nginx")
    (tmp_path / "www").mkdir(exist_ok=True)
    yield server
    server.stop()
