"""A submission: the index read, checked and planned, then handed to the broker.

:func:`resolve` reads the ticket index from the target branch (or the base),
validates it and plans it; :func:`send` stores the run in Redis and asks the
repository's commit worker to prepare the branch and send the first batch.
Both the command line and ``--local`` go through here.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console

from sage_tasks.core.index import DEFAULT_INDEX_PATH, IndexDocument
from sage_tasks.core.links import warning_lines
from sage_tasks.core.plan import Plan, build_plan, eager_order
from sage_tasks.errors import ConfigError, IndexValidationError, Problem
from sage_tasks.model.run import RunOptions, Schedule

if TYPE_CHECKING:
    from sage_tasks.config import Settings
    from sage_tasks.store.runstate import TicketBlock

#: a blocked ticket's reason when the plan does not say (a plan stored before it did)
PLANNED_BLOCK = "depends on a DEFERRED ticket that is not retried"


def warn_links(doc: IndexDocument) -> None:
    """Unknown ids (and odd shapes) in informational links, on stderr: the run goes on."""
    if not doc.warnings:
        return
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in warning_lines(doc.warnings):
        err.print(f"sage: warning: {doc.source}: {line}", markup=False)


def new_run_id() -> str:
    """A short random run id (hex, safe in branch names and Redis keys)."""
    return uuid.uuid4().hex[:12]


@dataclass
class Submission:
    """Everything ``sage-submit`` resolved before it talks to the broker."""

    settings: Settings
    repo: Path
    repo_url: str
    index_path: str
    branch: str
    base: str
    run_id: str
    doc: IndexDocument
    plan: Plan
    allow_main: bool
    retry_deferred: bool
    parallel: Any
    schedule: Schedule = Schedule.LEVELS
    #: times a ticket whose patch conflicts is run again on the new head before DEFERRED
    conflict_retries: int = 0


@dataclass
class IndexSource:
    """The committed index a submission plans, read from the repository."""

    root: Path
    index_path: str
    run_id: str
    branch: str
    base: str
    data: bytes
    #: what was read, for messages: the branch, or the base and its commit
    where: str
    #: the file in the working copy is not the one read
    differs: bool


def read_source(
    *, repo: str, index: str | None, branch: str | None, base: str | None, allow_main: bool
) -> IndexSource:
    """The index committed on the branch (or the base), and where it is; exit 2 on bad input."""
    # GitPython is loaded by the commands that read a repository, not by status or report
    from sage_tasks import gitops

    root = gitops.repo_root(Path(repo))
    index_path = index or DEFAULT_INDEX_PATH
    if Path(index_path).is_absolute() or ".." in Path(index_path).parts:
        raise ConfigError(f"--index must be a path inside the repository: {index_path!r}")
    run_id = new_run_id()
    branch_name = branch or f"sage/run-{run_id}"
    if branch_name in gitops.PROTECTED_BRANCHES and not allow_main:
        raise ConfigError(f"refusing to write to branch '{branch_name}' without --allow-main")
    gitops.check_branch_name(branch_name)
    base_ref = base or "HEAD"
    base_sha = gitops.resolve_ref(root, base_ref)
    branch_sha = gitops.branch_head(root, branch_name)
    source_ref = branch_sha or base_sha
    data = gitops.read_index_at(root, source_ref, index_path)
    where = f"branch {branch_name}" if branch_sha else f"{base_ref} ({base_sha[:12]})"
    if data is None:
        raise IndexValidationError([Problem(f"no ticket index at {where}")], path=index_path)
    differs = gitops.working_copy_differs(root, source_ref, index_path, data)
    return IndexSource(root, index_path, run_id, branch_name, base_sha, data, where, differs)


class SourceReader(threading.Thread):
    """:func:`read_source` on a thread, so that git reads while the caller loads the rest.

    Most of that time is git's (a 100,000-ticket index is tens of megabytes
    to inflate and pipe), during which this thread does not hold the GIL.
    """

    def __init__(self, **options: Any):
        super().__init__(name="sage-read-index", daemon=True)
        self._options = options
        self._source: IndexSource | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._source = read_source(**self._options)
        except BaseException as exc:  # handed to the caller by ``source``
            self._error = exc

    def source(self) -> IndexSource:
        """The source once read; what reading it raised is raised here."""
        self.join()
        if self._error is not None:
            raise self._error
        assert self._source is not None
        return self._source


def resolve(
    *,
    settings: Settings,
    source: IndexSource,
    repo_url: str | None,
    parallel: Any,
    retry_deferred: bool,
    allow_main: bool,
    human: Console,
    estimate: bool = False,
) -> Submission:
    """Validate and plan the index ``source`` holds; exit 2 on bad input."""
    if source.differs:
        human.print(
            f"[yellow]warning:[/] {source.index_path} in the working copy differs from "
            f"{source.where}; the committed version is used",
            highlight=False,
        )
    doc = IndexDocument.loads(source.data, source=source.index_path)
    warn_links(doc)
    plan = build_plan(
        doc,
        parallel=parallel,
        retry_deferred=retry_deferred,
        has_executor=bool(settings.executor),
        schedules=estimate,
    )
    plan.links = doc.link_summary()
    return Submission(
        settings=settings,
        repo=source.root,
        repo_url=repo_url or str(source.root),
        index_path=source.index_path,
        branch=source.branch,
        base=source.base,
        run_id=source.run_id,
        doc=doc,
        plan=plan,
        allow_main=allow_main,
        retry_deferred=retry_deferred,
        parallel=parallel,
    )


def _dumps(value: Any) -> str:
    """Compact JSON by orjson; json for what orjson refuses (an integer past 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _dumps_each(values: Iterable[Any]) -> list[str]:
    """Each of ``values`` as compact JSON (see :func:`_dumps`)."""
    values = list(values)
    try:
        return [b.decode() for b in map(orjson.dumps, values)]
    except TypeError:
        return list(map(_dumps, values))


def ticket_blocks(sub: Submission) -> Iterator[TicketBlock]:
    """The planned tickets' first records in the run, a block of tickets at a time."""
    from sage_tasks.store.runstate import SCRIPT_CHUNK, TicketBlock

    plan, doc = sub.plan, sub.doc
    eager = sub.schedule == Schedule.EAGER
    rank = {t: n for n, t in enumerate(eager_order(doc, plan))} if eager else {}
    ids = list(chain.from_iterable(plan.batches))
    batch = list(chain.from_iterable(repeat(str(n), len(b)) for n, b in enumerate(plan.batches)))
    items, where = doc.raw["tickets"], doc.graph.index
    for start in range(0, len(ids), SCRIPT_CHUNK):
        chunk = ids[start : start + SCRIPT_CHUNK]
        # the ticket as submitted: its worker reads it here, not from the whole index;
        # the title too is in there: a value past 64 bytes would cost the ticket's hash
        # its compact encoding (see sage_tasks.store.runstate.APART)
        raw = map(items.__getitem__, map(where.__getitem__, chunk))
        yield TicketBlock(
            chunk,
            {
                "state": "PENDING",
                "ticket": _dumps_each(raw),
                "rank": [str(rank.get(t, 0)) for t in chunk] if eager else "0",
                "deps": _dumps_each(map(plan.deps.get, chunk, repeat(()))),
                "batch": batch[start : start + SCRIPT_CHUNK],
                "attempts": "0",
            },
        )
    if plan.blocked:
        reasons = plan.blocked_reasons
        yield TicketBlock(
            list(plan.blocked),
            {
                "state": "BLOCKED",
                "reason": [reasons.get(t, PLANNED_BLOCK) for t in plan.blocked],
                "ended": str(time.time()),
                "attempts": "0",
            },
        )


def send(sub: Submission, *, repo_identity: str | None = None) -> None:
    """Store the run in Redis and hand it to the repository's commit worker."""
    # Celery and redis-py are loaded only when a run is sent: a dry run answers without them
    from sage_tasks.store.broker import connect
    from sage_tasks.store.runstate import RunInfo, RunStore

    settings = sub.settings
    store = RunStore(connect(settings.backend_url), ttl=settings.result_expires)
    if settings.broker_url != settings.backend_url:
        connect(settings.broker_url)
    # Celery loads while the run is stored, most of which is Redis's work
    loading = threading.Thread(target=_load_sender, name="sage-load-celery", daemon=True)
    loading.start()
    info = RunInfo(
        run_id=sub.run_id,
        repo=repo_identity or sub.repo_url,
        repo_url=sub.repo_url,
        branch=sub.branch,
        base=sub.base,
        index_path=sub.index_path,
        commit_queue=settings.commit_queue,
        executor=settings.executor,
        ticket_timeout=settings.ticket_timeout,
        batches=len(sub.plan.batches),
        tickets=sub.plan.tickets,
        to_run=sub.plan.to_run,
        created=time.time(),
        submitted_by=socket.gethostname(),
        extra=RunOptions(
            planned=sub.plan.to_run + len(sub.plan.blocked),
            schedule=sub.schedule,
            allow_main=sub.allow_main,
            retry_deferred=sub.retry_deferred,
            cap=sub.plan.parallel or 0,
            overlaps=bool(sub.plan.overlaps),
            conflict_retries=sub.conflict_retries,
        ).to_json(),
    )
    store.create(info, _dumps(sub.plan.to_json()), ticket_blocks(sub))
    loading.join()
    from sage_tasks.app.celery_app import make_app
    from sage_tasks.dispatch import producer

    producer.request_start(make_app(settings, tasks=False), info)  # sent by the task's name


def _load_sender() -> None:
    """Import what sends the run's first message (an error shows when the caller imports it)."""
    with contextlib.suppress(Exception):
        import sage_tasks.app.celery_app
        import sage_tasks.dispatch.producer  # noqa: F401
