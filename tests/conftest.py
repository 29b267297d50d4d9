"""Fixtures shared by every tier."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture(autouse=True, scope="session")
def private_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Commands the tests start keep their work and ``--local`` data in a temp folder.

    Never in the user's ``~/.cache/sage-tasks``; a test that sets its own
    ``SAGE_WORKDIR`` still wins.
    """
    old = os.environ.get("SAGE_WORKDIR")
    os.environ["SAGE_WORKDIR"] = str(tmp_path_factory.mktemp("sage-workdir"))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SAGE_WORKDIR", None)
        else:
            os.environ["SAGE_WORKDIR"] = old
