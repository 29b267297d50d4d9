"""The prompt a coding agent gets for one ticket, rendered as Markdown.

Tickets come from hand-written indexes, so every field may be missing or have
an unexpected shape (a string where a list was meant, a dict, a number);
rendering never fails on shape, it shows what is there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence, Set
from typing import Any

from sage_tasks.core.index import DEFAULT_INDEX_PATH
from sage_tasks.core.links import own_waits

#: Fields that get their own place in the prompt, or that only sage-tasks uses.
_SHOWN_OR_INTERNAL = frozenset(
    {
        "id",
        "title",
        "priority",
        "type",
        "estimate",
        "description",
        "docs",
        "acceptance_criteria",
        "dependencies",
        "blockedBy",
        "git",
        "state",
        "run",
        "timeout",
        "retries",
        "deferred_reason",
    }
)

#: Deeper nesting is shown inline, which also ends self-referencing values.
_MAX_INDENT = 8


def render_prompt(
    ticket: Mapping[str, Any],
    *,
    run_id: str,
    repo_note: str | None = None,
    index_path: str = DEFAULT_INDEX_PATH,
    conflicts: Sequence[str] = (),
) -> str:
    """A Markdown prompt for a coding agent working on ``ticket`` in run ``run_id``.

    Shows the ticket's id, title, priority, description, docs, acceptance
    criteria, dependencies, git hints and any other fields, then ``repo_note``
    (free text about the repository) and the rules of the worktree: work in the
    current directory, do not commit, do not edit the ticket index
    (``index_path``, relative to the repository root), and exit non-zero when
    the ticket cannot be finished. ``conflicts`` (a re-run after a merge
    conflict) come first: the paths where the last attempt's changes clashed
    with work committed since.
    """
    ticket_id = _inline(ticket.get("id")) or "(no id)"
    title = _inline(ticket.get("title")) or "(untitled)"
    lines = [f"# Ticket {ticket_id}: {title}", ""]

    facts = [
        ("Priority", _inline(ticket.get("priority")) or "P2"),
        ("Type", _inline(ticket.get("type"))),
        ("Estimate", _inline(ticket.get("estimate"))),
        ("Run id", run_id),
    ]
    lines += [f"- **{name}:** {value}" for name, value in facts if value]
    lines.append("")

    if conflicts:
        _section(
            lines,
            "Re-run after a merge conflict",
            [
                "Your previous changes conflicted with work committed since, in:",
                *(f"- `{_inline(p)}`" for p in conflicts),
                "",
                "Start again from the current files, which hold that work.",
            ],
        )
    _section(lines, "Description", _block(ticket.get("description")))
    _section(lines, "Documentation to read", _block(ticket.get("docs")))
    _section(lines, "Acceptance criteria", _block(ticket.get("acceptance_criteria")))
    _section(lines, "Dependencies", _dependencies(_waits_for(ticket)))
    _section(
        lines, "Git hints (context only: sage-tasks makes the commit)", _block(ticket.get("git"))
    )
    extra = {k: v for k, v in ticket.items() if str(k) not in _SHOWN_OR_INTERNAL}
    _section(lines, "Other ticket fields", _block(extra))
    _section(lines, "About this repository", _block(repo_note))
    _section(lines, "How to work", _instructions(index_path))
    return "\n".join(lines).rstrip("\n") + "\n"


def _instructions(index_path: str) -> list[str]:
    return [
        "- The current directory is a git worktree of the repository, checked out for this "
        "ticket. Do all your work there, and nowhere else.",
        "- Do not commit, create branches, or push: leave your changes (new, modified and "
        "deleted files) in the working tree. They become this ticket's patch, which "
        "sage-tasks commits for you.",
        f"- Do not edit `{index_path}`; sage-tasks records the ticket's state itself.",
        "- The ticket as JSON is in the file named by `$SAGE_TICKET_FILE`.",
        "- Meet the acceptance criteria, then exit with status 0.",
        "- If you cannot finish the ticket, exit with a non-zero status after printing why: "
        "the end of your output becomes the reason the ticket was deferred.",
    ]


def _section(lines: list[str], heading: str, body: list[str]) -> None:
    if body:
        lines += [f"## {heading}", "", *body, ""]


def _waits_for(ticket: Mapping[str, Any]) -> Any:
    """What the ticket waits for: ``dependencies`` and ``blockedBy`` (each id once) when both
    are lists of ids or missing, else ``dependencies`` as it is (shown, whatever its shape)."""
    deps, blocked_by = ticket.get("dependencies"), ticket.get("blockedBy")
    if blocked_by is None or not all(v is None or type(v) is list for v in (deps, blocked_by)):
        return deps
    return own_waits(dict(ticket))


def _dependencies(value: Any) -> list[str]:
    items = _block(value)
    if not items:
        return []
    return ["These tickets are already done; their changes are in this worktree:", "", *items]


def _block(value: Any, indent: int = 0) -> list[str]:
    """Markdown lines for a field: a string as a paragraph, collections as bullets."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip("\n")
        return text.splitlines() if text.strip() else []
    if indent >= _MAX_INDENT:
        return [f"{' ' * indent}- {_inline(value)}"]
    if isinstance(value, Mapping):
        return _mapping_bullets(value, indent)
    if _is_collection(value):
        return [line for item in value for line in _item_bullet(item, indent)]
    return [_inline(value)]


def _mapping_bullets(value: Mapping[Any, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, item in value.items():
        if _is_empty(item):
            continue
        if _is_scalar(item) and "\n" not in str(item).strip():
            lines.append(f"{pad}- **{_inline(key)}:** {_inline(item)}")
        elif isinstance(item, str):
            lines.append(f"{pad}- **{_inline(key)}:**")
            lines += [f"{pad}  {line}" for line in item.strip("\n").splitlines()]
        else:
            lines.append(f"{pad}- **{_inline(key)}:**")
            lines += _block(item, indent + 2)
    return lines


def _item_bullet(item: Any, indent: int) -> list[str]:
    pad = " " * indent
    if _is_empty(item):
        return []
    if isinstance(item, str):
        first, *rest = item.strip("\n").splitlines()
        return [f"{pad}- {first}", *(f"{pad}  {line}" for line in rest)]
    if isinstance(item, Mapping):
        pairs = (f"{_inline(k)}: {_inline(v)}" for k, v in item.items() if not _is_empty(v))
        return [f"{pad}- {'; '.join(pairs)}"]
    return [f"{pad}- {_inline(item)}"]


def _inline(value: Any) -> str:
    """One line of text for any value; non-scalars as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return " ".join(value.split())
    if _is_scalar(value):
        return str(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(value)
    return " ".join(text.split())


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _is_collection(value: Any) -> bool:
    return isinstance(value, Sequence | Set) and not isinstance(value, str | bytes | bytearray)


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, Mapping) or _is_collection(value):
        return len(value) == 0
    return False
