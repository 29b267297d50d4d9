"""What a worker does with one ticket: run its command, capture its patch, commit it.

Built on the Redis layer (``store``) and the git layer (``gitops``); knows no Celery canvas.
"""
