"""Fixtures of the slow tier."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns_fleet import Multihost, SageHosts
from tests.support.netns_topology import Topology


@pytest.fixture
def multihost(tmp_path: Path) -> Iterator[Multihost]:
    """Build a topology (hub, worker hosts, producer) and a fleet on it; always torn down.

    Call it with the worker host names (and SageHosts options); then ``start``
    the fleet with an index.
    """
    made: list[tuple[Topology, SageHosts]] = []

    def make(workers: Sequence[str] = ("w1", "w2", "w3"), **options: Any) -> SageHosts:
        topo = Topology(["hub", *workers, "producer"]).up()
        fleet = SageHosts(topo, tmp_path / f"fleet{len(made) + 1}", workers, **options)
        made.append((topo, fleet))
        return fleet

    try:
        yield make
    finally:
        for topo, fleet in made:
            try:
                fleet.stop()
            finally:
                topo.down()
