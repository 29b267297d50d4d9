"""Run one ticket on a ticket worker: fetch, clean worktree, command, patch.

The worktree is a clean checkout of the branch head when the ticket starts:
each worker process keeps one per repository and resets it (checkout, clean,
per-worktree git state cleared) before every ticket, or replaces it when
anything about it looks wrong; nothing of an earlier ticket survives. After
a capture that staged everything, and with no process of the command left,
the next reset need only touch what differs (see :mod:`sage_tasks.gitops.worktree`).

A failing command is an outcome (``failed``), never an exception: the commit
queue turns it into a DEFERRED commit, so one bad ticket never stalls a run.
Exceptions are kept for the infrastructure (git, Redis), which the task
retries with backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_tasks.core.index import IndexDocument, Ticket
from sage_tasks.errors import DependencyPending, PatchRejected, SageError
from sage_tasks.gitops import Mirror, Patch, capture_patch
from sage_tasks.model.outcome import Outcome, OutcomeKind
from sage_tasks.store import liveness
from sage_tasks.store.keys import check_ids
from sage_tasks.store.runstate import (
    FINAL_PHASES,
    Phase,
    RunInfo,
    RunStatus,
    RunStore,
    blocking_reason,
)
from sage_tasks.work import attempt as attempts
from sage_tasks.work.executor import (
    ExecResult,
    kill_orphans,
    run_command,
    survivors,
    ticket_env,
)
from sage_tasks.work.prompt import render_prompt
from sage_tasks.work.runtime import Runtime

log = logging.getLogger(__name__)

#: a ticket whose worker died this many times is DEFERRED ("worker lost")
MAX_WORKER_DEATHS = 3


def failed(ticket_id: str, reason: str) -> Outcome:
    """A ``failed`` outcome: the commit queue records the ticket DEFERRED with ``reason``."""
    return Outcome(ticket_id, OutcomeKind.FAILED, reason=reason)


def blocked_by(rt: Runtime, run_id: str, deps: list[str]) -> str | None:
    """The reason the ticket is BLOCKED, or None when every dependency is COMPLETED."""
    if not deps:
        return None
    records = rt.store.tickets(run_id, deps)
    reason = blocking_reason(records, deps)
    if reason:
        return reason
    for dep in deps:
        if records[dep].get("state") != Phase.COMPLETED:
            raise DependencyPending(f"dependency {dep} is not committed yet", tickets=(dep,))
    return None


def run_ticket(rt: Runtime, run_id: str, ticket_id: str) -> Outcome:
    """Execute one ticket of a run and return its outcome for the commit queue."""
    check_ids(run_id, ticket_id)
    store = rt.store
    info, record, _ = store.snapshot(run_id, ticket_id)
    if info is None:
        return Outcome(ticket_id, OutcomeKind.LOST, reason="the run is gone from Redis")
    if not record:
        raise SageError(f"refused: ticket {ticket_id} is not part of run {run_id}")
    if info.status == RunStatus.CANCELLED:
        # queued work of a cancelled run is dropped unrun
        liveness.mark_cancelled(store, run_id, ticket_id)
        return Outcome(ticket_id, OutcomeKind.CANCELLED)
    record = _wait_while_running_elsewhere(rt, run_id, ticket_id, record)
    settled = _without_running(rt, run_id, ticket_id, record)
    if settled is not None:
        return settled
    return _attempt(rt, info, ticket_id, record)


def _deaths(record: dict[str, str]) -> int:
    """How often the ticket's worker died, counting the run this delivery follows:
    a ticket found RUNNING (with a stale heartbeat) follows a dead worker."""
    running = record.get("state", "") == Phase.RUNNING
    return int(record.get("deaths", "0") or 0) + (1 if running else 0)


def _without_running(
    rt: Runtime, run_id: str, ticket_id: str, record: dict[str, str]
) -> Outcome | None:
    """The outcome of a delivery that must not run the command (None: run it)."""
    state = record.get("state", "")
    if state in FINAL_PHASES:
        return Outcome(ticket_id, OutcomeKind.DONE, state=state)
    if state == Phase.RAN and record.get("result"):
        # a second delivery after the command already ran: hand on the same result
        return Outcome.from_json(json.loads(record["result"]))
    deps = json.loads(record.get("deps", "[]"))
    reason = blocked_by(rt, run_id, deps)
    if reason is not None:
        return Outcome(ticket_id, OutcomeKind.BLOCKED, reason=reason)
    deaths = _deaths(record)
    if deaths >= MAX_WORKER_DEATHS:
        lost = failed(ticket_id, f"worker lost: its worker died {deaths} times")
        rt.store.ran(run_id, ticket_id, lost.to_json())
        return lost
    return None


def _attempt(rt: Runtime, info: RunInfo, ticket_id: str, record: dict[str, str]) -> Outcome:
    """Start a new attempt of the ticket, run it under its fence, record its outcome."""
    store, run_id = rt.store, info.run_id
    if record.get("state", "") == Phase.RUNNING:
        end_orphaned_command(record, run_id, ticket_id)
    attempt_no = store.start_ticket(
        run_id,
        ticket_id,
        rt.hostname,
        deaths=_deaths(record),
        pid=os.getpid(),
        space=process_space(),
    )
    if not attempt_no:  # final meanwhile
        now = store.ticket(run_id, ticket_id).get("state", "")
        return Outcome(ticket_id, OutcomeKind.DONE, state=now)
    conflicts = json.loads(record.get("conflict_paths") or "[]")
    attempt = attempts.Attempt(
        url=rt.settings.backend_url,
        run_id=run_id,
        ticket_id=ticket_id,
        attempt_no=attempt_no,
        interval=rt.settings.heartbeat_interval,
    )
    try:
        with attempt, attempts.dies_with_runner(attempt):
            result = _execute(rt, info, ticket_id, conflicts, record.get("ticket", ""), attempt)
    except BaseException:
        # not a worker death: the task retries, so the ticket waits in the queue again
        try:
            store.requeue_ticket(run_id, ticket_id, attempt_no=attempt_no)
        except Exception:  # Redis may be what failed; keep the original error
            log.warning("could not requeue ticket %s in the run record", ticket_id, exc_info=True)
        raise
    if attempt.ended is not None:
        return _fenced(store, run_id, ticket_id, attempt_no, attempt.ended)
    if conflicts:  # the commit queue tells a stale outcome from this re-run's
        result.rerun = int(record.get("conflict_reruns") or 0)
    result.attempt_no = attempt_no
    if not store.ran(run_id, ticket_id, result.to_json(), attempt_no=attempt_no):
        # another attempt took the ticket over while this one ran: its outcome is void
        return Outcome(ticket_id, OutcomeKind.STALE, attempt_no=attempt_no)
    return result


def _fenced(
    store: RunStore, run_id: str, ticket_id: str, attempt_no: int, why: liveness.Beat
) -> Outcome:
    """The outcome of an attempt that was stopped: nothing to commit."""
    if why == liveness.Beat.CANCELLED:
        liveness.mark_cancelled(store, run_id, ticket_id, attempt_no)
        return Outcome(ticket_id, OutcomeKind.CANCELLED, attempt_no=attempt_no)
    return Outcome(ticket_id, OutcomeKind.STALE, attempt_no=attempt_no)


def end_orphaned_command(record: dict[str, str], run_id: str, ticket_id: str) -> None:
    """Kill what is left of the ticket's command when the process that ran it died here."""
    pgid = record.get("pgid", "")
    if pgid.isdigit() and int(pgid) > 1 and runner_is_gone(record):
        marks = {"SAGE_RUN_ID": run_id, "SAGE_TICKET_ID": ticket_id}
        if killed := kill_orphans(int(pgid), marks):
            log.warning(
                "ticket %s: killed %d leftover process(es) of its dead run", ticket_id, killed
            )


