"""A ticket's attempt on a worker while its command runs: heartbeats, and the fence.

See :mod:`sage_tasks.store.liveness` for the attempt numbers: a beat that is
refused (another attempt took the ticket over, the run was cancelled, the
ticket is final) stops the attempt and kills its command's process group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import redis

from sage_tasks.store.liveness import Beat, beat

log = logging.getLogger(__name__)


class Attempt:
    """One attempt of a ticket while its command runs: heartbeats, and the fence.

    Use as a context manager around the command, passing :meth:`started` as
    the command's ``on_start``. :attr:`ended` says why the attempt was
    stopped (None while it may go on).
    """

    def __init__(
        self,
        *,
        url: str,
        run_id: str,
        ticket_id: str,
        attempt_no: int,
        interval: float,
    ):
        self.run_id = run_id
        self.ticket_id = ticket_id
        self.attempt_no = attempt_no
        self.interval = interval
        self.url = url
        self.ended: Beat | None = None
        self._pgid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def started(self, pgid: int) -> None:
        """The command runs as process group ``pgid`` (killed at once if already fenced)."""
        with self._lock:
            self._pgid = pgid
            stopped = self.ended is not None
        if stopped:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the command's whole process group (nothing of it may outlive the attempt)."""
        with self._lock:
            pgid = self._pgid
        if pgid > 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    def _client(self) -> redis.Redis:
        # short timeouts of its own: a beat across a cut link fails within an interval, and
        # the first beat after the link is back is on a fresh connection, not a stalled one
        wait = max(1.0, self.interval)
        return redis.Redis.from_url(
            self.url, socket_timeout=wait, socket_connect_timeout=wait, socket_keepalive=True
        )

    def _run(self) -> None:
        client = self._client()
        try:
            while not self._stop.wait(self.interval):
                try:
                    found = beat(client, self.run_id, self.ticket_id, self.attempt_no)
                except Exception as exc:  # the supervisor tolerates missed beats
                    log.warning("heartbeat of %s failed: %s", self.ticket_id, exc)
                    client.close()
                    client = self._client()
                    continue
                if found != Beat.OK:
                    self.fence(found)
                    return
        finally:
            client.close()

    def fence(self, why: Beat) -> None:
        """Stop this attempt: remember why and kill its command."""
        with self._lock:
            self.ended = why
        log.warning(
            "ticket %s of run %s: attempt %d stopped (%s); killing its command",
            self.ticket_id,
            self.run_id,
            self.attempt_no,
            why.value,
        )
        self.kill()

    def __enter__(self) -> Attempt:
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.ticket_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@contextlib.contextmanager
def dies_with_runner(attempt: Attempt) -> Iterator[None]:
    """While the command runs, a SIGTERM of this process kills the command's group first.

    Celery terminates a running task's pool process with SIGTERM when the
    worker loses its broker connection (``worker_cancel_long_running_tasks_on_connection_loss``);
    the command runs in a session of its own and would outlive it, unwatched.
    Only the main thread can set a handler; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # set outside Python: treated as the default
        previous = signal.SIG_DFL
    if previous is signal.SIG_IGN:
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        attempt.kill()
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_term:
            signal.signal(signal.SIGTERM, previous)
