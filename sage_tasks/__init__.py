"""sage-tasks: run a git repository's ticket graph on a fleet of Celery workers.

``celery -A sage_tasks ...`` (inspect, events, status, purge, worker) finds the
package's Celery app as ``sage_tasks.celery``, built from the ``SAGE_*``
settings when first asked for; importing the package connects to nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

__version__ = "0.1.0"


def __getattr__(name: str) -> Celery:
    """``sage_tasks.celery``: the app, made on first use (``sage_tasks.app`` is its layer)."""
    if name == "celery":
        # deferred: importing the package must not load Celery or build an app
        from sage_tasks.app.celery_app import default_app

        return default_app()
    raise AttributeError(f"module 'sage_tasks' has no attribute {name!r}")
