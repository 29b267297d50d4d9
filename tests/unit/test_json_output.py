"""Machine output: streamed JSON on a pipe is exactly the document, at 100,000 tickets."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import orjson

from sage_tasks.views.output import CHUNK, Stream, encode, write_json

TICKETS = 100_000
#: text a ticket's fields may carry: quotes, backslashes, control characters, non-ASCII
AWKWARD = 'say "hi" \\ \x01\t\n Größe ✗ 失败 \u2028 </script>'


def row(n: int) -> dict[str, Any]:
    """Ticket ``n``'s row of a run's JSON."""
    return {
        "id": f"T-{n:06d}",
        "state": ("COMPLETED", "DEFERRED", "RUNNING", "PENDING")[n % 4],
        "host": f"tickets@w{n % 7}",
        "attempts": n % 3,
        "duration_s": None if n % 4 == 3 else n / 7,
        "reason": AWKWARD if n % 997 == 0 else "",
        "started": 1_700_000_000.0 + n * 0.001,
        "running_s": 0.00001 if n % 4 == 2 else None,
        "ok": n % 2 == 0,
    }


def through_a_pipe(document: dict[str, Any]) -> bytes:
    """What :func:`write_json` writes into a pipe, read from its other end."""
    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        with os.fdopen(read_fd, "rb") as reader:
            while piece := reader.read(1 << 16):
                chunks.append(piece)

    reader = threading.Thread(target=drain)
    reader.start()
    with os.fdopen(write_fd, "wb") as writer:
        write_json(document, writer)
    reader.join()
    return b"".join(chunks)


def test_streamed_json_on_a_pipe_is_byte_for_byte_what_json_loads_reads_back() -> None:
    rows = [row(n) for n in range(TICKETS)]
    document = {
        "run_id": "r1",
        "status": "RUNNING",
        "deferred": {r["id"]: AWKWARD for r in rows[:50]},
        "tickets": Stream(iter(rows)),
        "running": [r["id"] for r in rows if r["state"] == "RUNNING"][:10],
        "error": None,
    }
    out = through_a_pipe(document)
    back = json.loads(out)
    assert back == {**document, "tickets": rows}
    # one compact document and a newline: encoding what was read back gives the same bytes
    assert out == orjson.dumps(back) + b"\n"
    assert out.count(b"\n") == 1


def test_a_streamed_array_is_written_a_chunk_at_a_time_and_may_be_empty() -> None:
    pieces = list(encode({"tickets": Stream(range(2 * CHUNK + 1)), "none": Stream([])}))
    assert max(len(p) for p in pieces) < 10 * CHUNK  # never the whole array at once
    whole = b"".join(pieces)
    assert json.loads(whole) == {"tickets": list(range(2 * CHUNK + 1)), "none": []}
