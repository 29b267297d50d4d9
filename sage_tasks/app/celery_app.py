"""The Celery application: JSON only, late acks, one reservation per process.

Every setting here answers a pitfall listed in the project notes: late acks
with requeue on worker loss (nothing lost when a pool process is killed),
prefetch 1, the visibility timeout set in all three places Celery and kombu
read it, results that outlive the longest run, and task events for Flower.
"""

from __future__ import annotations

import functools
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery, signals

from sage_tasks.app import compat, monitoring
from sage_tasks.config import Settings, load_settings
from sage_tasks.dispatch.names import TASK_RUN


def _ssl_options(url: str) -> dict[str, Any] | None:
    """``rediss://`` URLs without ``ssl_cert_reqs`` get certificate checks on by default."""
    if not url.startswith("rediss://") or "ssl_cert_reqs" in url:
        return None
    import ssl

    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def verified_url(url: str) -> str:
    """A ``rediss://`` URL that names no ``ssl_cert_reqs`` made to require a valid certificate.

    For programs that read the URL alone (Flower's own Celery app): kombu
    otherwise connects to such a URL without checking the certificate.
    """
    if not url.startswith("rediss://") or "ssl_cert_reqs" in url:
        return url
    parts = urlsplit(url)
    query = f"{parts.query}&ssl_cert_reqs=required" if parts.query else "ssl_cert_reqs=required"
    return urlunsplit(parts._replace(query=query))


def make_app(settings: Settings, *, tasks: bool = True) -> Celery:
    """A configured Celery app with sage-tasks' tasks registered on it.

    ``tasks=False``: an app that only sends messages (a task is sent by its
    name), without loading what the tasks run.
    """
    compat.install()
    monitoring.install()  # what Flower and the workers' logs show of each task
    app = Celery("sage_tasks", broker=settings.broker_url, backend=settings.backend_url)
    vt = int(settings.vt)
    transport = {
        "visibility_timeout": vt,
        # kombu restores a dead worker's unacknowledged messages on a periodic
        # scan (by default about every 100 s): scan often enough that recovery
        # takes the visibility timeout plus a few seconds
        "unacked_restore_interval": max(1, min(10, vt // 10)),
        "unacked_restore_throttle": 1,
        # a broker that vanishes without closing the connection (a cut link)
        # must not leave a worker blocked on a dead socket forever
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
    app.conf.update(
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # on SIGTERM, running tasks get this long to finish, then are requeued
        worker_soft_shutdown_timeout=30,
        worker_deduplicate_successful_tasks=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": vt},
        visibility_timeout=vt,
        result_expires=settings.result_expires,
        result_extended=True,
        task_track_started=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=settings.ticket_queue,
        task_routes={
            TASK_RUN: {"queue": settings.ticket_queue},
        },
        worker_hijack_root_logger=False,
        broker_channel_error_retry=True,
        redis_socket_keepalive=True,
        redis_backend_health_check_interval=10,
        redis_retry_on_timeout=True,
    )
    broker_ssl = _ssl_options(settings.broker_url)
    if broker_ssl:
        app.conf.broker_use_ssl = broker_ssl
    backend_ssl = _ssl_options(settings.backend_url)
    if backend_ssl:
        app.conf.redis_backend_use_ssl = backend_ssl
    app.sage_settings = settings  # type: ignore[attr-defined]
    if tasks:
        from sage_tasks.app.tasks import register_tasks

        register_tasks(app)
    return app


@functools.cache
def default_app() -> Celery:
    """The app Celery's own command line finds as ``celery -A sage_tasks``.

    Built on first use from the ``SAGE_*`` settings (nothing connects at
    import), once per process. A ``celery -A sage_tasks worker`` started on it
    behaves as ``sage-worker tickets``: it serves the ticket queue (Celery's
    default queue here) and clears a crashed worker's leftovers first. The
    commit queue is refused: only ``sage-worker commit --repo PATH`` knows
    which repository it may write to.
    """
    app = make_app(load_settings())

    def check_queues(sender: object = None, instance: Any = None, **_: Any) -> None:
        if instance is None or instance.app is not app:
            return
        settings: Settings = app.sage_settings
        # without -Q a worker consumes every queue the app knows (here: the ticket queue)
        queues = set(instance.app.amqp.queues.consume_from or instance.app.amqp.queues)
        if settings.commit_queue in queues:
            print(
                f"sage: error: queue '{settings.commit_queue}' is the commit queue; start its one "
                "worker with: sage-worker commit --repo PATH",
                file=sys.stderr,
            )
            raise SystemExit(2)
        if settings.ticket_queue in queues:
            from sage_tasks.gitops import prune_workdir

            settings.workdir.mkdir(parents=True, exist_ok=True)
            prune_workdir(settings.workdir, keep_idle=settings.keep_worktrees)

    signals.celeryd_after_setup.connect(check_queues, weak=False)
    return app
