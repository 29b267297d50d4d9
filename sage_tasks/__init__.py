"""sage-tasks: run a git repository's ticket graph on a fleet of Celery workers."""

__version__ = "0.1.0"
