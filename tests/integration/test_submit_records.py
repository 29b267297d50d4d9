"""What ``sage-submit`` stores for each ticket, read back from a real Redis.

The first records go as blocks of columns through one script call each
(:class:`sage_tasks.store.runstate.TicketBlock`): every ticket's definition must
come back as the index has it, whatever its characters, and its fields must
be its own, across block boundaries and in both schedules.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.store import keys
from sage_tasks.store.runstate import SCRIPT_CHUNK, RunStore, TicketBlock
from tests.support.builders import run_info
from tests.support.gitrepo import make_repo
from tests.support.procs import bin_path
from tests.support.redis_server import RedisServer

#: characters JSON escapes, or that a Lua JSON decoder might read differently
ODD = 'quote " backslash \\ slash / tab \t newline \n bell \x07 nul \x00 é ✓ 𝄞 \u2028'


def odd_ticket(tid: str, deps: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "title": f"{ODD} {tid}",
        "state": "UNPROCESSED",
        "priority": "P1",
        "dependencies": deps,
        "run": f"printf '%s' {tid!r}",
        "big": 2**70,  # past 64 bits: orjson refuses it, the stdlib writes it
        "nested": {"list": [1, 2.5, None, True], "empty": {}, "none": []},
        **extra,
    }


def submit(repo: Path, server: RedisServer, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}
    env["SAGE_BROKER_URL"] = server.url
    done = subprocess.run(
        [bin_path("sage-submit"), "--repo", str(repo), "--json", *args],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    run_id: str = json.loads(done.stdout)["run_id"]
    return run_id


def records(server: RedisServer, run_id: str, ids: list[str]) -> dict[str, dict[str, str]]:
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for tid in ids:
        pipe.hgetall(keys.ticket(run_id, tid))
    return {
        tid: {k.decode(): v.decode() for k, v in found.items()}
        for tid, found in zip(ids, pipe.execute(), strict=True)
    }


@pytest.mark.parametrize("schedule", ["levels", "eager"])
def test_every_definition_and_field_reads_back_across_blocks(
    tmp_path: Path, redis_server: RedisServer, schedule: str
) -> None:
    # level 1 is wider than a block; then a chain; a DEFERRED ticket blocks its dependent
    wide = [odd_ticket(f"W-{n:05d}", []) for n in range(SCRIPT_CHUNK + 7)]
    chain = [odd_ticket(f"C-{n}", [f"C-{n - 1}" if n else "W-00003", "W-00001"]) for n in range(5)]
    deferred = odd_ticket("D-0", [], state="DEFERRED")
    held = odd_ticket("H-0", ["D-0", "C-4"])
    tickets = [*wide, *chain, deferred, held]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})

    run_id = submit(repo, redis_server, "--schedule", schedule)

    stored = records(redis_server, run_id, [t["id"] for t in tickets])
    client = redis_server.client()
    found: dict[bytes, bytes] = client.hgetall(keys.definitions(run_id))  # type: ignore[assignment]
    definitions = {k.decode(): json.loads(v) for k, v in found.items()}
    planned = [*wide, *chain]
    assert definitions == {t["id"]: t for t in planned}
    for t in planned:
        fields = stored[t["id"]]
        assert fields["state"] == "PENDING"
        assert json.loads(fields["deps"]) == t["dependencies"]
        assert fields["attempts"] == "0"
        assert "ticket" not in fields  # kept apart, in the run's hash of definitions
    assert {stored[t["id"]]["batch"] for t in wide} == {"0"}
    assert [stored[f"C-{n}"]["batch"] for n in range(5)] == ["1", "2", "3", "4", "5"]
    ranks = [int(stored[t["id"]]["rank"]) for t in planned]
    if schedule == "eager":
        assert sorted(ranks) == list(range(len(planned)))
        assert ranks[-5:] == sorted(ranks[-5:])  # the chain, in order
    else:
        assert set(ranks) == {0}
    assert stored["H-0"]["state"] == "BLOCKED"
    assert stored["H-0"]["reason"] == "dependency D-0 is DEFERRED and not retried"
    assert stored["D-0"] == {}  # DEFERRED and not retried: not part of the run
    store = RunStore(client, ttl=3600)
    assert store.finals(run_id) == {"H-0": "BLOCKED"}
    assert all(client.ttl(key) > 0 for key in client.scan_iter(f"sage:run:{run_id}*"))


def test_records_given_a_ticket_at_a_time_are_stored_as_blocks(
    redis_server: RedisServer,
) -> None:
    """Callers that hand :meth:`RunStore.create` a mapping (tests, tools) get the same."""
    client = redis_server.client()
    store = RunStore(client, ttl=3600)
    given = {
        "A": {"state": "PENDING", "ticket": json.dumps({"id": "A", "title": ODD}), "batch": "0"},
        "B": {"state": "PENDING", "ticket": "{}", "batch": "0"},
        "C": {"state": "BLOCKED", "reason": f"because {ODD}", "attempts": "0"},
        "D": {"state": "PENDING", "batch": "1"},
    }
    store.create(run_info("blocks1"), '{"batches": [["A", "B"], ["D"]]}', given)
    stored = records(redis_server, "blocks1", list(given))
    assert stored["A"] == {"state": "PENDING", "batch": "0"}
    assert stored["C"] == {"state": "BLOCKED", "reason": f"because {ODD}", "attempts": "0"}
    assert stored["D"] == {"state": "PENDING", "batch": "1"}
    assert json.loads(store.record("blocks1", "A")["ticket"]) == {"id": "A", "title": ODD}
    assert store.record("blocks1", "B")["ticket"] == "{}"
    assert store.finals("blocks1") == {"C": "BLOCKED"}
    one_block = TicketBlock(["X", "Y"], {"state": "PENDING", "batch": ["0", "1"]})
    store.create(run_info("blocks2"), '{"batches": [["X"], ["Y"]]}', [one_block])
    assert records(redis_server, "blocks2", ["X", "Y"]) == {
        "X": {"state": "PENDING", "batch": "0"},
        "Y": {"state": "PENDING", "batch": "1"},
    }
