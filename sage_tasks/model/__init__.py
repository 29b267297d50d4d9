"""The types that cross process boundaries: a ticket's outcome and a run's options.

Pure (no Redis, git or Celery), so the store, the workers, the dispatch and
the views share one spelling of each field, with one default.
"""
