"""What of a ticket's command outlives it: only a process that left its process group (a
daemon in a session of its own) survives the end of the command, and ``survivors``
finds it by the ticket's marks in its environment. Real processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sage_tasks.work.executor import run_command, survivors

MARKS = {"SAGE_RUN_ID": "run-survivors", "SAGE_TICKET_ID": "T-survivors"}


@pytest.fixture
def marked_env() -> Iterator[dict[str, str]]:
    yield {**os.environ, **MARKS}
    for pid in survivors(MARKS):
        os.kill(pid, signal.SIGKILL)


def run(script: str, cwd: Path, env: dict[str, str]) -> None:
    res = run_command(script, cwd=cwd, env=env, timeout=30, max_output_bytes=1000, kill_grace=1)
    assert res.ok, res


def test_a_daemon_in_its_own_session_survives_the_command_and_is_found(
    tmp_path: Path, marked_env: dict[str, str]
) -> None:
    pid_file = tmp_path / "pid"
    run(
        f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 60' > /dev/null 2>&1 < /dev/null &"
        f" while [ ! -s {pid_file} ]; do sleep 0.01; done",
        tmp_path,
        marked_env,
    )
    daemon = int(pid_file.read_text())
    assert survivors(MARKS) == [daemon]
    assert survivors({**MARKS, "SAGE_TICKET_ID": "another"}) == []
    os.kill(daemon, signal.SIGKILL)


def test_background_jobs_of_the_command_end_with_it(
    tmp_path: Path, marked_env: dict[str, str]
) -> None:
    run("sleep 60 & sleep 60 & echo started", tmp_path, marked_env)
    assert survivors(MARKS) == []
