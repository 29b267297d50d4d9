"""Helpers for the fault tier: tickets that leave traces, history checks, a worker "host"
killed whole, and ``sage-submit`` running in the background.

Every ticket command here appends a line to a log outside the repository
(``<id> <shell pid> <parent pid> <worker's work folder>``), so a test can tell how often
a ticket's command really ran and which pool process ran it, whatever the
run's own record says.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.builders import Submitted
from tests.support.fleet import Fleet
from tests.support.gitrepo import INDEX, git
from tests.support.procs import bin_path, descendants, signal_all
from tests.support.runs import states


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


def kill_host(fleet: Fleet, name: str) -> list[int]:
    """SIGKILL a worker "host": its main process, pool processes and ticket commands.

    Ticket commands run in sessions of their own, so the worker's process
    group does not hold them; the process tree does. Returns the pids killed.
    """
    proc = fleet.procs.pop(name)
    # frozen first: nobody forks or reaps while we aim
    pids = signal_all([proc.pid, *descendants(proc.pid)], signal.SIGSTOP)
    pids += [p for p in descendants(proc.pid) if p not in pids]
    signal_all(pids, signal.SIGKILL)
    proc.wait(10)
    return pids


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
        return Submitted.parse(self.proc.returncode, stdout, stderr, json_out="--json" in self.args)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
