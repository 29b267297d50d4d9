"""Looking at a machine's network from a test: who listens where, and HTTP with basic auth."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request


def get(port: int, path: str, auth: str | None = None) -> tuple[int | None, bytes]:
    """Status and body of ``GET path`` on 127.0.0.1 (status None when nothing answers)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


def listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on TCP ``port`` (from /proc/net)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                    found.append(address)
    return found
