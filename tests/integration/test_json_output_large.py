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


def _small_repo(tmp_path: Path, n: int = 3000) -> Path:
    tickets = [
        {"id": f"T-{n:06d}", "title": "t", "dependencies": [], "run": "true"} for n in range(n)
    ]
    return make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}


def test_json_to_a_full_disk_is_one_error_line_and_exit_3(tmp_path: Path) -> None:
    repo = _small_repo(tmp_path)
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [bin_path("sage-submit"), "--repo", str(repo), "--dry-run", "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            env=_plain_env(),
            timeout=120,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 3, err
    assert err == "sage: error: cannot write the output: No space left on device\n"


def test_json_to_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """``sage-submit ... --json | head -c 1``: no traceback, no message, exit 1."""
    repo = _small_repo(tmp_path, 30_000)  # a plan much larger than a pipe's buffer
    proc = subprocess.Popen(
        [bin_path("sage-submit"), "--repo", str(repo), "--dry-run", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_plain_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1) == b"{"
    proc.stdout.close()  # the reader goes away with most of the document unread
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 1
    assert err == ""
