"""render_prompt over well-formed and oddly shaped tickets."""

from __future__ import annotations

from typing import Any

import pytest

from sage_tasks.work.prompt import render_prompt

FULL_TICKET: dict[str, Any] = {
    "id": "AUTH-001",
    "title": "JWT validation",
    "priority": "P0",
    "type": "feature",
    "dependencies": ["CORE-1", "CORE-2"],
    "description": "Validate JWTs.\n\nUse `pyjwt`.",
    "docs": ["docs/auth.md", {"path": "docs/api.md", "section": "Tokens"}],
    "acceptance_criteria": ["Rejects expired tokens", "Accepts valid ones\nwith any allowed alg"],
    "git": {"branch": "feature/jwt", "files": ["auth/jwt.py"]},
    "run": "make -C auth jwt",
    "state": "UNPROCESSED",
    "timeout": 600,
    "notes": "mind the clock skew",
}


def section(prompt: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading."""
    start = prompt.index(f"## {heading}")
    end = prompt.find("\n## ", start + 1)
    return prompt[start : end if end >= 0 else len(prompt)]


def test_a_full_ticket_shows_every_part() -> None:
    prompt = render_prompt(FULL_TICKET, run_id="r42", repo_note="Run `make test` to check.")
    assert prompt.startswith("# Ticket AUTH-001: JWT validation\n")
    assert "- **Priority:** P0" in prompt
    assert "- **Type:** feature" in prompt
    assert "- **Run id:** r42" in prompt
    assert "Validate JWTs.\n\nUse `pyjwt`." in section(prompt, "Description")
    docs = section(prompt, "Documentation to read")
    assert "- docs/auth.md" in docs
    assert "- path: docs/api.md; section: Tokens" in docs
    criteria = section(prompt, "Acceptance criteria")
    assert "- Rejects expired tokens" in criteria
    assert "- Accepts valid ones\n  with any allowed alg" in criteria
    dependencies = section(prompt, "Dependencies")
    assert "- CORE-1\n- CORE-2" in dependencies
    git = section(prompt, "Git hints")
    assert "- **branch:** feature/jwt" in git
    assert "  - auth/jwt.py" in git
    assert "mind the clock skew" in section(prompt, "Other ticket fields")
    assert "Run `make test` to check." in section(prompt, "About this repository")


def test_fields_only_sage_tasks_uses_are_not_shown() -> None:
    prompt = render_prompt(FULL_TICKET, run_id="r42")
    assert "make -C auth jwt" not in prompt
    assert "UNPROCESSED" not in prompt
    assert "600" not in prompt


def test_the_instructions_keep_the_agent_inside_the_rules() -> None:
    prompt = render_prompt({"id": "T-1"}, run_id="r")
    rules = section(prompt, "How to work")
    assert "current directory is a git worktree" in rules
    assert "Do not commit" in rules
    assert "Do not edit `.sage/tickets/index.json`" in rules
    assert "non-zero" in rules
    assert "$SAGE_TICKET_FILE" in rules


def test_the_index_path_in_the_instructions_can_be_changed() -> None:
    prompt = render_prompt({"id": "T-1"}, run_id="r", index_path="tickets.json")
    assert "Do not edit `tickets.json`" in prompt


def test_a_minimal_ticket_has_no_empty_sections() -> None:
    prompt = render_prompt({"id": "T-1"}, run_id="r")
    assert prompt.startswith("# Ticket T-1: (untitled)\n")
    assert "- **Priority:** P2" in prompt
    headings = [line for line in prompt.splitlines() if line.startswith("## ")]
    assert headings == ["## How to work"]
    assert prompt.endswith("\n") and not prompt.endswith("\n\n")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("docs", "docs/only-one.md", "docs/only-one.md"),
        ("docs", ["a.md", None, "", "b.md"], "- a.md\n- b.md"),
        ("docs", {"api": "docs/api.md", "design": ["d1.md", "d2.md"]}, "- **design:**\n  - d1.md"),
        ("docs", [["nested", "list"]], '- ["nested", "list"]'),
        ("docs", 42, "42"),
        ("acceptance_criteria", "- it works\n- it is fast", "- it works\n- it is fast"),
        ("acceptance_criteria", ["works", 3, True, 1.5], "- works\n- 3\n- True\n- 1.5"),
        ("acceptance_criteria", {"must": "work", "should": "be fast"}, "- **should:** be fast"),
        ("acceptance_criteria", [{"id": "AC1", "text": "works"}], "- id: AC1; text: works"),
        ("acceptance_criteria", ("a tuple", "of criteria"), "- a tuple\n- of criteria"),
        ("description", ["para one", "para two"], "- para one\n- para two"),
        ("description", {"what": "x", "why": "y\nand z"}, "- **why:**\n  y\n  and z"),
        ("dependencies", "CORE-1", "CORE-1"),
        ("dependencies", [{"id": "CORE-1"}], "- id: CORE-1"),
        ("git", "use branch feature/x", "use branch feature/x"),
        ("git", ["hint one"], "- hint one"),
        ("git", {"branch": None, "base": "main"}, "- **base:** main"),
    ],
)
def test_odd_field_shapes_are_rendered(field: str, value: Any, expected: str) -> None:
    prompt = render_prompt({"id": "T-1", field: value}, run_id="r")
    assert expected in prompt


@pytest.mark.parametrize(
    "ticket",
    [
        {},
        {"id": None, "title": None, "priority": None},
        {"id": 7, "title": ["a", "list"], "priority": {"level": 0}},
        {"id": "T-1", "title": "multi\nline\ttitle"},
        {"id": "T-1", "docs": [], "acceptance_criteria": {}, "git": "", "dependencies": None},
        {"id": "T-1", "docs": [{}], "acceptance_criteria": [[]], "git": {"a": {}}},
        {"id": "T-1", "docs": b"bytes", "description": object()},
        {"id": "T-1", "docs": {"set": {"only-one"}}, "estimate": 3.5},
        {"id": "T-1", "git": {1: "int key", (1, 2): "tuple key"}},
        {"id": "T-1", "acceptance_criteria": ["  \n  ", "\n\nreal\n"]},
        {"id": "T-1", "extra": {"deep": {"deeper": [{"deepest": [1, [2, [3]]]}]}}},
        {"id": "T-1", 5: "non-string key", "description": "   "},
    ],
)
def test_any_ticket_shape_renders_without_error(ticket: dict[Any, Any]) -> None:
    prompt = render_prompt(ticket, run_id="r")
    assert prompt.startswith("# Ticket ")
    assert "## How to work" in prompt


def test_a_self_referencing_field_does_not_crash() -> None:
    loop: list[Any] = ["x"]
    loop.append(loop)
    prompt = render_prompt({"id": "T-1", "docs": loop}, run_id="r")
    assert "- x" in prompt


def test_a_self_referencing_mapping_does_not_crash() -> None:
    loop: dict[str, Any] = {"name": "x"}
    loop["self"] = loop
    prompt = render_prompt({"id": "T-1", "git": loop}, run_id="r")
    assert "- **name:** x" in prompt


def test_a_multi_line_title_stays_on_the_heading_line() -> None:
    prompt = render_prompt({"id": "T-1", "title": "multi\nline\ttitle"}, run_id="r")
    assert prompt.splitlines()[0] == "# Ticket T-1: multi line title"


def test_the_repository_note_is_optional_and_blank_notes_are_left_out() -> None:
    assert "About this repository" not in render_prompt({"id": "T"}, run_id="r", repo_note="  ")


def test_a_rerun_after_a_conflict_names_the_conflicting_paths_first() -> None:
    prompt = render_prompt({"id": "A", "title": "t"}, run_id="r1", conflicts=["src/a.py", "b`c"])
    assert "## Re-run after a merge conflict" in prompt
    assert "- `src/a.py`" in prompt
    assert prompt.index("Re-run after a merge conflict") < prompt.index("How to work")
    assert "merge conflict" not in render_prompt({"id": "A"}, run_id="r1")
