"""Which definition of a ticket its worker runs: the one submitted with the run's record."""

from __future__ import annotations

import json
from pathlib import Path

from sage_tasks.work.ticket_runner import _ticket_definition
from tests.support.builders import run_info, ticket

INDEX_DOC = {"version": "1.0", "tickets": [ticket("A", "echo from-index", timeout=5)]}


def index_file(tmp_path: Path) -> Path:
    path = tmp_path / "index.json"
    path.write_text(json.dumps(INDEX_DOC, indent=2) + "\n")
    return path


def test_the_submitted_definition_is_used_without_reading_the_index(tmp_path: Path) -> None:
    submitted = ticket("A", "echo as-submitted", retries=2, docs=["a.md"])
    found = _ticket_definition(json.dumps(submitted), tmp_path / "absent.json", run_info("r"), "A")
    assert found is not None
    checked, raw = found
    assert (checked.run, checked.retries) == ("echo as-submitted", 2)
    assert raw == submitted  # every field, for SAGE_TICKET_FILE and the prompt


def test_a_record_without_one_reads_the_index_at_the_head(tmp_path: Path) -> None:
    found = _ticket_definition("", index_file(tmp_path), run_info("r"), "A")
    assert found is not None
    assert (found[0].run, found[0].timeout) == ("echo from-index", 5)
    assert _ticket_definition("", index_file(tmp_path), run_info("r"), "B") is None


def test_a_definition_of_another_ticket_is_not_taken(tmp_path: Path) -> None:
    other = ticket("B", "echo not-mine")
    found = _ticket_definition(json.dumps(other), index_file(tmp_path), run_info("r"), "A")
    assert found is not None and found[0].run == "echo from-index"
