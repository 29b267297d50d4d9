"""What ``sage-submit`` shows and asks about a run's liveness.

- where each running ticket runs and how old its heartbeat is (progress);
- a warning, once and again every few minutes, when no worker consumes the
  run's commit queue or the tickets queue, naming the queue and the command
  that starts one (a run never waits in silence);
- ``sage-submit cancel`` and Ctrl-C during ``--wait`` (cancel the run, or
  only stop watching it).
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console

from sage_tasks.config import Settings
from sage_tasks.errors import UnknownRun
from sage_tasks.store import liveness
from sage_tasks.store.runstate import FINAL_PHASES, RunStatus, RunStore

#: the first look for consumers, after the run was sent (seconds)
FIRST_LOOK_S = 5.0
#: how often to look again
LOOK_EVERY_S = 30.0
#: a missing consumer is warned about again after this long
WARN_AGAIN_S = 180.0


def start_hint(queue: str, commit_queue: str) -> str:
    """The command that starts a consumer of ``queue``."""
    if queue == commit_queue:
        extra = "" if queue == "commit" else f" --commit-queue {queue}"
        return f"sage-worker commit --repo PATH{extra}"
    return "sage-worker tickets"


class ConsumerWatch:
    """Warns on ``console`` while a queue the run needs has no consumer (a background thread)."""

    def __init__(self, settings: Settings, console: Console, *, commit_queue: str):
        self.settings = settings
        self.console = console
        self.queues = [commit_queue, settings.ticket_queue]
        self.commit_queue = commit_queue
        self.warned: dict[str, float] = {}
        self._stop = threading.Event()
        self._app: Any = None

    def look(self) -> None:
        """Ask once; warn for each queue nobody consumes (again only after a while)."""
        from sage_tasks.app.celery_app import make_app
        from sage_tasks.cli.check import queue_consumers

        if self._app is None:
            self._app = make_app(self.settings)
        try:
            found = queue_consumers(self._app, timeout=2.0)
        except Exception:  # the broker's own trouble is reported by the follower
            return
        now = time.monotonic()
        for queue in self.queues:
            if found.get(queue):
                self.warned.pop(queue, None)
                continue
            last = self.warned.get(queue)
            if last is not None and now - last < WARN_AGAIN_S:
                continue
            self.warned[queue] = now
            self.console.print(
                f"warning: no worker consumes queue '{queue}': the run waits until one does "
                f"(start one: {start_hint(queue, self.commit_queue)})",
                style="yellow",
                markup=False,
                highlight=False,
            )

    def _run(self) -> None:
        wait = FIRST_LOOK_S
        try:
            while not self._stop.wait(wait):
                self.look()
                wait = LOOK_EVERY_S
        finally:
            if self._app is not None:
                self._app.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self._run, name="consumer-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()


def who() -> str:
    """Names who cancels: ``user@host``."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "someone"
    return f"{user}@{socket.gethostname()}"


def cancel_run(
    store: RunStore, run_id: str | None, settings: Settings, console: Console
) -> tuple[str, int]:
    """Cancel a run (default: the latest) and wait for its running commands to stop.

    Returns the run id and how many tickets still look running (their hosts
    did not answer within the heartbeat timeout: they stop when they come back).
    """
    rid = run_id or store.latest()
    if rid is None:
        raise UnknownRun("no run is known to the broker")
    info = store.get(rid)
    if info is None:
        raise UnknownRun(f"unknown run {rid!r}")
    if info.status not in (RunStatus.SUBMITTED, RunStatus.RUNNING):
        console.print(f"run {rid} already ended: {info.status}", highlight=False)
        return rid, 0
    liveness.cancel(store, rid, info.repo, by=who())
    console.print(f"run {rid}: cancelled; stopping its running commands", highlight=False)
    deadline = time.monotonic() + settings.heartbeat_timeout
    left = _still_running(store, rid)
    while left and time.monotonic() < deadline:
        time.sleep(min(0.5, settings.heartbeat_interval))
        left = _still_running(store, rid)
    if left:
        console.print(
            f"run {rid}: {len(left)} ticket(s) still marked running ({', '.join(left[:6])}): "
            "their hosts do not answer; their commands stop when they come back",
            highlight=False,
        )
    console.print(
        f"run {rid} CANCELLED; its branch {info.branch} keeps what was committed "
        f"(submit again with --branch {info.branch} to resume)",
        highlight=False,
    )
    return rid, len(left)


def _still_running(store: RunStore, run_id: str) -> list[str]:
    running = store.running(run_id)
    records = store.tickets(run_id, running)
    return [t for t in running if records[t].get("state") not in FINAL_PHASES]


def interactive(console: Console) -> bool:
    """True when a person can answer a question on this terminal."""
    return sys.stdin.isatty() and console.is_terminal


def ask_cancel(console: Console, run_id: str) -> bool:
    """After Ctrl-C during ``--wait``: True to cancel the run, False to only stop watching.

    Without a terminal to ask on, only stop watching.
    """
    if not interactive(console):
        return False
    console.print()
    try:
        answer = click.prompt(
            f"cancel run {run_id} (c), or only stop watching it (w)?",
            type=click.Choice(["c", "w"]),
            default="w",
            err=console.stderr,
        )
    except (click.Abort, KeyboardInterrupt, EOFError):
        return False
    return bool(answer == "c")
