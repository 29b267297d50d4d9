"""``sage-submit --local``: the embedded default, everything on this machine.

:func:`local_fleet` runs a private ``redis-server`` on the repository's own
data folder under ``SAGE_WORKDIR`` (see :mod:`sage_tasks.cli.local_redis`: one
per repository, kept on disk, so later commands read the run's history),
one ticket worker, one commit worker and, if asked, Flower, started first:
they boot (on the other cores) while the command line reads and plans the
index (see :meth:`LocalFleet.start_workers`); then it submits and follows
the run on them; then every process it started is stopped — also on Ctrl-C,
on errors and when a worker dies. A run that did not end is marked FAILED
and its queued work dropped, so the next run on the repository starts
clean; an index rejected leaves nothing behind (the processes stopped at
once, the folders this command made removed). One ``--local`` run at a time
uses a repository's folder: a second one waits for the first to end.

The ticket worker's mirror and worktrees stay in that folder (``work/``) from
one run to the next: the next run's worker takes over the worktrees the last
one used (each reset in full before its first ticket) instead of writing a
big repository's files again, and what no run used is removed at the end.

:func:`local_reader` starts the same Redis (no workers) for ``status`` and
``report``, only for as long as they read it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from sage_tasks.cli.local_redis import (
    homes,
    local_home,
    local_runs,
    private_redis,
    remove_unused,
    repo_of,
    run_lock,
    terminate,
)
from sage_tasks.cli.local_workers import MARKER, LocalFleet, flower_port, local_settings
from sage_tasks.config import Settings
from sage_tasks.core.plan import Parallel, resolve_parallel
from sage_tasks.errors import LocalError, SageError, UnknownRun
from sage_tasks.store.broker import connect
from sage_tasks.store.runstate import RunStatus, RunStore

__all__ = [
    "LocalError",
    "LocalFleet",
    "local_fleet",
    "local_hint",
    "local_reader",
    "terminate_as_interrupt",
    "ticket_slots",
]


def _leftovers(home: Path) -> list[int]:
    """Processes a ``--local`` run on ``home`` started and did not stop (it was killed)."""
    mark = f"{MARKER}={home}\0".encode()
    found: list[int] = []
    if not Path("/proc").is_dir():
        return found  # nothing to look at: Linux only
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            if mark in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


def settle(settings: Settings, repo: str, why: str) -> list[str]:
    """End the runs of ``repo`` still open in the private Redis, and drop their queued work.

    Called with no worker running on it: before a run (what a killed
    ``--local`` left) and after (the run, if Ctrl-C or a dead process ended
    it first). Each such run ends FAILED with ``why``; resubmitting with its
    ``--branch`` resumes it. Returns their ids.
    """
    # Celery (to reach its queues) is loaded by the local commands that start workers
    from sage_tasks.app.celery_app import make_app

    store = RunStore(connect(settings.backend_url), ttl=settings.result_expires)
    open_runs = store.active(repo)
    for run_id in open_runs:
        info = store.get(run_id)
        resume = f"; to resume: sage-submit --local --branch {info.branch}" if info else ""
        store.finish(run_id, repo, status=RunStatus.FAILED, error=f"{why}{resume}")
    app = make_app(settings, tasks=False)  # only its connection: no task is sent
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel  # kombu's Redis channel
        for queue in (settings.ticket_queue, settings.commit_queue):
            channel.queue_purge(queue)
        # what dead workers held unacknowledged would otherwise be delivered again
        channel.client.delete(channel.unacked_key, channel.unacked_index_key)
    return open_runs


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C, so cleanup always happens."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _run_folder(home: Path) -> Iterator[Path]:
    """The run's folder for worker logs, after clearing what a killed run left."""
    terminate(_leftovers(home), 10.0)
    root = home / "run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700)
    try:
        yield root
    finally:
        # deferred: the git layer (and GitPython with it) loads only once a run ends
        from sage_tasks.gitops.removal import remove_tree

        with suppress(OSError):
            remove_tree(root)  # a big repository's worktrees: several threads


def _settle_killed(settings: Settings, repo: Path, human: Console) -> None:
    stale = settle(settings, str(repo), "its sage-submit --local was killed")
    if stale:
        human.print(
            f"[yellow]note:[/] marked FAILED the unfinished local run(s) {', '.join(stale)} "
            "left by a killed sage-submit",
            highlight=False,
        )


def _keep_used_worktrees(workdir: Path, since: float) -> None:
    """Keep for the next run the worktrees this run's ticket worker used, nothing else.

    A later run's worker adopts them (reset in full, then reused ticket after
    ticket), so a big repository is not written again for every run; what
    an earlier run with more slots left, or a ticket that died, is removed.
    """
    # deferred: the git layer loads only once a run ends
    from sage_tasks.errors import GitError
    from sage_tasks.gitops import prune_workdir

    with suppress(OSError, GitError):
        prune_workdir(workdir, keep_idle=True, used_since=since - _CLOCK_SLACK_S)


#: file times come from a coarser clock than ``time.time()`` (the kernel's, a tick behind
#: at most); any more slack would keep a worktree the run before made just before it ended
_CLOCK_SLACK_S = 0.05


