"""An eager run's BLOCKED walk survives a commit worker that dies half way through it.

Chain A -> B -> C -> D; A ends DEFERRED. The worker dies right after B is
BLOCKED and released; the next look at A (a redelivered commit task or the
supervisor) must still block C and D, or the run never ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.dispatch import eager
from sage_tasks.store import keys
from sage_tasks.store.readiness import ReadySet
from sage_tasks.store.runstate import Phase, RunStore
from tests.support.redis_server import RedisServer


class WorkerDied(BaseException):
    """The commit worker's process ends here."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis")
    s.start()
    yield s
    s.stop(kill=True)


def test_blocking_resumes_below_a_dependent_blocked_before_the_worker_died(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = server.client()
    store = RunStore(r, ttl=3600)
    run_id = "recover1"
    deps = {"A": [], "B": ["A"], "C": ["B"], "D": ["C"]}
    for tid in deps:
        r.hset(keys.ticket(run_id, tid), mapping={"state": "QUEUED" if tid == "A" else "PENDING"})
    ready = ReadySet(r, run_id, ttl=3600)
    ready.init(deps, {t: n for n, t in enumerate(deps)}, {})
    store.finish_ticket(run_id, "A", Phase.DEFERRED, reason="exit code 1")

    release = ReadySet.release

    def dies_after_b(self: ReadySet, tid: str, state: str, **kw: Any) -> list[str]:
        out: list[str] = release(self, tid, state, **kw)
        if tid == "B":
            raise WorkerDied
        return out

    class Rt:  # what the walk uses of the runtime
        def __init__(self) -> None:
            self.store = store

    monkeypatch.setattr(ReadySet, "release", dies_after_b)
    with pytest.raises(WorkerDied):
        eager._block_dependents(Rt(), ready, run_id, "A", "DEFERRED")  # type: ignore[arg-type]
    monkeypatch.setattr(ReadySet, "release", release)
    assert store.finals(run_id) == {"A": "DEFERRED", "B": "BLOCKED"}

    eager._block_dependents(Rt(), ready, run_id, "A", "DEFERRED")  # type: ignore[arg-type]
    assert store.finals(run_id) == {
        "A": "DEFERRED",
        "B": "BLOCKED",
        "C": "BLOCKED",
        "D": "BLOCKED",
    }
    assert {"B", "C", "D"} <= ready.released()
