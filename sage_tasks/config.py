"""Configuration in one place: every ``SAGE_*`` setting, read at the entry point.

Built once by ``sage-submit`` or ``sage-worker`` (command-line options win over
the environment) and passed down; no module keeps a global copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_TICKET_TIMEOUT = 3600
#: slack added to the ticket timeout so a running ticket is never handed out twice
VISIBILITY_SLACK = 600


def default_workdir() -> Path:
    """A folder under the user's cache directory (``XDG_CACHE_HOME`` honoured)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sage-tasks"


class Settings(BaseSettings):
    """Everything sage-tasks reads from the environment (prefix ``SAGE_``)."""

    model_config = SettingsConfigDict(env_prefix="SAGE_", extra="ignore")

    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None
    ticket_timeout: float = Field(default=DEFAULT_TICKET_TIMEOUT, gt=0)
    visibility_timeout: float | None = Field(default=None, gt=0)
    max_patch_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_output_bytes: int = Field(default=64 * 1024, gt=0)
    commit_queue: str = "commit"
    ticket_queue: str = "tickets"
    workdir: Path = Field(default_factory=default_workdir)
    #: a ticket worker that starts takes over the worktrees a stopped one put aside in
    #: ``workdir`` (reset in full before their first ticket) instead of removing them
    keep_worktrees: bool = False
    executor: str | None = None
    #: how long a lease on the commit lock lasts; extended while a commit runs
    lock_lease: float = Field(default=30.0, gt=0)
    #: how often a running ticket refreshes its heartbeat
    heartbeat_interval: float = Field(default=5.0, gt=0)
    #: a running ticket whose heartbeat is older than this is taken from its attempt and
    #: sent again, whatever the ticket and visibility timeouts (a dead host costs seconds)
    heartbeat_timeout: float = Field(default=30.0, gt=0)
    #: how often the supervisor looks for lost tickets and stalled batches
    supervisor_interval: float = Field(default=5.0, gt=0)
    #: how long results, chord state and run records are kept (default: a week, or
    #: 20 visibility timeouts when that is longer); must outlive the longest run
    result_ttl: int | None = Field(default=None, gt=0)
    #: a test-only fault injection point name (never set in production)
    fault: str | None = None

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.visibility_timeout is None:
            self.visibility_timeout = self.ticket_timeout + VISIBILITY_SLACK
        return self

    @property
    def backend_url(self) -> str:
        """The result backend: ``SAGE_RESULT_BACKEND``, or the broker."""
        return self.result_backend or self.broker_url

    @property
    def vt(self) -> float:
        """The visibility timeout in seconds (always set after validation)."""
        assert self.visibility_timeout is not None
        return self.visibility_timeout

    @property
    def result_expires(self) -> int:
        """Results and chord state outlive the longest run: a week, or more if tickets are long."""
        if self.result_ttl is not None:
            return self.result_ttl
        return int(max(7 * 24 * 3600, 20 * self.vt))


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with non-None ``overrides`` on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
