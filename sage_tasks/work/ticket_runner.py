"""Run one ticket on a ticket worker: fetch, clean worktree, command, patch.

The worktree is a clean checkout of the branch head when the ticket starts:
each worker process keeps one per repository and resets it (checkout, clean,
per-worktree git state cleared) before every ticket, or replaces it when
anything about it looks wrong; nothing of an earlier ticket survives.

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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sage_tasks.core.index import IndexDocument, Ticket
from sage_tasks.errors import DependencyPending, PatchRejected, SageError
from sage_tasks.gitops import Mirror, capture_patch
from sage_tasks.store.keys import check_ids
from sage_tasks.store.runstate import FINAL_PHASES, Phase, RunInfo, blocking_reason
from sage_tasks.work.executor import kill_orphans, run_command, ticket_env
from sage_tasks.work.prompt import render_prompt
from sage_tasks.work.runtime import Runtime

log = logging.getLogger(__name__)

#: a ticket whose worker died this many times is DEFERRED ("worker lost")
MAX_WORKER_DEATHS = 3


def outcome(ticket_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    """The JSON result ``run_ticket`` hands to ``commit_ticket``."""
    return {"ticket": ticket_id, "outcome": kind, **fields}


@contextmanager
def heartbeat(rt: Runtime, run_id: str, ticket_id: str) -> Iterator[None]:
    """Refresh the ticket's heartbeat while its command runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(rt.settings.heartbeat_interval):
            try:
                rt.store.heartbeat(run_id, ticket_id)
            except Exception:  # the supervisor tolerates a missed beat
                log.warning("heartbeat of %s failed", ticket_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{ticket_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


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


def run_ticket(rt: Runtime, run_id: str, ticket_id: str) -> dict[str, Any]:
    """Execute one ticket of a run and return its outcome for the commit queue."""
    check_ids(run_id, ticket_id)
    store = rt.store
    info, record, _ = store.snapshot(run_id, ticket_id)
    if info is None:
        return outcome(ticket_id, "lost", reason="the run is gone from Redis")
    if not record:
        raise SageError(f"refused: ticket {ticket_id} is not part of run {run_id}")
    record = _wait_while_running_elsewhere(rt, run_id, ticket_id, record)
    state = record.get("state", "")
    if state in FINAL_PHASES:
        return outcome(ticket_id, "done", state=state)
    if state == Phase.RAN and record.get("result"):
        # a second delivery after the command already ran: hand on the same result
        result: dict[str, Any] = json.loads(record["result"])
        return result
    deps = json.loads(record.get("deps", "[]"))
    reason = blocked_by(rt, run_id, deps)
    if reason is not None:
        return outcome(ticket_id, "blocked", reason=reason)
    # a delivery that finds the ticket RUNNING with a stale heartbeat follows a dead worker
    deaths = int(record.get("deaths", "0") or 0) + (1 if state == Phase.RUNNING else 0)
    if deaths >= MAX_WORKER_DEATHS:
        result = outcome(ticket_id, "failed", reason=f"worker lost: its worker died {deaths} times")
        store.ran(run_id, ticket_id, result)
        return result
    if state == Phase.RUNNING:
        end_orphaned_command(record, run_id, ticket_id)
    store.start_ticket(
        run_id, ticket_id, rt.hostname, deaths=deaths, pid=os.getpid(), space=process_space()
    )
    conflicts = json.loads(record.get("conflict_paths") or "[]")
    try:
        with heartbeat(rt, run_id, ticket_id):
            result = _execute(rt, info, ticket_id, conflicts, record.get("ticket", ""))
    except BaseException:
        # not a worker death: the task retries, so the ticket waits in the queue again
        try:
            store.requeue_ticket(run_id, ticket_id)
        except Exception:  # Redis may be what failed; keep the original error
            log.warning("could not requeue ticket %s in the run record", ticket_id, exc_info=True)
        raise
    if conflicts:  # the commit queue tells a stale outcome from this re-run's
        result["rerun"] = int(record.get("conflict_reruns") or 0)
    store.ran(run_id, ticket_id, result)
    return result


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
    stale_after = 3 * rt.settings.heartbeat_interval + 5
    while record.get("state") == Phase.RUNNING:
        beat = float(record.get("heartbeat") or 0)
        if time.time() - beat > stale_after or runner_is_gone(record):
            break
        time.sleep(rt.settings.heartbeat_interval)
        record = rt.store.ticket(run_id, ticket_id)
    return record


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


def _execute(
    rt: Runtime, info: RunInfo, ticket_id: str, conflicts: list[str], definition: str = ""
) -> dict[str, Any]:
    """Run the ticket's command (``conflicts``: paths its last patch conflicted in;
    ``definition``: the ticket's JSON object as submitted, if the record has it)."""
    settings = rt.settings
    run_id = info.run_id
    mirror = Mirror(settings.workdir, info.repo_url)
    tries = 1
    last: dict[str, Any] = {}
    attempt = 0
    while attempt < tries:
        attempt += 1
        # the head the commit worker last recorded; a retry looks again
        if attempt > 1:
            info = rt.store.get(run_id) or info
        head = mirror.resolve(info.branch, info.head)
        with mirror.worktree(head) as worktree:
            found = _ticket_definition(definition, worktree / info.index_path, info, ticket_id)
            if found is None:
                return outcome(
                    ticket_id,
                    "failed",
                    reason=f"ticket {ticket_id} is not in the index at {head[:12]}",
                )
            ticket, ticket_json = found
            tries = 1 + max(0, ticket.retries)
            command = ticket.run or info.executor
            if not command:
                return outcome(
                    ticket_id, "failed", reason="ticket has no command and the run no executor"
                )
            timeout = float(ticket.timeout or info.ticket_timeout)
            # a copy that stalled (a fetch across a cut link) may wake after another
            # worker finished the ticket: it must not run the command again
            if not rt.store.count_attempt(run_id, ticket_id):
                state = rt.store.ticket(run_id, ticket_id).get("state", "")
                return outcome(ticket_id, "done", state=state)
            with tempfile.TemporaryDirectory(prefix="sage-ticket-") as tmp:
                tmpdir = Path(tmp)
                ticket_file = tmpdir / "ticket.json"
                ticket_file.write_text(json.dumps(ticket_json, indent=2, ensure_ascii=False))
                prompt_file = tmpdir / "prompt.md"
                prompt_file.write_text(
                    render_prompt(ticket_json, run_id=info.run_id, conflicts=conflicts)
                )
                env = ticket_env(
                    os.environ,
                    ticket_id=ticket_id,
                    run_id=info.run_id,
                    ticket_file=ticket_file,
                    prompt_file=prompt_file,
                    conflicts=conflicts,
                )
                res = run_command(
                    command,
                    cwd=worktree,
                    env=env,
                    timeout=timeout,
                    max_output_bytes=settings.max_output_bytes,
                    on_start=lambda pgid: rt.store.set_ticket(run_id, ticket_id, pgid=pgid),
                    output_path=tmpdir / "output.log",
                )
            base = {"duration_s": round(res.duration_s, 3), "attempt": attempt, "head": head}
            if res.timed_out:
                last = outcome(
                    ticket_id,
                    "failed",
                    reason=f"timed out after {timeout:g} s",
                    output=res.output_tail,
                    output_bytes=res.output_bytes,
                    **base,
                )
                continue
            if res.exit_code != 0:
                last = outcome(
                    ticket_id,
                    "failed",
                    reason=f"exit code {res.exit_code}",
                    output=res.output_tail,
                    output_bytes=res.output_bytes,
                    **base,
                )
                continue
            try:
                patch = capture_patch(
                    worktree,
                    head,
                    exclude=[info.index_path],
                    max_bytes=settings.max_patch_bytes,
                    git_dir=mirror.git_dir(worktree),
                )
            except PatchRejected as exc:
                return outcome(
                    ticket_id,
                    "failed",
                    reason=str(exc),
                    output=res.output_tail,
                    output_bytes=res.output_bytes,
                    **base,
                )
            digest = ""
            if patch.data:
                digest = hashlib.sha256(patch.data).hexdigest()
                rt.store.put_patch(info.run_id, digest, patch.data)
            return outcome(ticket_id, "ok", patch=digest, files=len(patch.paths), **base)
    if last and tries > 1:
        last["reason"] = f"{last['reason']} (after {tries} attempts)"
    return last
