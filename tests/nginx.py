"""A real nginx serving a folder, for pull tests: Range requests as any static server answers them.

Started on a free port with a generated config (``daemon off``, every path in a temporary
folder, ``master_process off`` so one process is the whole server and killing it drops
every connection at once). The access log records each request's path, status, Range
header and body bytes sent, so a test counts what was served. ``limit_rate`` slows every
response so a test can stop the server in the middle of a pull. With :class:`Certificates`
it serves HTTPS only, with a certificate for 127.0.0.1 signed by a CA made for the test.
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from typing import Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
        listen 127.0.0.1:{port}{tls};
        root {root};
        {limit}
    }}
}}
"""


@dataclasses.dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, and the server's certificate for 127.0.0.1 it signed, with the server's key."""
    ca: pathlib.Path
    certificate: pathlib.Path
    key: pathlib.Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(folder: pathlib.Path) -> Certificates:
    """A fresh CA and a server certificate for 127.0.0.1, valid for a day, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def signed(subject: x509.Name, public_key, extensions) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(_name("counterfactory test CA"))
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(valid[0]).not_valid_after(valid[1]))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    ca = signed(_name("counterfactory test CA"), ca_key.public_key(), [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)])
    server = signed(_name("127.0.0.1"), key.public_key(), [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)])
    files = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


@dataclasses.dataclass(frozen=True)
class Served:
    path: str
    status: int
    bytes: int
    range: Optional[str]


class Nginx:
    """One nginx process over ``root``; :meth:`start` and :meth:`stop` may be called again to restart it."""

    def __init__(self, root: pathlib.Path, work: pathlib.Path, limit_rate: Optional[str] = None,
                 tls: Optional[Certificates] = None):
        self.root, self.work, self.limit_rate, self.tls = root, work, limit_rate, tls
        self.port = 0
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, limit_rate: Optional[str] = None) -> "Nginx":
        if self.port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "access.log").write_text("")  # each start counts afresh
        rate = limit_rate or self.limit_rate
        tls = (f" ssl;\n        ssl_certificate {self.tls.certificate};\n        ssl_certificate_key {self.tls.key}"
               if self.tls else "")
        config = _CONFIG.format(work=self.work, port=self.port, root=self.root, tls=tls,
                                limit=f"limit_rate {rate};" if rate else "")
        (self.work / "nginx.conf").write_text(config)
        self.process = subprocess.Popen([NGINX, "-c", str(self.work / "nginx.conf"), "-p", str(self.work)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
        while True:
            try:
                urllib.request.urlopen(f"{self.url}{_PROBE}", timeout=1, context=context).close()
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


def _served_folder(tmp_path: pathlib.Path, tls: Optional[Certificates]) -> Nginx:
    if not pathlib.Path(NGINX).exists():
        pytest.fail("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    (tmp_path / "www").mkdir(exist_ok=True)
    return Nginx(tmp_path / "www", tmp_path / "nginx", tls=tls)


@pytest.fixture
def nginx(tmp_path):
    """An nginx serving ``tmp_path / "www"`` (create the repository there)."""
    server = _served_folder(tmp_path, None)
    yield server
    server.stop()


@pytest.fixture
def nginx_tls(tmp_path):
    """An nginx serving ``tmp_path / "www"`` over HTTPS only; its CA is ``nginx_tls.tls.ca``."""
    server = _served_folder(tmp_path, make_certificates(tmp_path / "tls"))
    yield server
    server.stop()
