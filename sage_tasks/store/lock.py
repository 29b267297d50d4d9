"""The commit lock on a repository: a Redis lease, kept alive while it is held.

A redis-py ``Lock`` with a timeout (so a holder that dies frees it after one
lease) and a daemon thread that renews the lease every third of it while the
holder works. The lock only keeps writers from getting in each other's way: a
lease can still lapse (a long pause, a Redis restart), so the commit path's
compare-and-swap on the branch ref is what makes two writers safe. ``lost``
tells the holder that its lease may have lapsed.
"""

from __future__ import annotations

import logging
import threading
import weakref
from types import TracebackType

import redis
from redis.exceptions import LockNotOwnedError, RedisError
from redis.lock import Lock

from sage_tasks.errors import LockBusy

log = logging.getLogger(__name__)

DEFAULT_LEASE = 30.0
DEFAULT_BLOCKING_TIMEOUT = 5.0


class _KeepAlive(threading.Thread):
    """Renews a held lease every ``interval`` seconds until stopped.

    It holds no reference to its :class:`CommitLock`, so a lock dropped
    without ``release`` is collected, stops this thread, and its lease runs out.
    """

    def __init__(self, lock: Lock, interval: float) -> None:
        super().__init__(name=f"commit-lock-keepalive:{lock.name}", daemon=True)
        self.lock = lock
        self.interval = interval
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.lock.reacquire()
            except LockNotOwnedError:
                if not self.stopped.is_set():
                    self.lost = True
                    log.warning("commit lock %s: lease lost (expired or taken)", self.lock.name)
                return
            except Exception:
                if self.stopped.is_set():
                    return
                # Keep trying: if the key still holds our token when Redis
                # answers again, nobody else can have taken the lock meanwhile.
                self.lost = True
                log.warning("commit lock %s: cannot renew the lease", self.lock.name, exc_info=True)


class CommitLock:
    """A repository's commit lock: one writer at a time, lease renewed while held.

    ``name`` is the Redis key (the caller names it). ``lease`` is how long the
    lock outlives a holder that stops renewing it (a dead process).
    ``blocking_timeout`` is how long ``with lock:`` waits to acquire it. Use
    :meth:`acquire` / :meth:`release`, or the object as a context manager; one
    object is one holder and is not shared between holders.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        *,
        lease: float = DEFAULT_LEASE,
        blocking_timeout: float = DEFAULT_BLOCKING_TIMEOUT,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease}")
        self.name = name
        self.lease = lease
        self.blocking_timeout = blocking_timeout
        # thread_local=False: the keep-alive thread renews with the token the
        # acquiring thread got.
        self._lock: Lock = client.lock(name, timeout=lease, thread_local=False)
        self._keepalive: _KeepAlive | None = None
        self._stop_on_collect: weakref.finalize[[], CommitLock] | None = None
        self._released_lost = False

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`."""
        return self._keepalive is not None

    @property
    def lost(self) -> bool:
        """True when the lease may have lapsed: a renewal or the release found it gone.

        Set when the key no longer holds this holder's token or Redis could not
        be reached to renew it; stays set until the next :meth:`acquire`.
        """
        keepalive_lost = self._keepalive is not None and self._keepalive.lost
        return self._released_lost or keepalive_lost

    def acquire(self, blocking_timeout: float) -> None:
        """Take the lock, waiting at most ``blocking_timeout`` seconds (0: try once).

        Raises :class:`~sage_tasks.errors.LockBusy` (retryable) when another
        holder keeps it, and redis-py's ``ConnectionError`` when Redis does not
        answer.
        """
        if self.held:
            raise RuntimeError(f"commit lock {self.name} is already held by this holder")
        if not self._lock.acquire(blocking=True, blocking_timeout=blocking_timeout):
            raise LockBusy(
                f"commit lock {self.name} is held by another writer (waited {blocking_timeout:g} s)"
            )
        self._released_lost = False
        keepalive = _KeepAlive(self._lock, self.lease / 3)
        self._keepalive = keepalive
        self._stop_on_collect = weakref.finalize(self, keepalive.stopped.set)
        keepalive.start()

    def release(self) -> None:
        """Stop renewing and free the lock; a no-op when not held.

        A lease that already expired (or was taken by another holder) is left
        alone and marks the lock :attr:`lost`; an unreachable Redis is logged,
        not raised, since the lease then runs out by itself.
        """
        keepalive = self._keepalive
        if keepalive is None:
            return
        if self._stop_on_collect is not None:
            self._stop_on_collect()
            self._stop_on_collect = None
        keepalive.join(self.lease)
        self._released_lost = keepalive.lost
        self._keepalive = None
        try:
            self._lock.release()
        except LockNotOwnedError:
            self._released_lost = True
            log.warning("commit lock %s: lease had expired before release", self.name)
        except RedisError:
            log.warning(
                "commit lock %s: cannot release, it expires by itself", self.name, exc_info=True
            )

    def __enter__(self) -> CommitLock:
        """Acquire (waiting ``blocking_timeout``) unless already held."""
        if not self.held:
            self.acquire(self.blocking_timeout)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = ("held" if self.held else "free") + (" lost" if self.lost else "")
        return f"<CommitLock {self.name!r} lease={self.lease:g}s {state}>"