def process_space() -> str:
    """Names the pid space this process lives in (kernel boot and pid namespace); '' unknown."""
    pid = os.getpid()
    if _space[0] != pid:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            namespace = os.readlink("/proc/self/ns/pid")
            _space[:] = [pid, f"{boot}/{namespace}"]
        except OSError:
            return ""
    return str(_space[1])


#: [pid, its pid space]: read once per process
_space: list[int | str] = [0, ""]


def runner_is_gone(record: dict[str, str]) -> bool:
    """True when the process the record says runs the ticket is known to be dead.

    Only a process in our own pid space can be looked at (a pool process
    killed under the ticket, seen by its worker's next delivery); elsewhere
    only the heartbeat tells.
    """
    pid = record.get("pid", "")
    space = record.get("space", "")
    if not pid.isdigit() or int(pid) <= 0 or not space or space != process_space():
        return False
    if int(pid) == os.getpid():
        return True  # one ticket at a time per process: that copy is not running
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _wait_while_running_elsewhere(
    rt: Runtime, run_id: str, ticket_id: str, record: dict[str, str]
) -> dict[str, str]:
    """A duplicate delivery waits while another worker's copy is alive (fresh heartbeat)."""
    # a redelivery concludes sooner than the supervisor (three missed beats) and never later
    settings = rt.settings
    stale_after = min(settings.heartbeat_timeout, 3 * settings.heartbeat_interval + 5)
    while record.get("state") == Phase.RUNNING:
        beat = float(record.get("heartbeat") or 0)
        if time.time() - beat > stale_after or runner_is_gone(record):
            break
        time.sleep(rt.settings.heartbeat_interval)
        record = rt.store.record(run_id, ticket_id)
    return record


