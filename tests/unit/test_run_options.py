"""A run's options read with one default each, from what a submission stores."""

from __future__ import annotations

from sage_tasks.model.run import RunOptions, Schedule


def test_the_options_a_submission_stores_read_back_and_are_written_with_the_same_keys() -> None:
    stored = {
        "allow_main": True,
        "retry_deferred": False,
        "schedule": "eager",
        "planned": 7,
        "cap": 2,
        "overlaps": True,
        "conflict_retries": 1,
    }
    options = RunOptions.read(stored, to_run=5)
    assert options == RunOptions(
        planned=7,
        schedule=Schedule.EAGER,
        allow_main=True,
        cap=2,
        overlaps=True,
        conflict_retries=1,
    )
    assert options.eager
    assert options.to_json() == stored


def test_a_run_stored_without_options_reads_its_planned_tickets_as_its_tickets_to_run() -> None:
    options = RunOptions.read({}, to_run=5)
    assert options == RunOptions(planned=5)
    assert options.schedule is Schedule.LEVELS and not options.eager
    assert (options.cap, options.conflict_retries, options.allow_main) == (0, 0, False)


def test_values_of_the_wrong_kind_count_as_missing() -> None:
    stored = {"schedule": "sideways", "planned": "x", "cap": None, "conflict_retries": [1]}
    assert RunOptions.read(stored, to_run=3) == RunOptions(planned=3)
    assert RunOptions.read({"planned": "4", "cap": 2.0}, to_run=3) == RunOptions(planned=4, cap=2)
