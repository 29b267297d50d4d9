"""Ticket commits in a branch's history, found by their ``Sage-Ticket``/``Sage-Run`` trailers."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from sage_tasks.errors import RepositoryError
from sage_tasks.gitops.process import first_line, run_git
from sage_tasks.gitops.repository import locate_repo

TICKET_TRAILER = "Sage-Ticket"
RUN_TRAILER = "Sage-Run"

_FORMAT = (
    f"--format=%H%x00%(trailers:key={TICKET_TRAILER},valueonly,separator=%x01)"
    f"%x00%(trailers:key={RUN_TRAILER},valueonly,separator=%x01)%x1e"
)


class TicketCommit(NamedTuple):
    """A commit that records one ticket of one run."""

    sha: str
    ticket_id: str
    run_id: str


def message(ticket_id: str, title: str, run_id: str, body: str | None = None) -> bytes:
    """A ticket commit's message: subject ``<ID>: <title>``, optional body, then the trailers."""
    subject = " ".join(title.split())
    text = f"{ticket_id}: {subject}" if subject else ticket_id
    if body:
        clean = body.replace("\0", "").replace("\r\n", "\n").strip()
        if clean:
            text += "\n\n" + clean
    text += f"\n\n{TICKET_TRAILER}: {ticket_id}\n{RUN_TRAILER}: {run_id}\n"
    return text.encode("utf-8", "surrogateescape")


def _log(git_dir: Path, *args: str) -> list[TicketCommit]:
    proc = run_git(git_dir, "log", _FORMAT, *args, check=False)
    if proc.returncode != 0:
        raise RepositoryError(f"cannot read history: {first_line(proc.stderr)}")
    out: list[TicketCommit] = []
    for record in proc.stdout.decode("utf-8", "surrogateescape").split("\x1e"):
        fields = record.strip("\n").split("\0")
        if len(fields) != 3 or not fields[1]:
            continue
        sha, tickets, runs = fields
        for ticket in tickets.split("\x01"):
            out.append(TicketCommit(sha, ticket.strip(), runs.split("\x01")[-1].strip()))
    return out


def ticket_commits(repo: Path, branch: str, base: str | None = None) -> list[TicketCommit]:
    """The ticket commits on ``branch`` since ``base`` (all history if None), oldest first."""
    _, git_dir = locate_repo(repo)
    spec = f"{base}..refs/heads/{branch}" if base else f"refs/heads/{branch}"
    return _log(git_dir, "--reverse", spec, "--")


def find_ticket_commit(git_dir: Path, head: str, ticket_id: str, run_id: str | None) -> str | None:
    """The newest commit up to ``head`` recording ``ticket_id`` (for ``run_id`` when given)."""
    greps = [f"--grep={TICKET_TRAILER}: {ticket_id}"]
    if run_id is not None:
        greps += [f"--grep={RUN_TRAILER}: {run_id}", "--all-match"]
    for found in _log(git_dir, "-F", *greps, head, "--"):
        if found.ticket_id == ticket_id and (run_id is None or found.run_id == run_id):
            return found.sha
    return None