def _started(
    rt: Runtime, run_id: str, ticket_id: str, pgid: int, fence: attempts.Attempt | None
) -> None:
    """The command runs as process group ``pgid``: recorded, and handed to its fence."""
    if fence is not None:
        fence.started(pgid)
    rt.store.set_ticket(run_id, ticket_id, pgid=pgid)


def _ticket_definition(
    definition: str, index_file: Path, info: RunInfo, ticket_id: str
) -> tuple[Ticket, dict[str, Any]] | None:
    """The ticket (checked) and its JSON object: as submitted, else from the worktree's index.

    The submission stores each ticket's object with its record, so a worker
    need not parse an index of thousands of tickets for each one; a record
    without it (a run submitted before) reads the index at the head.
    """
    if definition:
        raw = json.loads(definition)
        if isinstance(raw, dict) and raw.get("id") == ticket_id:
            return Ticket.model_validate(raw), raw
    doc = IndexDocument.loads(index_file.read_bytes(), source=info.index_path)
    ticket = doc.get(ticket_id)
    return None if ticket is None else (ticket, doc.ticket_json(ticket_id))


@dataclass(frozen=True)
class _Job:
    """What every try of one ticket's command shares."""

    rt: Runtime
    ticket_id: str
    conflicts: list[str]  # paths its last patch conflicted in
    definition: str  # the ticket's JSON object as submitted ('' when the record lacks it)
    fence: attempts.Attempt | None  # stops the command and any retry of it


def _execute(
    rt: Runtime,
    info: RunInfo,
    ticket_id: str,
    conflicts: list[str],
    definition: str = "",
    fence: attempts.Attempt | None = None,
) -> Outcome:
    """Run the ticket's command, again on failure while its ``retries`` allow
    (``conflicts``: paths its last patch conflicted in; ``definition``: the
    ticket's JSON object as submitted, if the record has it; ``fence``: the
    attempt's fence, which stops the command and any retry of it)."""
    job = _Job(rt, ticket_id, conflicts, definition, fence)
    mirror = Mirror(rt.settings.workdir, info.repo_url, adopt=rt.settings.keep_worktrees)
    tries = 1
    last: Outcome | None = None
    attempt = 0
    while attempt < tries and (fence is None or fence.ended is None):
        attempt += 1
        # the head the commit worker last recorded; a retry looks again
        if attempt > 1:
            info = rt.store.get(info.run_id) or info
        last, tries, again = _try_once(job, info, mirror, attempt)
        if not again:
            return last
    if last is None:  # the fence ended the attempt before its command ran
        return Outcome(ticket_id, OutcomeKind.STALE)
    if tries > 1:
        last.reason = f"{last.reason} (after {tries} attempts)"
    return last


