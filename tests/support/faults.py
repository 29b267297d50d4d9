"""Helpers for the fault tier: tickets that leave traces, process trees, history checks.

Every ticket command here appends a line to a log outside the repository
(``<id> <shell pid> <parent pid> <worker's work folder>``), so a test can tell how often
a ticket's command really ran and which pool process ran it, whatever the
run's own record says.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.fleet import Fleet, Submitted, bin_path, wait_until
from tests.support.runs import INDEX, git, states


def traced(tid: str, trace: Path, *, sleep: str = "0", first_sleep: str | None = None) -> str:
    """A command that logs its run to ``trace``, sleeps, then writes ``out/<tid>.txt``.

    ``sleep`` may name a shell expression (``${SLOW:-0}``); ``first_sleep``
    replaces it on the ticket's first run only (later runs sleep ``sleep``).
    """
    line = f'echo "{tid} $$ $PPID ${{SAGE_WORKDIR##*/}}" >> {trace}'
    if first_sleep is None:
        pause = f"sleep {sleep}"
    else:
        pause = (
            f'if [ "$(grep -c "^{tid} " {trace})" -le 1 ]; then sleep {first_sleep}; '
            f"else sleep {sleep}; fi"
        )
    return f"{line}; {pause}; mkdir -p out && echo {tid} > out/{tid}.txt"


@dataclass(frozen=True)
class Run:
    """One logged run of a ticket's command."""

    ticket: str
    pid: int  # the shell's pid (it leads its own process group)
    ppid: int  # the pool process that started it
    workdir: str  # the base name of the worker's SAGE_WORKDIR


def runs(trace: Path) -> list[Run]:
    """Every run ``trace`` logged, in order."""
    if not trace.exists():
        return []
    out = []
    for line in trace.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append(Run(parts[0], int(parts[1]), int(parts[2]), " ".join(parts[3:])))
    return out


def run_counts(trace: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in runs(trace):
        counts[r.ticket] = counts.get(r.ticket, 0) + 1
    return counts


# -- git -------------------------------------------------------------------------


def head(repo: Path, ref: str) -> str:
    return git(repo, "rev-parse", ref).strip()


def check_history(repo: Path, base: str, branch: str) -> list[str]:
    """Each commit base..branch records exactly one ticket, whole, and no ticket twice.

    A ticket's commit must hold its own ``out/<id>.txt`` and the index change
    that marks it COMPLETED, and change nothing else: not half a ticket, not
    another ticket's work. Returns the tickets in commit order.
    """
    shas = git(repo, "rev-list", "--reverse", "--first-parent", f"{base}..{branch}").split()
    seen: list[str] = []
    for sha in shas:
        parents = git(repo, "rev-list", "--parents", "-n", "1", sha).split()[1:]
        assert len(parents) == 1, f"{sha} is a merge"
        tids = [
            t.strip()
            for t in git(
                repo, "log", "-1", "--format=%(trailers:key=Sage-Ticket,valueonly)", sha
            ).splitlines()
            if t.strip()
        ]
        assert len(tids) == 1, f"{sha} records {tids}"
        tid = tids[0]
        assert tid not in seen, f"{tid} committed twice: {git(repo, 'log', '--oneline', branch)}"
        seen.append(tid)
        before, after = states(repo, parents[0]), states(repo, sha)
        changed = {t for t in after if after[t] != before.get(t)}
        assert changed == {tid}, f"{sha} changes the state of {sorted(changed)}"
        assert after[tid] == "COMPLETED", f"{sha} records {tid} as {after[tid]}"
        paths = git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).split()
        assert sorted(paths) == sorted([INDEX, f"out/{tid}.txt"]), f"{sha} changes {paths}"
        assert git(repo, "show", f"{sha}:out/{tid}.txt").strip() == tid
    return seen


# -- processes ---------------------------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may hold spaces; it ends at the last ')'
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``T`` stopped, ``Z`` zombie), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2]


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, whatever session or group it runs in."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _ppid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_host(fleet: Fleet, name: str) -> list[int]:
    """SIGKILL a worker "host": its main process, pool processes and ticket commands.

    Ticket commands run in sessions of their own, so the worker's process
    group does not hold them; the process tree does. Returns the pids killed.
    """
    proc = fleet.procs.pop(name)
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)  # nobody forks or reaps while we aim
    pids += [p for p in descendants(proc.pid) if p not in pids]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)
    return pids


def kill_groups(pids: list[int]) -> None:
    """SIGKILL the process groups led by ``pids`` (orphaned ticket commands), if any remain."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def wait_ready(fleet: Fleet, *names: str, timeout: float = 60) -> None:
    """Wait until each worker's log says it is ready to consume."""
    for name in names:
        ok = wait_until(lambda n=name: " ready." in fleet.log(n), timeout=timeout)
        assert ok, f"worker {name} did not start:\n{fleet.logs()}"


def pool_deaths(fleet: Fleet, name: str) -> int:
    """How many pool processes of a worker died under a task."""
    return fleet.log(name).count("exited with 'signal") + fleet.log(name).count(
        "exited with 'exitcode"
    )


# -- sage-submit in the background -------------------------------------------------------


class Background:
    """``sage-submit`` running while the test inflicts faults."""

    def __init__(self, fleet: Fleet, repo: Path, *args: str, queue: str, **env: str):
        self.args = args
        self.started = time.monotonic()
        self.ended: float | None = None
        self.proc = subprocess.Popen(
            [bin_path("sage-submit"), "--repo", str(repo), "--commit-queue", queue, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=fleet.env(**env),
        )

    def done(self) -> bool:
        return self.proc.poll() is not None

    def result(self, timeout: float = 180) -> Submitted:
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            raise AssertionError(
                f"sage-submit still running after {timeout} s:\n{stderr}"
            ) from None
        self.ended = self.ended or time.monotonic()
        data = None
        if "--json" in self.args and stdout.strip():
            try:
                data = json.loads(stdout)
            except json.JSONDecodeError:
                data = None
        return Submitted(self.proc.returncode, data, stdout, stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# -- the run's record ---------------------------------------------------------------------


def latest_run(client: Any) -> str | None:
    ids = client.zrevrange("sage:runs", 0, 0)
    return ids[0].decode() if ids else None


def record(client: Any, run_id: str, tid: str) -> dict[str, str]:
    data = client.hgetall(f"sage:run:{run_id}:t:{tid}")
    return {k.decode(): v.decode() for k, v in data.items()}


def wait_for_run(client: Any, timeout: float = 30) -> str:
    found: list[str] = []

    def submitted() -> bool:
        rid = latest_run(client)
        if rid:
            found.append(rid)
        return bool(rid)

    assert wait_until(submitted, timeout=timeout), "no run was submitted"
    return found[-1]


def wait_state(
    client: Any, run_id: str, tid: str, state: str, timeout: float = 60
) -> dict[str, str]:
    """Wait until the run's record shows ``tid`` in ``state``; returns the record."""
    seen: list[dict[str, str]] = []

    def reached() -> bool:
        rec = record(client, run_id, tid)
        seen.append(rec)
        return rec.get("state") == state

    assert wait_until(reached, timeout=timeout, interval=0.1), (
        f"{tid} never reached {state}: {seen[-1] if seen else {}}"
    )
    return seen[-1]
