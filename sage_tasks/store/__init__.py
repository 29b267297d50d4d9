"""The Redis layer: key names, run records, the eager ready set, the commit lock, the connection.

Imports only the core, ``config`` and ``errors``: no Celery, no git.
"""