def _try_once(job: _Job, info: RunInfo, mirror: Mirror, attempt: int) -> tuple[Outcome, int, bool]:
    """One try at the branch's head: its outcome, how many tries the ticket allows, and
    whether the outcome is one a further try may change (the command failed)."""
    ticket_id, store = job.ticket_id, job.rt.store
    head = mirror.resolve(info.branch, info.head)
    with mirror.worktree(head, info.branch) as worktree:
        found = _ticket_definition(job.definition, worktree / info.index_path, info, ticket_id)
        if found is None:
            return (
                failed(ticket_id, f"ticket {ticket_id} is not in the index at {head[:12]}"),
                1,
                False,
            )
        ticket, ticket_json = found
        tries = 1 + max(0, ticket.retries)
        command = ticket.run or info.executor
        if not command:
            return failed(ticket_id, "ticket has no command and the run no executor"), tries, False
        timeout = float(ticket.timeout or info.ticket_timeout)
        # a copy that stalled (a fetch across a cut link) may wake after another
        # worker finished the ticket: it must not run the command again
        if not store.count_attempt(info.run_id, ticket_id):
            state = store.ticket(info.run_id, ticket_id).get("state", "")
            return Outcome(ticket_id, OutcomeKind.DONE, state=state), tries, False
        res = _run(job, info, ticket_json, command, worktree, timeout)
        ran = _Ran(ticket_id, res, attempt, head)
        if res.timed_out:
            return ran.failed(f"timed out after {timeout:g} s"), tries, True
        if res.exit_code != 0:
            return ran.failed(f"exit code {res.exit_code}"), tries, True
        try:
            patch = _capture(job, info, mirror, worktree, head)
        except PatchRejected as exc:
            return ran.failed(str(exc)), tries, False
        digest = ""
        if patch.data:
            digest = hashlib.sha256(patch.data).hexdigest()
            store.put_patch(info.run_id, digest, patch.data)
        return ran.ok(digest, len(patch.paths)), tries, False


def _capture(job: _Job, info: RunInfo, mirror: Mirror, worktree: Path, head: str) -> Patch:
    """The ticket's patch; the mirror is told when its next reset may be a short one."""
    # a process of the command that left its group may still write: then the next
    # ticket's reset looks at every file again
    alone = not survivors({"SAGE_RUN_ID": info.run_id, "SAGE_TICKET_ID": job.ticket_id})
    patch = capture_patch(
        worktree,
        head,
        exclude=[info.index_path],
        max_bytes=job.rt.settings.max_patch_bytes,
        git_dir=mirror.git_dir(worktree),
        untracked=mirror.may_hold_untracked(worktree),
    )
    if alone:
        mirror.captured(worktree)
    return patch


def _run(
    job: _Job,
    info: RunInfo,
    ticket_json: dict[str, Any],
    command: str,
    worktree: Path,
    timeout: float,
) -> ExecResult:
    """Run ``command`` in ``worktree`` with the ticket's files and environment."""
    run_id, ticket_id = info.run_id, job.ticket_id
    with tempfile.TemporaryDirectory(prefix="sage-ticket-") as tmp:
        tmpdir = Path(tmp)
        ticket_file = tmpdir / "ticket.json"
        ticket_file.write_text(json.dumps(ticket_json, indent=2, ensure_ascii=False))
        prompt_file = tmpdir / "prompt.md"
        prompt_file.write_text(render_prompt(ticket_json, run_id=run_id, conflicts=job.conflicts))
        env = ticket_env(
            os.environ,
            ticket_id=ticket_id,
            run_id=run_id,
            ticket_file=ticket_file,
            prompt_file=prompt_file,
            conflicts=job.conflicts,
        )
        return run_command(
            command,
            cwd=worktree,
            env=env,
            timeout=timeout,
            max_output_bytes=job.rt.settings.max_output_bytes,
            on_start=lambda pgid: _started(job.rt, run_id, ticket_id, pgid, job.fence),
            output_path=tmpdir / "output.log",
        )


@dataclass(frozen=True)
class _Ran:
    """One try of a ticket's command, and the outcomes it can end in."""

    ticket_id: str
    res: ExecResult
    attempt: int
    head: str

    def _outcome(self, kind: OutcomeKind) -> Outcome:
        duration = round(self.res.duration_s, 3)
        return Outcome(
            self.ticket_id, kind, duration_s=duration, attempt=self.attempt, head=self.head
        )

    def failed(self, reason: str) -> Outcome:
        """``failed`` with ``reason`` and the tail of the command's output."""
        out = self._outcome(OutcomeKind.FAILED)
        out.reason, out.output, out.output_bytes = (
            reason,
            self.res.output_tail,
            self.res.output_bytes,
        )
        return out

    def ok(self, digest: str, files: int) -> Outcome:
        """``ok``: the patch (its digest, '' when empty) and how many files it touches."""
        out = self._outcome(OutcomeKind.OK)
        out.patch, out.files = digest, files
        return out
