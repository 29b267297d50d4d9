"""``--dry-run --json`` of 100,000 tickets on a pipe: one compact document, exactly the plan."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import orjson

from tests.support.gitrepo import make_repo
from tests.support.procs import bin_path

TICKETS = 100_000
LEVELS = 20


def test_dry_run_json_of_a_hundred_thousand_tickets_on_a_pipe_reads_back_byte_for_byte(
    tmp_path: Path,
) -> None:
    per = TICKETS // LEVELS
    tickets = [
        {
            "id": f"T-{n:06d}",
            "title": f'Größe {n} "quoted" \\ ✗',
            "dependencies": [f"T-{n - per:06d}"] if n >= per else [],
            "run": "true",
        }
        for n in range(TICKETS)
    ]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})
    sage_submit = bin_path("sage-submit")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}
    done = subprocess.run(
        [sage_submit, "--repo", str(repo), "--dry-run", "--json"],
        capture_output=True,  # stdout a pipe, as in a script or | jq
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = done.stdout
    plan = json.loads(out)
    assert out == orjson.dumps(plan) + b"\n"  # compact, complete, nothing pretty-printed
    assert plan["tickets"] == plan["to_run"] == TICKETS
    assert [len(b) for b in plan["batches"]] == [per] * LEVELS
    assert plan["batches"][0][:2] == ["T-000000", "T-000001"]
    assert len(plan["critical_path"]) == LEVELS
