"""One error root for sage-tasks, with a subtree per layer.

Every error carries the ticket ids and paths it is about, so the command line
can print one clear sentence and pick the exit code without a traceback.
``Retryable`` marks the errors a task should retry with backoff (a busy lock,
a branch that moved under a compare-and-swap); everything else is final.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class SageError(Exception):
    """Root of every error sage-tasks raises on purpose."""

    #: exit code of ``sage-submit`` when this error ends it
    exit_code: int = 3

    def __init__(self, message: str, *, tickets: Sequence[str] = (), path: str | None = None):
        super().__init__(message)
        self.message = message
        self.tickets = tuple(tickets)
        self.path = path

    def __str__(self) -> str:
        return self.message


class Retryable(SageError):
    """A transient condition: the task that met it retries with backoff."""


# --- input: the index, arguments, configuration (exit 2) -------------------


class InputError(SageError):
    """Bad input from the user: nothing is submitted or written."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a ticket index, naming what it is about."""

    message: str
    tickets: tuple[str, ...] = field(default_factory=tuple)
    path: str | None = None

    def __str__(self) -> str:
        return self.message


class IndexValidationError(InputError):
    """The ticket index is malformed or its graph is invalid; lists every problem."""

    def __init__(self, problems: Sequence[Problem], *, path: str | None = None):
        self.problems = tuple(problems)
        tickets = sorted({t for p in self.problems for t in p.tickets})
        first = self.problems[0].message if self.problems else "invalid ticket index"
        super().__init__(first, tickets=tickets, path=path)

    def lines(self) -> list[str]:
        """One line per problem, prefixed with the index path when known."""
        prefix = f"{self.path}: " if self.path else ""
        return [f"{prefix}{p.message}" for p in self.problems]

    def __str__(self) -> str:
        return "; ".join(self.lines())


class ConfigError(InputError):
    """A bad option, environment variable or argument."""


# --- git ------------------------------------------------------------------


class GitError(SageError):
    """A git operation failed."""


class RepositoryError(GitError):
    """A repository or ref is missing, unreadable or not allowed."""

    exit_code = 2


class RefMoved(Retryable, GitError):
    """The branch moved between reading its head and the compare-and-swap update."""


class PatchRejected(GitError):
    """A patch is unsafe (writes outside the repository, into .git, via symlinks) or too big."""


class RepositoryRefused(SageError):
    """A commit task names a repository this commit worker was not started for."""


# --- redis / lock / run state ------------------------------------------------


class LockBusy(Retryable):
    """The repository's commit lock is held by another writer."""


class DependencyPending(Retryable):
    """A dependency has not been committed yet (only after a redelivery race)."""


class BrokerUnavailable(SageError):
    """The broker or result backend does not answer."""

    exit_code = 3


class RunLost(SageError):
    """A run's record or a batch's chord state is gone from Redis."""

    exit_code = 3


class UnknownRun(InputError):
    """No run with that id is known to the broker."""


# --- the local fleet (--local) ------------------------------------------------


class LocalError(SageError):
    """The embedded Redis or a local worker could not start or died."""

    exit_code = 3


class OutputError(SageError):
    """Standard output could not be written (a full disk, say); a closed pipe is not this."""

    exit_code = 3
