"""Processes for tests: the installed entry points, process groups and trees, and polling.

Every process a test starts leads a session (and so a process group) of its
own, so the test can signal it with whatever it started; ticket commands lead
groups of their own too, which a test finds through the group ids they record
(:func:`record_group`, :func:`marked_groups`) or through the process tree
(:func:`descendants`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BIN = Path(sys.executable).parent


def bin_path(name: str) -> str:
    """The installed entry point ``name`` (sage-worker, sage-submit, celery) of this venv."""
    return str(BIN / name)


# -- polling ---------------------------------------------------------------------------


def _poll(predicate: Callable[..., T], timeout: float, interval: float) -> T:
    """Ask ``predicate`` every ``interval`` s until it answers something true or ``timeout`` s
    have passed; its last answer (it is always asked at least once, and once at the end)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_until(
    predicate: Callable[..., object], timeout: float = 30, interval: float = 0.2
) -> bool:
    """Whether ``predicate`` became true within ``timeout`` s (for ``assert wait_until(...)``).

    ``predicate`` is called with no arguments (a lambda may bind loop variables as defaults).
    """
    return bool(_poll(predicate, timeout, interval))


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.2,
    *,
    logs: Callable[[], str] | None = None,
) -> T:
    """Poll until ``predicate`` returns something true and return it.

    After ``timeout`` seconds, fail saying ``what`` was awaited, with ``logs()``
    (read then, not when the wait began).
    """
    value = _poll(predicate, timeout, interval)
    if not value:
        tail = f"\n{logs()}" if logs is not None else ""
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}")
    return value


# -- single processes ------------------------------------------------------------------


def _reaches(send: Callable[[int, int], None], target: int) -> bool:
    """Whether signal 0 finds ``target`` (one that is not ours is there all the same)."""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_exists(pid: int) -> bool:
    """Whether ``pid`` names a process, ours or not (a zombie counts)."""
    return _reaches(os.kill, pid)


def _stat_tail(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2 :].split()


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``T`` stopped, ``Z`` zombie), None when gone."""
    fields = _stat_tail(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (or is stopped): neither gone nor a zombie."""
    state = proc_state(pid)
    return state is not None and state != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, whatever session or group it runs in."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_tail(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def signal_all(pids: Iterable[int], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to each of ``pids`` (those gone meanwhile are skipped); the pids."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


# -- process groups --------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group ``pgid``."""
    return _reaches(os.killpg, pgid)


def record_group(tid: str, marks: Path, who: str) -> str:
    """A shell step that records its process group id in ``<marks>/<tid>.<who>``.

    ``who`` is a shell word naming where it runs (``$FLEET_HOST``, ``${WORKER:-w}``);
    :func:`marked_groups` reads the records back.
    """
    return f"echo $$ > {shlex.quote(f'{marks}/{tid}.')}{who}"


def marked_groups(marks: Path, tid: str) -> dict[str, int]:
    """Where ``tid``'s command ran -> the process group it ran in (see :func:`record_group`)."""
    out = {}
    for p in marks.glob(f"{tid}.*"):
        text = p.read_text().strip()
        if text.isdigit():
            out[p.name.split(".", 1)[1]] = int(text)
    return out


def _signal_groups(pgids: Iterable[int], sig: signal.Signals) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def kill_groups(leaders: Sequence[subprocess.Popen[Any] | int], *, grace: float | None) -> None:
    """End the process groups that ``leaders`` (processes we started, or bare pids) lead.

    ``grace`` a number of seconds: SIGTERM every group at once, give them
    ``grace`` s to go, then SIGKILL what is left; for stopping what a test
    started. ``grace`` None: SIGKILL at once; for groups nobody needs to shut
    down cleanly (ticket commands orphaned by a killed worker). A started
    process is reaped; one reaped before is left alone, as its group id may
    belong to someone else by now.
    """
    started = [p for p in leaders if isinstance(p, subprocess.Popen) and p.poll() is None]
    pgids = [p.pid for p in started] + [p for p in leaders if isinstance(p, int)]
    if grace is not None:
        _signal_groups(pgids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        others = [p for p in leaders if isinstance(p, int)]
        wait_until(lambda: not any(group_alive(g) for g in others), deadline - time.monotonic())
    _signal_groups(pgids, signal.SIGKILL)
    for proc in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def kill_group(proc: subprocess.Popen[Any], *, grace: float | None) -> None:
    """:func:`kill_groups` for one process."""
    kill_groups([proc], grace=grace)
