"""A stand-in for a coding agent's CLI, to try ``--executor`` without one.

sage-tasks runs the executor in a fresh worktree (the current directory) with
``SAGE_PROMPT_FILE`` (the rendered prompt) and ``SAGE_TICKET_FILE`` (the
ticket as JSON). Like an agent, this reads the prompt, then edits files in
the worktree: for each path in the ticket's ``files`` it appends one line
naming the ticket, creating the file and its folders when needed. It never
commits; sage-tasks turns the worktree's changes into the ticket's patch.

Exits 2 when the prompt or ticket file is missing or empty (an agent with
nothing to do should fail, not succeed silently).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    prompt_file = os.environ.get("SAGE_PROMPT_FILE", "")
    ticket_file = os.environ.get("SAGE_TICKET_FILE", "")
    if not (prompt_file and Path(prompt_file).is_file() and Path(prompt_file).read_text().strip()):
        print("stand-in agent: no prompt in $SAGE_PROMPT_FILE", file=sys.stderr)
        return 2
    if not (ticket_file and Path(ticket_file).is_file()):
        print("stand-in agent: no ticket in $SAGE_TICKET_FILE", file=sys.stderr)
        return 2
    prompt = Path(prompt_file).read_text()
    ticket = json.loads(Path(ticket_file).read_text())
    print(f"stand-in agent: read a {len(prompt.splitlines())}-line prompt for {ticket['id']}")
    for name in ticket.get("files", []):
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"- {ticket['id']}: {ticket.get('title', '')}\n")
        print(f"stand-in agent: edited {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
