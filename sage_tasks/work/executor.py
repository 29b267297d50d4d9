"""Run one ticket's command: a shell command in its own process group, output to a file.

The command runs as ``/bin/sh -c <command>`` in a new session, so the whole tree
it starts shares one process group that can be signalled at once: on timeout
the group gets SIGTERM, a short grace, then SIGKILL; after a normal exit any
background leftovers get the same treatment, so nothing a ticket started
outlives it. Output (stdout and stderr together) goes to a file, never a pipe,
so a chatty command can neither block on a full pipe nor fill the worker's
memory; only its tail is read back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

#: Environment variables that carry broker or monitor credentials; a ticket's
#: command never sees them (it gets the broker password otherwise).
SECRET_ENV_VARS: frozenset[str] = frozenset(
    {
        "SAGE_BROKER_URL",
        "SAGE_RESULT_BACKEND",
        "CELERY_BROKER_URL",
        "CELERY_BROKER_READ_URL",
        "CELERY_BROKER_WRITE_URL",
        "CELERY_RESULT_BACKEND",
        "FLOWER_BASIC_AUTH",
        "FLOWER_OAUTH2_SECRET",
        "FLOWER_COOKIE_SECRET",
    }
)

#: control characters a terminal would act on (all but tab and newline), C1 included
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

DEFAULT_KILL_GRACE = 5.0
#: How long to wait, after SIGKILL, for the group's processes to be gone.
_REAP_WAIT = 5.0
_POLL_MAX = 0.05


@dataclass(frozen=True)
class ExecResult:
    """What running a ticket's command produced.

    ``exit_code`` is the shell's exit status, negative (``-N``) when a signal
    ``N`` the executor did not send ended it, and ``None`` when the command
    timed out and was killed. ``output_tail`` is at most the last
    ``max_output_bytes`` bytes of the combined output, decoded leniently and
    made safe to show on a terminal (see :func:`printable`); ``output_bytes``
    is the size of the whole output.
    """

    exit_code: int | None
    timed_out: bool
    duration_s: float
    output_tail: str
    output_bytes: int

    @property
    def ok(self) -> bool:
        """True when the command finished in time with exit status 0."""
        return not self.timed_out and self.exit_code == 0


#: the variables :func:`ticket_env` gives a ticket's command (the last only on a re-run)
TICKET_ENV_VARS = (
    "SAGE_TICKET_ID",
    "SAGE_RUN_ID",
    "SAGE_TICKET_FILE",
    "SAGE_PROMPT_FILE",
    "SAGE_CONFLICT_PATHS",
)


def ticket_env(
    base_env: Mapping[str, str],
    *,
    ticket_id: str,
    run_id: str,
    ticket_file: str | os.PathLike[str],
    prompt_file: str | os.PathLike[str],
    conflicts: Sequence[str] = (),
) -> dict[str, str]:
    """The environment a ticket's command runs with.

    ``base_env`` (usually the worker's ``os.environ``) without the broker and
    monitor credentials in :data:`SECRET_ENV_VARS`, plus ``SAGE_TICKET_ID``,
    ``SAGE_RUN_ID``, ``SAGE_TICKET_FILE`` and ``SAGE_PROMPT_FILE``; on a re-run
    after a merge conflict (``--conflict-retries``), ``SAGE_CONFLICT_PATHS``:
    the conflicting paths, one a line.
    """
    env = {k: v for k, v in base_env.items() if k not in SECRET_ENV_VARS}
    env["SAGE_TICKET_ID"] = ticket_id
    env["SAGE_RUN_ID"] = run_id
    env["SAGE_TICKET_FILE"] = os.fspath(ticket_file)
    env["SAGE_PROMPT_FILE"] = os.fspath(prompt_file)
    env.pop("SAGE_CONFLICT_PATHS", None)
    if conflicts:
        env["SAGE_CONFLICT_PATHS"] = "\n".join(conflicts)
    return env


def run_command(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    max_output_bytes: int,
    output_path: Path | None = None,
    kill_grace: float = DEFAULT_KILL_GRACE,
    on_start: Callable[[int], None] | None = None,
) -> ExecResult:
    """Run ``/bin/sh -c command`` in ``cwd`` with exactly ``env``, and wait for it.

    stdin is ``/dev/null``. Output goes to ``output_path`` when given (and is
    kept there), otherwise to an anonymous temporary file in the default temp
    directory (pass ``output_path`` to keep large output off a tmpfs). After
    ``timeout`` seconds the command's process group gets SIGTERM, then SIGKILL
    after ``kill_grace`` seconds; leftovers of a command that exits by itself
    are ended the same way. If this call is interrupted (an exception such as
    a soft time limit raised while waiting), the group is killed at once.
    ``on_start`` is called with the process group id once the command runs.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if max_output_bytes < 0:
        raise ValueError(f"max_output_bytes must not be negative, got {max_output_bytes}")
    with _open_output(output_path) as out:
        start = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            if on_start is not None:
                on_start(proc.pid)
            try:
                proc.wait(timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            ended = time.monotonic()
            _end_group(proc, kill_grace)
            if timed_out:
                # the timeout's duration includes the grace the command was given
                ended = time.monotonic()
        except BaseException:
            _kill_group_now(proc)
            raise
        output_bytes, tail = _read_tail(out, max_output_bytes)
    return ExecResult(
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        duration_s=ended - start,
        output_tail=tail,
        output_bytes=output_bytes,
    )


def _open_output(output_path: Path | None) -> IO[bytes]:
    if output_path is None:
        return tempfile.TemporaryFile(prefix="sage-output-")
    return open(output_path, "w+b")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_gone(proc: subprocess.Popen[bytes]) -> bool:
    # The leader (the shell) is our child: until it is reaped its zombie keeps
    # the group alive, so reap it first, then ask whether anyone is left.
    if proc.poll() is None:
        return False
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_group_gone(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not _group_gone(proc):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _POLL_MAX)
    return True


def _end_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the group, SIGKILL it after ``grace``, and wait until it is gone."""
    pgid = proc.pid  # start_new_session: the shell leads its own group
    if _group_gone(proc):
        return
    _signal_group(pgid, signal.SIGTERM)
    if _wait_group_gone(proc, grace):
        return
    _signal_group(pgid, signal.SIGKILL)
    if not _wait_group_gone(proc, _REAP_WAIT):
        # SIGKILL cannot be ignored: what is left is dead but not yet reaped by
        # init, or stuck in uninterruptible I/O.
        log.warning("process group %d still exists %.0f s after SIGKILL", pgid, _REAP_WAIT)


def _kill_group_now(proc: subprocess.Popen[bytes]) -> None:
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(_REAP_WAIT)
    except subprocess.TimeoutExpired:
        log.warning("shell %d did not exit after SIGKILL", proc.pid)


def _read_tail(out: IO[bytes], max_bytes: int) -> tuple[int, str]:
    """The output's size and its last ``max_bytes`` bytes as text."""
    size = os.fstat(out.fileno()).st_size
    if max_bytes == 0 or size == 0:
        return size, ""
    start = max(0, size - max_bytes)
    out.seek(start)
    data = out.read(max_bytes)
    if start > 0:
        data = _from_line_start(data)
    return size, printable(data.decode("utf-8", errors="replace"))


def printable(text: str) -> str:
    """``text`` safe to print on an operator's terminal, readable all the same.

    A command's output ends up in DEFERRED reasons that ``sage-submit`` shows;
    escape sequences in it must not reach the terminal (retitle it, clear it,
    rewrite what it shows). Carriage returns end lines (progress bars stay
    legible); every other control character but tab and newline is spelled
    out as ``\\xNN``.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _from_line_start(data: bytes) -> bytes:
    """Drop the partial first line of a cut-off tail, or at least a split UTF-8 character."""
    newline = data.find(b"\n")
    if 0 <= newline < len(data) - 1:
        return data[newline + 1 :]
    skip = 0
    while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:
        skip += 1
    return data[skip:]


def kill_orphans(pgid: int, marks: Mapping[str, str]) -> int:
    """SIGKILL the processes of group ``pgid`` whose environment holds every ``marks`` pair.

    A ticket command outlives a pool process killed under it (it runs in its
    own session). The ticket's next delivery ends it; the environment check
    makes sure a recycled group id never takes an unrelated process with it.
    Returns how many processes were killed.
    """
    killed = 0
    for pid in _marked(marks, pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def survivors(marks: Mapping[str, str]) -> list[int]:
    """The processes, in any group, whose environment holds every ``marks`` pair.

    After a command ends, its process group is gone; what is left is a
    process that left the group (``setsid``, a daemon) and may still write
    in the worktree. Only processes this user may read are seen.
    """
    return list(_marked(marks, None))


def _marked(marks: Mapping[str, str], pgid: int | None) -> Iterator[int]:
    """Pids whose environment holds every ``marks`` pair (only group ``pgid`` if given)."""
    wanted = [f"{k}={v}".encode() for k, v in marks.items()]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if pgid is not None:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[2]) != pgid:  # fields after the name: state, ppid, pgrp, ...
                    continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if all(w in environ for w in wanted) and int(entry.name) != os.getpid():
            yield int(entry.name)
