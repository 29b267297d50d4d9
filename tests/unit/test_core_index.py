"""The index document: round trips that keep everything, edits, views, atomic saves."""

from __future__ import annotations

import gc
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from sage_tasks.core.index import (
    DEFAULT_INDEX_PATH,
    TICKET_ID_RE,
    IndexDocument,
    Priority,
    State,
    Ticket,
    is_valid_ticket_id,
    load_index,
    save_index,
)
from sage_tasks.errors import IndexValidationError

SAGE_INDEX: dict[str, Any] = {
    "version": "1.0",
    "generated": "2025-10-06T10:00:00Z",
    "tickets": [
        {
            "id": "AUTH-001",
            "title": "JWT validation — «ünïcode»",
            "type": "implementation",
            "state": "UNPROCESSED",
            "priority": "P0",
            "dependencies": [],
            "run": "make -C auth jwt",
            "timeout": 600,
            "docs": ["docs/auth.md"],
            "acceptance_criteria": ["tokens verify", "expired tokens fail"],
            "git": {"branch": "auth", "commits": []},
        },
        {
            "id": "AUTH-002",
            "zeta": 1,
            "title": "Refresh tokens",
            "dependencies": ["AUTH-001"],
            "alpha": {"nested": [1, 2.5, None, True]},
        },
    ],
    "metadata": {"owner": "sage", "empty": {}},
}


def dumped(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def test_unknown_fields_and_top_level_keys_survive_load_set_state_dumps_in_order() -> None:
    doc = IndexDocument.loads(dumped(SAGE_INDEX))
    doc.set_state("AUTH-002", State.COMPLETED)
    out = json.loads(doc.dumps())
    assert list(out) == ["version", "generated", "tickets", "metadata"]
    assert out["metadata"] == SAGE_INDEX["metadata"]
    first, second = out["tickets"]
    assert first == SAGE_INDEX["tickets"][0]
    assert list(second) == ["id", "zeta", "title", "dependencies", "alpha", "state"]
    assert second["state"] == "COMPLETED"
    assert second["alpha"] == {"nested": [1, 2.5, None, True]}


def test_an_unchanged_index_is_written_back_byte_for_byte() -> None:
    data = dumped(SAGE_INDEX)
    assert IndexDocument.loads(data).dumps() == data


def test_dumps_uses_two_spaces_keeps_non_ascii_and_ends_with_a_newline() -> None:
    out = IndexDocument.loads(dumped(SAGE_INDEX)).dumps()
    assert out.endswith(b"}\n")
    assert b'\n  "tickets": [\n    {\n      "id": "AUTH-001"' in out
    assert "«ünïcode»".encode() in out


def test_integers_past_64_bits_survive_the_round_trip() -> None:
    data = dumped({"tickets": [{"id": "A", "run": "x", "big": 2**70}]})
    doc = IndexDocument.loads(data)
    assert doc.ticket_json("A")["big"] == 2**70
    assert json.loads(doc.dumps())["tickets"][0]["big"] == 2**70


# (state, reason, expected state field, expected reason field)
SET_STATE = [
    (State.DEFERRED, "exit 1: boom", "DEFERRED", "exit 1: boom"),
    (State.COMPLETED, None, "COMPLETED", None),
    (State.COMPLETED, "ignored", "COMPLETED", None),
    (State.UNPROCESSED, None, "UNPROCESSED", None),
]


@pytest.mark.parametrize(("state", "reason", "field", "kept_reason"), SET_STATE)
def test_set_state_stores_a_deferred_reason_and_removes_it_otherwise(
    state: State, reason: str | None, field: str, kept_reason: str | None
) -> None:
    index = {"tickets": [{"id": "A", "run": "x", "deferred_reason": "old", "z": 1}]}
    doc = IndexDocument.loads(json.dumps(index))
    doc.set_state("A", state, reason)
    item = doc.ticket_json("A")
    assert item["state"] == field
    assert item.get("deferred_reason") == kept_reason
    assert item["z"] == 1
    view = doc.get("A")
    assert view is not None and view.state is state


def test_set_state_keeps_a_built_view_in_step() -> None:
    doc = IndexDocument.loads(dumped(SAGE_INDEX))
    before = doc.get("AUTH-001")
    assert before is not None and before.state is State.UNPROCESSED
    doc.set_state("AUTH-001", State.DEFERRED, "no")
    assert before.model_dump()["state"] is State.DEFERRED
    assert doc.tickets[0] is before


def test_set_state_of_an_unknown_ticket_is_a_key_error() -> None:
    doc = IndexDocument.loads(dumped(SAGE_INDEX))
    with pytest.raises(KeyError):
        doc.set_state("NOPE", State.COMPLETED)
    with pytest.raises(KeyError):
        doc.ticket_json("NOPE")


def test_typed_views_have_defaults_and_keep_unknown_fields() -> None:
    doc = IndexDocument.loads(dumped(SAGE_INDEX))
    assert len(doc) == 2
    assert [t.id for t in doc] == ["AUTH-001", "AUTH-002"]
    second = doc.get("AUTH-002")
    assert isinstance(second, Ticket)
    assert second.state is State.UNPROCESSED
    assert second.priority is Priority.P2
    assert second.run is None and second.retries == 0
    assert second.model_extra == {"zeta": 1, "alpha": {"nested": [1, 2.5, None, True]}}
    assert doc.get("NOPE") is None
    first = doc.tickets[0]
    assert first.timeout == 600 and first.priority is Priority.P0


def test_a_document_built_from_raw_json_works_like_a_loaded_one() -> None:
    raw = json.loads(dumped(SAGE_INDEX))
    doc = IndexDocument(raw, source="x.json")
    assert doc.source == "x.json"
    assert doc.get("AUTH-002") is not None
    doc.set_state("AUTH-001", State.COMPLETED)
    assert doc.raw["tickets"][0]["state"] == "COMPLETED"


# (data, fragment)
MALFORMED = [
    (b'{"tickets": [}', "malformed JSON at line 1, column 14"),
    (b'{\n  "tickets": [\n    {"id": "A",}\n  ]\n}', "malformed JSON at line 3, column 16"),
    (b"", "malformed JSON at line 1, column 1"),
    (b'\xff{"tickets": []}', "not UTF-8"),
    (b'{"tickets": [], "x": Infinity}', "NaN and Infinity"),
]


@pytest.mark.parametrize(("data", "fragment"), MALFORMED)
def test_malformed_json_is_reported_with_line_and_column(data: bytes, fragment: str) -> None:
    with pytest.raises(IndexValidationError) as caught:
        IndexDocument.loads(data, source="i.json")
    assert fragment in caught.value.problems[0].message
    assert caught.value.path == "i.json"


def test_a_str_document_loads_like_bytes() -> None:
    doc = IndexDocument.loads(dumped(SAGE_INDEX).decode())
    assert doc.dumps() == dumped(SAGE_INDEX)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("AUTH-001", True),
        ("a", True),
        ("9.x_y-z", True),
        ("A" * 64, True),
        ("A" * 65, False),
        ("", False),
        ("-A", False),
        (".A", False),
        ("A B", False),
        ("A\n", False),
        ("Ä", False),
        (7, False),
        (None, False),
    ],
)
def test_ticket_ids_follow_the_design_pattern(value: object, valid: bool) -> None:
    assert is_valid_ticket_id(value) is valid
    if isinstance(value, str):
        assert (TICKET_ID_RE.match(value) is not None) is valid