def ticket_slots(parallel: Parallel) -> int:
    """The ticket worker's slots, known before the plan is: ``--parallel N``'s N; ``auto``
    as for more tickets to run than that (half the cores, at most 8); else the cores.

    Raises :class:`ConfigError` (exit 2) for a bad value.
    """
    return resolve_parallel(parallel, None, sys.maxsize) or os.cpu_count() or 1


@contextmanager
def local_fleet(
    repo: Path,
    settings: Settings,
    human: Console,
    *,
    slots: int,
    flower: int | None = None,
    on_busy: Callable[[], None] | None = None,
) -> Iterator[LocalFleet]:
    """The repository's private Redis and workers, started at once; stopped after, whatever happens.

    The block is meant to read and plan the index while the workers boot (on
    another core), then submit the run on the fleet: its ``settings`` point
    at the private Redis, its ``check`` raises when a worker died, its
    ``ready`` (called just before the run is sent) starts what was left for
    then and waits for Flower, started when ``flower`` is a port (0:
    Flower's default or any free one). When another ``--local`` run holds
    the repository, ``on_busy`` runs before this one waits for it, so that
    bad input is told at once, not once that run has ended.

    A block that ends before a run was noted (:meth:`LocalFleet.remember`:
    the index was rejected, or Ctrl-C came first) leaves nothing behind: the
    workers are stopped at once, the worktrees kept for later runs stay as
    they were, and a data folder this command made is removed.
    """
    home = local_home(settings.workdir, repo)
    port = flower_port(flower) if flower is not None else None
    made = [p for p in (settings.workdir, home.parent) if not p.is_dir()]

    def waiting(holder: str) -> None:
        if on_busy is not None:
            on_busy()
        human.print(
            f"another --local run on {repo} is under way ({holder}); waiting for it to end "
            "(Ctrl-C to give up)",
            highlight=False,
        )

    with terminate_as_interrupt(), run_lock(home, repo, waiting) as fresh:
        fleet: LocalFleet | None = None
        try:
            with _run_folder(home) as root, private_redis(home) as server:
                fleet = LocalFleet(root, home, server, human, settings, slots)
                with _running(fleet, repo, port):
                    yield fleet
        finally:
            if fresh and (fleet is None or fleet.run_id is None):
                _remove_made(home, made)


@contextmanager
def _running(fleet: LocalFleet, repo: Path, flower: int | None) -> Iterator[None]:
    """The fleet's workers (and Flower) on its Redis, after what a killed run left is settled;
    stopped after, and the run (if one was sent) wound up."""
    _settle_killed(fleet.settings, repo, fleet.human)
    started = time.time()
    try:
        fleet.workdir.mkdir(mode=0o700, exist_ok=True)
        fleet.start_workers(repo)
        if flower is not None:
            fleet.start_flower(flower)
        yield
    finally:
        fleet.stop()
        if fleet.run_id is not None:
            why = "its sage-submit --local stopped before the run ended"
            with suppress(Exception):  # the Redis may be what died
                settle(fleet.settings, str(repo), why)
            _keep_used_worktrees(fleet.workdir, started)


def _remove_made(home: Path, made: list[Path]) -> None:
    """Remove ``home`` (made by this command, which ran nothing there), then the folders
    above it that it made, if empty."""
    with suppress(OSError):
        if remove_unused(home):
            for folder in reversed(made):
                folder.rmdir()


@contextmanager
def local_reader(settings: Settings, repo: Path) -> Iterator[Settings]:
    """``settings`` pointed at ``repo``'s private Redis, started (no workers) while it is read.

    Raises :class:`UnknownRun` (exit 2) when the repository has no local data.
    """
    home = local_home(settings.workdir, repo)
    unknown = UnknownRun(f"no --local run of {repo} is known (no data in {home})")
    if not (home / "redis").is_dir():
        raise unknown
    with terminate_as_interrupt(), ExitStack() as stack:
        try:
            server = stack.enter_context(private_redis(home))
        except FileNotFoundError:
            # the folder of a --local run that submitted nothing, removed meanwhile
            raise unknown from None
        yield local_settings(settings, server)


def local_hint(settings: Settings, run_id: str | None, repo: str | None) -> str | None:
    """What to add when a run the broker does not know is a ``--local`` run, else None.

    Reads only the lists of runs kept beside each repository's local data
    (no Redis is started): ``run_id``'s repository, or, without a run id,
    whether ``repo`` (default: the current directory) has local runs.
    """
    ttl = settings.result_expires
    if run_id:
        for home in homes(settings.workdir):
            if run_id in local_runs(home, ttl):
                path = repo_of(home)
                return f"it is a --local run of {path}: add --local --repo {shlex.quote(path)}"
        return None
    # GitPython is loaded only when a run id does not settle it
    from sage_tasks import gitops

    try:
        root = gitops.repo_root(Path(repo or "."))
    except SageError:
        return None
    if local_runs(local_home(settings.workdir, root), ttl):
        return f"{root} has --local runs: add --local"
    return None
