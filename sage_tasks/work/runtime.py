"""What a task needs at hand in a worker process: settings, Redis, the run store.

One :class:`Runtime` hangs off the Celery app. Its Redis client is made
lazily in each process (prefork children must not share their parent's
sockets), and a commit worker records here which repository it serves.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from sage_tasks.config import Settings
from sage_tasks.errors import RepositoryRefused
from sage_tasks.gitops import Repository
from sage_tasks.store import keys
from sage_tasks.store.runstate import RunStore

if TYPE_CHECKING:  # only named in a signature: this layer sends no Celery message
    from celery import Celery


@dataclass
class Runtime:
    """Per-process context for the tasks of one Celery app."""

    settings: Settings
    hostname: str = field(default_factory=socket.gethostname)
    #: the repository a commit worker was started for (None on ticket workers)
    repo_path: Path | None = None
    #: identities (resolved path, URLs) under which that repository may be named
    repo_identities: frozenset[str] = frozenset()
    #: a test-only hook point name (``SAGE_FAULT``)
    fault: str | None = None
    _client: redis.Redis | None = field(default=None, repr=False)
    _pid: int = field(default=0, repr=False)
    _repository: Repository | None = field(default=None, repr=False)
    _repository_pid: int = field(default=0, repr=False)

    @property
    def redis(self) -> redis.Redis:
        """A Redis client for the result backend, made once per process."""
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self.settings.backend_url,
                socket_connect_timeout=5,
                socket_timeout=30,
                socket_keepalive=True,
                health_check_interval=10,
                retry_on_timeout=True,
            )
            self._pid = os.getpid()
        return self._client

    @property
    def store(self) -> RunStore:
        return RunStore(self.redis, ttl=self.settings.result_expires)

    @property
    def repository(self) -> Repository:
        """The served repository, with its long-lived git helpers, opened once per process."""
        if self.repo_path is None:
            raise RuntimeError("this worker serves no repository")
        if self._repository is None or self._repository_pid != os.getpid():
            self._repository = Repository(self.repo_path)
            self._repository_pid = os.getpid()
        return self._repository

    def serve(self, repo_path: Path, urls: tuple[str, ...] = ()) -> None:
        """Make this process the commit worker of ``repo_path`` (also known by ``urls``)."""
        resolved = repo_path.resolve()
        self.repo_path = resolved
        self.repo_identities = frozenset({str(resolved), *urls})

    def serves(self, repo: str) -> bool:
        """True when a task naming ``repo`` is for this commit worker's repository."""
        if not self.repo_identities:
            return False
        if repo in self.repo_identities:
            return True
        try:
            return str(Path(repo).resolve()) in self.repo_identities
        except (OSError, RuntimeError):
            return False

    def check_serves(self, repo: str, what: str, *, tickets: Sequence[str] = ()) -> None:
        """Raise :class:`RepositoryRefused` unless this commit worker serves ``repo``.

        ``what`` names the message's subject (``run <id>``, ``ticket <id> of run <id>``):
        a commit worker writes only to the repository it was started for.
        """
        if not self.serves(repo):
            raise RepositoryRefused(
                f"refused: {what} names repository {repo!r}, "
                f"this commit worker serves {sorted(self.repo_identities)}",
                tickets=tickets,
            )

    def inject(self, point: str) -> None:
        """A fault-injection point: with ``SAGE_FAULT=<point>`` the process dies here."""
        if self.fault == point:
            os._exit(137)

    def inject_once(self, point: str, token: str) -> None:
        """Like :meth:`inject`, but the process dies there only the first time for ``token``."""
        if self.fault == point and self.redis.set(
            keys.fault_once(point, token), 1, nx=True, ex=3600
        ):
            os._exit(137)


def app_runtime(app: Celery) -> Runtime:
    """The runtime of ``app``'s tasks in this process, made from the app's settings on first use."""
    rt: Runtime | None = getattr(app, "sage_runtime", None)
    if rt is None:
        rt = Runtime(app.sage_settings)  # type: ignore[attr-defined]
        rt.fault = rt.settings.fault
        app.sage_runtime = rt  # type: ignore[attr-defined]
    return rt