def test_save_index_writes_atomically_and_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    path.write_bytes(dumped(SAGE_INDEX))
    path.chmod(0o640)
    doc = load_index(path)
    assert doc.source == str(path)
    doc.set_state("AUTH-001", State.COMPLETED)
    save_index(doc, path)
    assert load_index(path).ticket_json("AUTH-001")["state"] == "COMPLETED"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_a_failed_save_leaves_the_old_index_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "index.json"
    original = dumped(SAGE_INDEX)
    path.write_bytes(original)
    doc = load_index(path)
    doc.set_state("AUTH-001", State.COMPLETED)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "disk on fire")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        save_index(doc, path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_saving_where_no_index_was_creates_it(tmp_path: Path) -> None:
    doc = IndexDocument.loads(dumped(SAGE_INDEX))
    save_index(doc, tmp_path / "new.json")
    assert (tmp_path / "new.json").read_bytes() == dumped(SAGE_INDEX)


def test_an_unreadable_index_file_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(IndexValidationError) as caught:
        load_index(tmp_path / "missing.json")
    assert "cannot read" in caught.value.problems[0].message


def test_the_default_index_path_is_the_sage_one() -> None:
    assert DEFAULT_INDEX_PATH == ".sage/tickets/index.json"


def test_loading_leaves_the_garbage_collector_as_it_found_it() -> None:
    data = dumped(SAGE_INDEX)
    assert gc.isenabled()
    IndexDocument.loads(data)
    assert gc.isenabled()
    gc.disable()
    try:
        IndexDocument.loads(data)
        assert not gc.isenabled()
    finally:
        gc.enable()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        IndexDocument.loads(data)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
