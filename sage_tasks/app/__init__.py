"""The Celery application: its settings, the tasks registered on it, its signal handlers."""
