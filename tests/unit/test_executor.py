"""run_command and ticket_env against real processes."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from sage_tasks.work.executor import ExecResult, run_command, ticket_env

BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def run(command: str, cwd: Path, **kwargs: object) -> ExecResult:
    options: dict[str, object] = {
        "env": BASE_ENV,
        "timeout": 10.0,
        "max_output_bytes": 64 * 1024,
        "kill_grace": 0.5,
    }
    options.update(kwargs)
    return run_command(command, cwd=cwd, **options)  # type: ignore[arg-type]


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def assert_process_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def pids_from(result: ExecResult) -> list[int]:
    return [int(word) for word in result.output_tail.split() if word.isdigit()]


@pytest.fixture
def alarm() -> Iterator[None]:
    """Restores SIGALRM after a test that uses it to interrupt a call."""
    previous = signal.getsignal(signal.SIGALRM)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("code", [0, 1, 3, 127])
def test_the_exit_code_of_the_command_is_reported(tmp_path: Path, code: int) -> None:
    result = run(f"exit {code}", tmp_path)
    assert result.exit_code == code
    assert not result.timed_out
    assert result.ok is (code == 0)


def test_a_command_killed_by_a_signal_reports_a_negative_exit_code(tmp_path: Path) -> None:
    result = run("kill -9 $$", tmp_path)
    assert result.exit_code == -9
    assert not result.timed_out


def test_the_command_runs_in_the_given_directory_with_only_the_given_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGE_TEST_LEAK", "leaked")
    env = {**BASE_ENV, "SAGE_TICKET_ID": "AUTH-001"}
    result = run('printf "%s|%s|%s" "$SAGE_TICKET_ID" "$SAGE_TEST_LEAK" "$PWD"', tmp_path, env=env)
    assert result.output_tail == f"AUTH-001||{tmp_path}"


def test_stdin_is_empty(tmp_path: Path) -> None:
    result = run("cat; echo done", tmp_path, timeout=5.0)
    assert result.output_tail == "done\n"
    assert not result.timed_out


def test_stdout_and_stderr_are_captured_together_in_order(tmp_path: Path) -> None:
    result = run("echo one; echo two >&2; echo three", tmp_path)
    assert result.output_tail == "one\ntwo\nthree\n"
    assert result.output_bytes == len("one\ntwo\nthree\n")


def test_duration_is_measured(tmp_path: Path) -> None:
    result = run("sleep 0.3", tmp_path)
    assert 0.3 <= result.duration_s < 3


def test_a_timeout_kills_the_whole_group_including_children_that_ignore_sigterm(
    tmp_path: Path,
) -> None:
    # The shell and its child both ignore SIGTERM (an ignored signal is inherited).
    script = "trap '' TERM; sleep 1000 & echo $$ $!; wait; echo not-reached"
    started = time.monotonic()
    result = run(script, tmp_path, timeout=0.5, kill_grace=0.3)
    elapsed = time.monotonic() - started

    assert result.timed_out
    assert result.exit_code is None
    assert not result.ok
    assert "not-reached" not in result.output_tail
    assert result.duration_s >= 0.5
    assert elapsed < 8
    shell, grandchild = pids_from(result)
    assert_group_gone(shell)
    assert_process_gone(grandchild)


def test_a_timeout_gives_the_group_a_grace_to_exit_on_sigterm(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned-up"
    script = f"trap 'touch {marker}; exit 5' TERM; echo $$; while :; do sleep 0.05; done"
    result = run(script, tmp_path, timeout=0.3, kill_grace=5.0)
    assert result.timed_out
    assert marker.exists()
    assert result.duration_s < 4
    assert_group_gone(pids_from(result)[0])


def test_background_children_left_by_a_successful_command_are_killed(tmp_path: Path) -> None:
    result = run("sleep 1000 & echo $$ $!; exit 0", tmp_path)
    assert result.exit_code == 0
    assert not result.timed_out
    shell, leftover = pids_from(result)
    assert_group_gone(shell)
    assert_process_gone(leftover)


def test_leftovers_that_ignore_sigterm_are_killed_after_the_grace(tmp_path: Path) -> None:
    result = run("(trap '' TERM; sleep 1000) & echo $$ $!", tmp_path, kill_grace=0.3)
    assert result.exit_code == 0
    shell, leftover = pids_from(result)
    assert_group_gone(shell)
    assert_process_gone(leftover)


def test_an_interrupted_run_kills_the_group_at_once(tmp_path: Path, alarm: None) -> None:
    pid_file = tmp_path / "pids"

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("soft time limit")

    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    with pytest.raises(TimeoutError):
        run(f"sleep 1000 & echo $$ $! > {pid_file}; wait", tmp_path, timeout=30.0)
    shell, child = (int(p) for p in pid_file.read_text().split())
    assert_process_gone(shell)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert_process_gone(child)


def test_big_output_is_capped_to_its_tail_without_hanging(tmp_path: Path) -> None:
    total = 20 * 1024 * 1024
    command = f"head -c {total - 4} /dev/zero | tr '\\0' 'x' | fold -w 99; echo; echo END"
    started = time.monotonic()
    result = run(command, tmp_path, max_output_bytes=1000)
    assert time.monotonic() - started < 10
    assert result.exit_code == 0
    assert result.output_bytes > total
    assert len(result.output_tail.encode()) <= 1000
    assert result.output_tail.endswith("\nEND\n")
    # cut at a line boundary: every full line of x's is 99 long
    first_line = result.output_tail.split("\n")[0]
    assert first_line == "x" * 99


def test_a_tail_without_newlines_is_kept_as_is(tmp_path: Path) -> None:
    result = run("head -c 5000 /dev/zero | tr '\\0' 'y'", tmp_path, max_output_bytes=100)
    assert result.output_tail == "y" * 100
    assert result.output_bytes == 5000


def test_a_cut_tail_does_not_start_with_half_a_character(tmp_path: Path) -> None:
    # 'é' is two bytes; a 101-byte tail of 'éééé…' starts in the middle of one
    result = run(
        "i=0; while [ $i -lt 100 ]; do printf 'é'; i=$((i+1)); done", tmp_path, max_output_bytes=101
    )
    assert result.output_tail == "é" * 50


def test_non_utf8_output_stays_readable(tmp_path: Path) -> None:
    result = run(r"printf 'caf\351 au lait\n'; printf 'ok\n'", tmp_path)
    assert result.output_tail == "caf\ufffd au lait\nok\n"


def test_output_is_kept_in_the_given_file(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    result = run("seq 1 1000", tmp_path, output_path=output, max_output_bytes=10)
    assert output.read_text() == "".join(f"{i}\n" for i in range(1, 1001))
    assert result.output_bytes == output.stat().st_size
    assert result.output_tail == "999\n1000\n"


def test_no_output_gives_an_empty_tail(tmp_path: Path) -> None:
    result = run("true", tmp_path)
    assert result.output_tail == ""
    assert result.output_bytes == 0


def test_a_zero_output_cap_gives_an_empty_tail(tmp_path: Path) -> None:
    result = run("echo hello", tmp_path, max_output_bytes=0)
    assert result.output_tail == ""
    assert result.output_bytes == 6


@pytest.mark.parametrize(("timeout", "max_output_bytes"), [(0, 10), (-1, 10), (1, -1)])
def test_invalid_limits_are_rejected(tmp_path: Path, timeout: float, max_output_bytes: int) -> None:
    with pytest.raises(ValueError):
        run("true", tmp_path, timeout=timeout, max_output_bytes=max_output_bytes)


def test_ticket_env_sets_the_ticket_variables(tmp_path: Path) -> None:
    env = ticket_env(
        {"PATH": "/bin", "HOME": "/home/w", "SAGE_TICKET_ID": "stale"},
        ticket_id="AUTH-001",
        run_id="r1",
        ticket_file=tmp_path / "ticket.json",
        prompt_file=str(tmp_path / "prompt.md"),
    )
    assert env == {
        "PATH": "/bin",
        "HOME": "/home/w",
        "SAGE_TICKET_ID": "AUTH-001",
        "SAGE_RUN_ID": "r1",
        "SAGE_TICKET_FILE": str(tmp_path / "ticket.json"),
        "SAGE_PROMPT_FILE": str(tmp_path / "prompt.md"),
    }


def test_ticket_env_names_the_conflicting_paths_of_a_rerun_only(tmp_path: Path) -> None:
    env_of = functools.partial(
        ticket_env,
        {"SAGE_CONFLICT_PATHS": "stale"},
        ticket_id="A",
        run_id="r1",
        ticket_file=tmp_path / "t.json",
        prompt_file=tmp_path / "p.md",
    )
    env = env_of(conflicts=["a.txt", "b/c.txt"])
    assert env["SAGE_CONFLICT_PATHS"] == "a.txt\nb/c.txt"
    assert "SAGE_CONFLICT_PATHS" not in env_of()


@pytest.mark.parametrize(
    "secret",
    [
        "SAGE_BROKER_URL",
        "SAGE_RESULT_BACKEND",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "FLOWER_BASIC_AUTH",
    ],
)
def test_ticket_env_hides_broker_credentials_from_the_command(secret: str) -> None:
    base = {"PATH": "/bin", secret: "redis://:hunter2@broker:6379/0"}
    env = ticket_env(base, ticket_id="T", run_id="r", ticket_file="t", prompt_file="p")
    assert secret not in env
    assert "hunter2" not in "".join(env.values())
    assert base[secret]  # the caller's mapping is left alone


def test_the_command_does_not_see_the_broker_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGE_BROKER_URL", "redis://:hunter2@broker:6379/0")
    env = ticket_env(os.environ, ticket_id="T", run_id="r", ticket_file="t", prompt_file="p")
    result = run("env", tmp_path, env=env)
    assert "hunter2" not in result.output_tail
    assert "SAGE_TICKET_ID=T" in result.output_tail


def test_kill_orphans_ends_only_the_group_members_that_carry_the_tickets_marks() -> None:
    from sage_tasks.work.executor import kill_orphans

    marks = {"SAGE_RUN_ID": "r1", "SAGE_TICKET_ID": "T1"}
    ours = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 60 & sleep 60"],
        env={**os.environ, **marks},
        start_new_session=True,
    )
    other = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 60"],
        env={**os.environ, "SAGE_RUN_ID": "r1", "SAGE_TICKET_ID": "T2"},
        start_new_session=True,
    )
    try:
        time.sleep(0.3)
        assert kill_orphans(other.pid, marks) == 0  # another ticket's group is left alone
        assert kill_orphans(ours.pid, marks) >= 2  # the shell and its background sleep
        ours.wait(5)
        assert other.poll() is None
    finally:
        for proc in (ours, other):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
