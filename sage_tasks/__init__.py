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

#: the names Celery's ``-A`` option looks up on a package
_APP_NAMES = frozenset({"celery", "app"})


def __getattr__(name: str) -> Celery:
    """``sage_tasks.celery`` / ``sage_tasks.app``: the app, made on first use."""
    if name in _APP_NAMES:
        from sage_tasks.celery_app import default_app

        return default_app()
    raise AttributeError(f"module 'sage_tasks' has no attribute {name!r}")
