"""The Celery tasks: thin wrappers that handle retries and call the logic elsewhere.

``sage.run_ticket`` runs on the ``tickets`` queue; ``sage.commit_ticket``,
``sage.batch_done`` and ``sage.prepare_run`` on the repository's commit queue.
Expected transient failures (a busy lock, a branch that moved, a dependency
not yet visible, Redis or git hiccups) retry with exponential backoff and
jitter; after the last retry the ticket is DEFERRED with the reason, so an
infrastructure fault never stalls a run.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import redis
from celery import Celery, Task

from sage_tasks.dispatch import eager, producer
from sage_tasks.dispatch.names import TASK_BATCH_DONE, TASK_COMMIT, TASK_PREPARE, TASK_RUN
from sage_tasks.errors import GitError, RepositoryRefused, Retryable, SageError
from sage_tasks.store.runstate import RunStatus
from sage_tasks.work import committer, ticket_runner
from sage_tasks.work.runtime import Runtime, app_runtime

log = logging.getLogger(__name__)

#: transient errors are retried this often before the ticket is given up on
MAX_INFRA_RETRIES = 8
#: a busy lock or a moved branch is normal on the commit queue: retry for long
MAX_COMMIT_RETRIES = 200


def backoff(retries: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter (never exactly zero)."""
    return random.uniform(base / 2, min(cap, base * 2**retries))


def register_tasks(app: Celery) -> None:
    """Register sage-tasks' tasks on ``app``."""

    @app.task(
        shared=False,  # each app keeps its own tasks: they close over its runtime
        name=TASK_RUN,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
    )
    def run_ticket(self: Task[Any, Any], run_id: str, ticket_id: str) -> dict[str, Any]:
        return _run_ticket(app, self, run_id, ticket_id)

    @app.task(shared=False, name=TASK_COMMIT, bind=True, acks_late=True, reject_on_worker_lost=True)
    def commit_ticket(
        self: Task[Any, Any], result: Any, run_id: str, ticket_id: str
    ) -> dict[str, Any]:
        try:
            return _commit_ticket(app, self, result, run_id, ticket_id)
        except Retryable as exc:
            if self.request.retries >= MAX_COMMIT_RETRIES:
                raise
            raise self.retry(
                exc=exc,
                countdown=backoff(self.request.retries, base=0.2, cap=10),
                max_retries=MAX_COMMIT_RETRIES,
            ) from exc
        except RepositoryRefused as exc:
            log.error("%s", exc)
            raise

    @app.task(
        shared=False, name=TASK_BATCH_DONE, bind=True, acks_late=True, reject_on_worker_lost=True
    )
    def batch_done(self: Task[Any, Any], run_id: str, index: int) -> bool:
        return producer.finish_batch(app, app_runtime(app), run_id, int(index))

    @app.task(
        shared=False, name=TASK_PREPARE, bind=True, acks_late=True, reject_on_worker_lost=True
    )
    def prepare_run(self: Task[Any, Any], run_id: str) -> bool:
        rt = app_runtime(app)
        try:
            prepared = committer.prepare_run(rt, run_id)
        except RepositoryRefused as exc:
            log.error("%s", exc)
            _refuse_run(rt, run_id, exc, self.request.hostname)
            raise
        info = rt.store.get(run_id)
        if info is not None and eager.is_eager(info) and rt.serves(info.repo):
            # idempotent: a redelivery after a death mid-start sends what that start claimed
            eager.start(app, rt, run_id)
        elif prepared:
            producer.advance(app, rt, run_id, 0)
        return prepared


#: what a ticket's task retries with backoff: the infrastructure, not the ticket
_INFRA_ERRORS = (
    Retryable,
    GitError,
    OSError,
    ConnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def _run_ticket(app: Celery, task: Task[Any, Any], run_id: str, ticket_id: str) -> dict[str, Any]:
    """``sage.run_ticket``: the ticket's outcome as wire JSON (infrastructure errors retried)."""
    rt = app_runtime(app)
    if isinstance(task.request.hostname, str) and task.request.hostname:
        rt.hostname = task.request.hostname
    try:
        return ticket_runner.run_ticket(rt, run_id, ticket_id).to_json()
    except _INFRA_ERRORS as exc:
        return _retry_or_give_up(task, exc, ticket_id)
    except SageError as exc:
        log.error("%s", exc)
        return ticket_runner.failed(ticket_id, str(exc)).to_json()


def _commit_ticket(
    app: Celery, task: Task[Any, Any], result: Any, run_id: str, ticket_id: str
) -> dict[str, Any]:
    """``sage.commit_ticket``: commit, then run again on a conflict or release what waits."""
    rt = app_runtime(app)
    done = committer.commit_ticket(rt, result, run_id, ticket_id)
    info = rt.store.get(run_id)
    if done.get("state") == committer.RERUN and info is not None:
        rt.inject_once("after-rerun", f"{run_id}/{ticket_id}")
        # in this task's place (its chord's header, in level mode): run, commit, again
        raise task.replace(producer.ticket_chain(app, run_id, ticket_id, info.commit_queue))
    if info is not None and eager.is_eager(info):
        # again on a redelivery: what a dead delivery claimed is sent now
        eager.release(app, rt, run_id, ticket_id)
    return done


def _refuse_run(rt: Runtime, run_id: str, exc: Exception, node: object) -> None:
    """End a run this commit worker refuses to start, in its own words: ``--wait`` exits 3.

    Left alone, the run would wait forever, its reason only in this worker's log.
    """
    info = rt.store.get(run_id) if isinstance(run_id, str) else None
    if info is None or info.status not in (RunStatus.SUBMITTED, RunStatus.RUNNING):
        return
    name = node if isinstance(node, str) and node else rt.hostname
    error = f"commit worker {name} refused the run: {exc}"
    rt.store.finish(run_id, info.repo, status=RunStatus.FAILED, error=error)


def _retry_or_give_up(task: Task[Any, Any], exc: Exception, ticket_id: str) -> dict[str, Any]:
    retries = task.request.retries
    if retries < MAX_INFRA_RETRIES:
        log.warning("ticket %s: %s; retry %d", ticket_id, exc, retries + 1)
        raise task.retry(exc=exc, countdown=backoff(retries), max_retries=MAX_INFRA_RETRIES)
    reason = f"infrastructure error after {retries} retries: {exc}"
    return ticket_runner.failed(ticket_id, reason).to_json()
