"""The prerequisite check: is everything in place for a run?

Answers what the seed's validation did (TASK-027..029) for a fleet: the
broker answers, workers listen on the right queues (exactly one commit
worker per repository, at least one ticket worker), the repository and its
URL are readable, git is recent enough, and how parallel the index is.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sage_tasks import gitops
from sage_tasks.app.celery_app import make_app
from sage_tasks.config import Settings
from sage_tasks.core.index import DEFAULT_INDEX_PATH, IndexDocument
from sage_tasks.core.links import warning_lines
from sage_tasks.core.plan import build_plan
from sage_tasks.core.urls import redact_url
from sage_tasks.errors import SageError
from sage_tasks.store.broker import connect

#: the compare-and-swap ref update uses ``update-ref --stdin`` transactions (git 2.28)
MIN_GIT = (2, 28)


@dataclass
class Finding:
    """One line of the check: what was looked at, whether it is fine, and why."""

    what: str
    ok: bool
    detail: str
    info: bool = False  # informational (never makes the check fail)
    warning: bool = False  # worth fixing, but a run works (never makes the check fail)

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "ok": self.ok,
            "detail": self.detail,
            "info": self.info,
            "warning": self.warning,
        }


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)

    def add(
        self, what: str, ok: bool, detail: str, *, info: bool = False, warning: bool = False
    ) -> None:
        self.findings.append(Finding(what, ok, detail, info, warning))

    @property
    def ready(self) -> bool:
        return all(f.ok for f in self.findings if not (f.info or f.warning))


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def is_local_path(url: str) -> bool:
    """True for a path or ``file://`` URL; False for a network URL (``git://``, ``ssh://``,
    ``https://``, scp-like ``host:path``), which any host may try to read."""
    if url.startswith("file://"):
        return True
    if "://" in url:
        return False
    head = url.split("/", 1)[0]
    return ":" not in head


