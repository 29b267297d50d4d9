"""A throw-away certificate authority and a redis-server that speaks only TLS."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from tests.support.redis_server import RedisServer


@dataclass(frozen=True)
class Certs:
    """A CA certificate and a server certificate it signed (for 127.0.0.1 and localhost)."""

    ca: Path
    cert: Path
    key: Path


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _new_key_request(cwd: Path, key: Path, out: Path, subject: str, *args: str) -> None:
    """``openssl req`` with a new P-256 key (unencrypted) in ``key``, written to ``out``."""
    _openssl(
        cwd,
        "req",
        *args,
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(out),
        "-subj",
        subject,
    )


def make_ca(folder: Path, name: str = "sage test CA") -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "ca.pem", folder / "ca.key"
    _new_key_request(folder, key, cert, f"/CN={name}", "-x509", "-days", "2")
    return cert, key


def make_certs(folder: Path) -> Certs:
    """A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI."""
    ca, ca_key = make_ca(folder)
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _new_key_request(folder, key, csr, "/CN=localhost")
    _openssl(
        folder,
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return Certs(ca=ca, cert=cert, key=key)


class TlsRedisServer(RedisServer):
    """redis-server with its plain port closed and TLS on the port the tests use."""

    def __init__(self, workdir: Path, certs: Certs, *, password: str | None = None):
        super().__init__(workdir, password=password)
        self.certs = certs
        self.extra_args = (
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(certs.cert),
            "--tls-key-file", str(certs.key),
            "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "no",
        )  # fmt: skip

    def tls_url(self, ca: Path | None = None) -> str:
        """``rediss://`` with certificate checks against ``ca`` (default: the test CA)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        ca_path = quote(str(ca or self.certs.ca), safe="/")
        return (
            f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca_path}"
        )

    @property
    def url(self) -> str:
        return self.tls_url()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)
