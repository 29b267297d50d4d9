"""Fixtures of the integration tier: run records in a real redis-server, a fleet of real
processes, and graphs run on it.

A module says what fleet its tests need with the ``fleet`` mark (options of
:class:`FleetOptions`)::

    pytestmark = pytest.mark.fleet(concurrency=3, env={"SAGE_MAX_PATCH_BYTES": "20000"})

By default the tests of a module share one fleet, started for the first of
them; ``per_test=True`` gives each test a fleet of its own, for tests that
stop, replace or count the workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.gitops import Mirror
from sage_tasks.store.runstate import RunStore
from tests.support.fleet import Fleet, graph_runner, private_fleet
from tests.support.redis_server import RedisServer
from tests.support.worktrees import fresh_clones


@dataclass(frozen=True)
class FleetOptions:
    """What the ``fleet`` mark may say (see the module docs)."""

    #: slots of the fleet's ticket worker ``tickets``; None: no ticket worker
    concurrency: int | None = 2
    #: the redis-server's password
    password: str | None = None
    #: SAGE_* settings of every process of the fleet
    env: Mapping[str, str] = field(default_factory=dict)
    #: a fleet for each test rather than one for the module
    per_test: bool = False

    @classmethod
    def of(cls, node: pytest.Item | pytest.Collector) -> FleetOptions:
        mark = node.get_closest_marker("fleet")
        return cls(**mark.kwargs) if mark is not None else cls()

    def fleet(self, root: Path) -> AbstractContextManager[Fleet]:
        """:func:`private_fleet` with these options."""
        return private_fleet(root, concurrency=self.concurrency, password=self.password, **self.env)


@pytest.fixture(scope="module")
def shared_fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """The fleet the tests of a module share (module-scoped fixtures ask for this one)."""
    with FleetOptions.of(request.node).fleet(tmp_path_factory.mktemp("fleet")) as f:
        yield f


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet on a private redis-server, as the module's ``fleet`` mark says."""
    options = FleetOptions.of(request.node)
    if not options.per_test:
        yield request.getfixturevalue("shared_fleet")
        return
    with options.fleet(tmp_path / "fleet") as f:
        yield f


@pytest.fixture
def run(fleet: Fleet, tmp_path: Path) -> Iterator[Any]:
    """Build a repo from tickets, start its commit worker, return a submit function
    (:func:`~tests.support.fleet.graph_runner`)."""
    with graph_runner(fleet, tmp_path) as go:
        yield go


@pytest.fixture
def store(redis_server: RedisServer) -> RunStore:
    """The run records of the test's private redis-server (kept an hour)."""
    return RunStore(redis_server.client(), ttl=3600)


# -- kept worktrees: a module defines ``origin`` (its bare repository) ------------------


@pytest.fixture
def mirror(tmp_path: Path, origin: Path) -> Iterator[Mirror]:
    """A ticket worker's mirror of the module's ``origin``."""
    m = Mirror(tmp_path / "workdir", str(origin))
    yield m
    m.close()


@pytest.fixture
def fresh(tmp_path: Path, origin: Path) -> Callable[[str], Path]:
    """A fresh clone of ``origin`` at a commit, for comparison."""
    return fresh_clones(origin, tmp_path)