def queue_consumers(app: Any, timeout: float) -> dict[str, list[str]]:
    """Queue name -> the workers consuming it, asked over the broker's control channel."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    consumers: dict[str, list[str]] = {}
    for node, queues in replies.items():
        for q in queues or []:
            consumers.setdefault(str(q.get("name")), []).append(node)
    return consumers


#: seconds to wait for the workers' answers (Celery's own ``inspect`` waits 1 s)
WORKERS_TIMEOUT = 1.0


def ask_workers(settings: Settings, timeout: float) -> dict[str, list[str]]:
    """Queue name -> its consumers: every worker that answers within ``timeout``."""
    app = make_app(settings)
    try:
        return queue_consumers(app, timeout)
    finally:
        app.close()


def report_workers(
    settings: Settings, report: CheckReport, consumers: dict[str, list[str]]
) -> None:
    """The findings on the workers of the ticket and commit queues."""
    tickets = sorted(consumers.get(settings.ticket_queue, []))
    commits = sorted(consumers.get(settings.commit_queue, []))
    report.add(
        "ticket workers",
        bool(tickets),
        f"{len(tickets)} on queue '{settings.ticket_queue}': {', '.join(tickets)}"
        if tickets
        else f"no worker consumes queue '{settings.ticket_queue}' (start: sage-worker tickets)",
    )
    if len(commits) == 1:
        report.add("commit worker", True, f"{commits[0]} on queue '{settings.commit_queue}'")
    elif not commits:
        report.add(
            "commit worker",
            False,
            f"no worker consumes queue '{settings.commit_queue}' "
            "(start: sage-worker commit --repo PATH)",
        )
    else:
        report.add(
            "commit worker",
            False,
            f"{len(commits)} workers consume queue '{settings.commit_queue}' "
            f"({', '.join(commits)}); a repository needs exactly one",
        )


#: the heartbeat timeout should be at least this many heartbeat intervals
BEATS_PER_TIMEOUT = 3


def check_liveness(settings: Settings, report: CheckReport) -> None:
    """Warn about heartbeat and visibility settings that make recovery slow or racy."""
    interval, timeout = settings.heartbeat_interval, settings.heartbeat_timeout
    if timeout < BEATS_PER_TIMEOUT * interval:
        report.add(
            "heartbeat timeout",
            False,
            f"SAGE_HEARTBEAT_TIMEOUT={timeout:g} s is not well above SAGE_HEARTBEAT_INTERVAL="
            f"{interval:g} s: one late beat would take a live ticket away "
            f"(make it at least {BEATS_PER_TIMEOUT * interval:g} s)",
            warning=True,
        )
    else:
        report.add(
            "heartbeat timeout",
            True,
            f"a ticket whose worker is silent for {timeout:g} s runs again elsewhere "
            f"(heartbeat every {interval:g} s)",
        )
    if settings.vt < settings.ticket_timeout and timeout >= settings.vt:
        report.add(
            "visibility timeout",
            False,
            f"SAGE_VISIBILITY_TIMEOUT={settings.vt:g} s is shorter than the ticket timeout "
            f"({settings.ticket_timeout:g} s) and the heartbeat timeout ({timeout:g} s) does not "
            "cover it: a long ticket is delivered again while it runs, before its heartbeat "
            f"could say it is alive (lower SAGE_HEARTBEAT_TIMEOUT below {settings.vt:g} s)",
            warning=True,
        )


def run_checks(
    settings: Settings,
    *,
    repo: str | None,
    repo_url: str | None,
    index: str | None,
    parallel: Any,
    timeout: float = WORKERS_TIMEOUT,
) -> CheckReport:
    """Every check, each a finding; nothing is written anywhere.

    The workers are asked on a thread while git, the repository and the index
    are checked: their answers take ``timeout`` (the broker cannot tell how
    many workers there are, so every answer is awaited), the index its size.
    """
    report = CheckReport()
    check_liveness(settings, report)
    try:
        connect(settings.broker_url, timeout=3)
        report.add("broker", True, f"{redact_url(settings.broker_url)} answers")
        broker_ok = True
    except SageError as exc:
        report.add("broker", False, str(exc))
        broker_ok = False
    rest = CheckReport()
    with ThreadPoolExecutor(max_workers=1) as pool:
        asked = pool.submit(ask_workers, settings, timeout) if broker_ok else None
        check_local(settings, rest, repo=repo, repo_url=repo_url, index=index, parallel=parallel)
        if asked is not None:
            try:
                report_workers(settings, report, asked.result())
            except Exception as exc:  # control channel trouble is a finding, not a crash
                report.add("workers", False, f"could not ask the workers: {exc}")
    report.findings += rest.findings
    return report


def check_local(
    settings: Settings,
    report: CheckReport,
    *,
    repo: str | None,
    repo_url: str | None,
    index: str | None,
    parallel: Any,
) -> None:
    """git, the repository, its URL and its ticket index."""
    try:
        version = gitops.git_version()
        ok = _version_tuple(version) >= MIN_GIT
        report.add(
            "git",
            ok,
            f"git {version}" + ("" if ok else f" is older than {'.'.join(map(str, MIN_GIT))}"),
        )
    except SageError as exc:
        report.add("git", False, str(exc))

    if repo is None:
        return
    try:
        root = gitops.repo_root(Path(repo))
        report.add("repository", True, str(root))
    except SageError as exc:
        report.add("repository", False, str(exc))
        return
    url = repo_url or str(root)
    if repo_url and is_local_path(repo_url):
        # the workers' name for the repository (e.g. /repo inside their containers):
        # a path on their hosts, which means nothing on this one
        report.add(
            "repository URL",
            True,
            f"{repo_url} is a path on the workers' hosts; they read it, this host does not",
            info=True,
        )
    else:
        problem = gitops.url_readable(url)
        report.add(
            "repository URL",
            problem is None,
            f"{gitops.redact_url(url)} is readable"
            if problem is None
            else f"{gitops.redact_url(url)}: {problem}",
        )
    index_path = index or DEFAULT_INDEX_PATH
    try:
        data = gitops.read_index_at(root, gitops.resolve_ref(root, "HEAD"), index_path)
        if data is None:
            report.add("ticket index", False, f"no {index_path} at HEAD")
            return
        doc = IndexDocument.loads(data, source=index_path)
        plan = build_plan(doc, parallel=parallel, has_executor=bool(settings.executor))
    except SageError as exc:
        report.add("ticket index", False, str(exc).splitlines()[0])
        return
    report.add(
        "ticket index",
        True,
        f"{plan.tickets} tickets, {plan.to_run} to run, {len(plan.batches)} batches",
    )
    report.add("ticket links", True, doc.link_summary().describe(), info=True)
    for line in warning_lines(doc.warnings):
        report.add("ticket links", True, f"warning: {line}", info=True)
    stats = plan.stats
    report.add(
        "parallelism",
        True,
        f"{stats.independent_share:.0%} of the tickets to run have no pending dependency; "
        f"widest batch {stats.widest_batch}; recommended workers "
        f"{stats.recommended_workers}",
        info=True,
    )
