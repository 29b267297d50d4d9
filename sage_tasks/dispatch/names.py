"""The names of sage-tasks' Celery tasks: what a message says it is for.

Kept apart from the app and the tasks so that the code which sends messages
(the producer, the eager release, the supervisor) and the code which labels
them (the monitoring signals) need neither: the app registers the tasks under
these names, nothing here imports Celery.
"""

from __future__ import annotations

#: run one ticket's command in a worktree (the ``tickets`` queue)
TASK_RUN = "sage.run_ticket"
#: commit one ticket's outcome (the repository's commit queue)
TASK_COMMIT = "sage.commit_ticket"
#: a level chord's barrier: send the next batch (the commit queue)
TASK_BATCH_DONE = "sage.batch_done"
#: prepare the run's branch and send its first batch (the commit queue)
TASK_PREPARE = "sage.prepare_run"
