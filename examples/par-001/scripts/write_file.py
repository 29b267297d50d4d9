"""Do one PAR-001 task the deterministic way: write the files its ticket names.

A ticket runs this as ``python3 tools/write_file.py`` in a fresh worktree of
the demo repository. It reads the ticket from ``$SAGE_TICKET_FILE`` and:

1. fails (exit 1) when a file that one of the ticket's dependencies writes is
   missing from the worktree, which proves that every dependency was committed
   to the branch before this ticket started;
2. sleeps a moment, so that tickets running side by side are visible;
3. writes each path in the ticket's ``files`` list: a function stub for a
   ``<name>.sh`` named in ``functions``, a library that sources its ``.d/``
   folder for any other ``.sh``, and a Markdown section otherwise (appended when
   the file exists: only a ticket that depends on the file's creator does so).

Tickets that may run in the same batch never write the same file: functions
live one to a file, and document sections in ``<file>.d/<TICKET>.md``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

INDEX = Path(".sage/tickets/index.json")
SLEEP_S = 0.3


def missing_dependency_files(ticket: dict[str, Any], index: dict[str, Any]) -> list[str]:
    """Files that the ticket's dependencies write but the worktree lacks."""
    by_id = {t["id"]: t for t in index["tickets"]}
    return [
        path
        for dep in ticket.get("dependencies", [])
        for path in by_id[dep].get("files", [])
        if not Path(path).exists()
    ]


def function_stub(name: str, ticket: dict[str, Any]) -> str:
    return (
        f"# {ticket['id']}: {ticket['title']}\n"
        f"# {ticket.get('description', '')}\n"
        f"{name}() {{\n"
        f'  echo "{name}: not implemented yet ({ticket["id"]})" >&2\n'
        "  return 1\n"
        "}\n"
    )


def library(path: Path, ticket: dict[str, Any]) -> str:
    parts = path.stem + ".d"
    return (
        "#!/usr/bin/env bash\n"
        f"# {path.name}: {ticket['id']}: {ticket['title']}\n"
        f"# {ticket.get('description', '')}\n"
        f"# Its functions live in {parts}/, one file each.\n"
        f'for _f in "$(dirname "${{BASH_SOURCE[0]}}")/{parts}/"*.sh; do\n'
        '  [ -e "$_f" ] && . "$_f"\n'
        "done\n"
        "unset _f\n"
    )


def section(ticket: dict[str, Any]) -> str:
    lines = [f"## {ticket['id']}: {ticket['title']}", ""]
    if "seed_files" in ticket:
        lines += [f"Part of `{ticket['seed_files']}`.", ""]
    lines += [ticket.get("description", ""), ""]
    lines += [f"- Acceptance: {item}" for item in ticket.get("acceptance_criteria", [])]
    return "\n".join(lines) + "\n"


def write(path: Path, ticket: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".sh" and path.stem in ticket.get("functions", []):
        path.write_text(function_stub(path.stem, ticket))
    elif path.suffix == ".sh":
        path.write_text(library(path, ticket))
    elif path.exists():
        with path.open("a") as f:
            f.write("\n" + section(ticket))
    else:
        path.write_text(section(ticket))


def main() -> int:
    ticket = json.loads(Path(os.environ["SAGE_TICKET_FILE"]).read_text())
    missing = missing_dependency_files(ticket, json.loads(INDEX.read_text()))
    if missing:
        print(f"{ticket['id']}: dependency output missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    time.sleep(SLEEP_S)
    for name in ticket["files"]:
        write(Path(name), ticket)
    print(f"{ticket['id']}: wrote {', '.join(ticket['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
