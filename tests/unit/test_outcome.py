"""A ticket's outcome reads and writes the same JSON object as the wire always carried."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sage_tasks.model.outcome import MalformedOutcome, Outcome, OutcomeKind


def test_each_kind_is_written_with_the_keys_and_key_order_of_the_plain_objects_it_replaces() -> (
    None
):
    wire: list[dict[str, Any]] = [
        {"ticket": "A", "outcome": "lost", "reason": "the run is gone from Redis"},
        {"ticket": "A", "outcome": "cancelled"},
        {"ticket": "A", "outcome": "done", "state": "COMPLETED"},
        {"ticket": "A", "outcome": "blocked", "reason": "dependency B is DEFERRED"},
        {"ticket": "A", "outcome": "stale", "attempt_no": 3},
        {
            "ticket": "A",
            "outcome": "failed",
            "reason": "exit code 1",
            "output": "boom\n",
            "output_bytes": 5,
            "duration_s": 0.25,
            "attempt": 1,
            "head": "ab" * 20,
            "rerun": 1,
            "attempt_no": 2,
        },
        {
            "ticket": "A",
            "outcome": "ok",
            "patch": "",
            "files": 0,
            "duration_s": 1,
            "attempt": 2,
            "head": "cd" * 20,
            "attempt_no": 1,
        },
    ]
    for raw in wire:
        outcome = Outcome.from_json(json.loads(json.dumps(raw)))
        assert outcome.kind == raw["outcome"]
        assert json.dumps(outcome.to_json()) == json.dumps(raw)


def test_an_unknown_key_is_written_back_and_an_unknown_kind_counts_as_failed() -> None:
    outcome = Outcome.from_json({"ticket": "A", "outcome": "later", "reason": "x", "new": [1]})
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.to_json() == {"ticket": "A", "outcome": "failed", "reason": "x", "new": [1]}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "ok",
        {"outcome": "ok"},
        {"ticket": 42, "outcome": "ok"},
        {"ticket": "A", "rerun": "1"},
    ],
)
def test_an_object_that_is_no_outcome_is_refused_by_name(raw: object) -> None:
    with pytest.raises(MalformedOutcome):
        Outcome.from_json(raw)
