"""Tickets' ``paths``: validation, glob overlap (exact, checked against regexes), plan grouping."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sage_tasks.core.index import IndexDocument
from sage_tasks.core.paths import globs_overlap, overlap_witness, sets_overlap
from sage_tasks.core.plan import build_plan
from sage_tasks.errors import IndexValidationError


def reference(glob: str) -> re.Pattern[str]:
    """The glob as a regex, written independently of the automaton (no classes)."""
    segs = [s for s in glob.strip("/").split("/") if s not in ("", ".")]
    out = ""
    for n, seg in enumerate(segs):
        last = n == len(segs) - 1
        if seg == "**":
            out += ".*" if last else "(?:.*/)?"
            continue
        out += "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in seg)
        if not last:
            out += "/"
    return re.compile(out + "(?:/.*)?", re.DOTALL)


segment = st.one_of(
    st.just("**"),
    st.text(alphabet="ab*?", min_size=1, max_size=3).filter(lambda s: s != "**"),
)
globs = st.lists(segment, min_size=1, max_size=4).map("/".join)
paths = st.text(alphabet="ab/x", min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(globs, globs)
@example("a/**/b", "a/b")
@example("**", "a")
@example("a*", "*b/a")
def test_overlap_is_symmetric_and_its_witness_is_covered_by_both(a: str, b: str) -> None:
    witness = overlap_witness(a, b)
    assert globs_overlap(a, b) == globs_overlap(b, a)
    if witness is not None:
        assert reference(a).fullmatch(witness), (a, b, witness)
        assert reference(b).fullmatch(witness), (a, b, witness)


@st.composite
def glob_covering(draw: st.DrawFn, path: str) -> str:
    """A glob that covers ``path`` by construction: wildcards for some characters and
    segments, ``**`` for others, and perhaps only a leading directory of it."""
    segs = path.split("/")
    keep = draw(st.integers(min_value=1, max_value=len(segs)))
    out = []
    for seg in segs[:keep]:
        how = draw(st.sampled_from(["same", "chars", "star", "double"]))
        if how == "star":
            out.append("*")
        elif how == "double":
            out.append("**")
        elif how == "chars":
            out.append("".join(draw(st.sampled_from([c, "?", "*"])) for c in seg))
        else:
            out.append(seg)
    return "/".join(out)


@settings(max_examples=400, deadline=None)
@given(st.data(), st.lists(st.text(alphabet="ab", min_size=1, max_size=3), min_size=1, max_size=4))
def test_a_path_covered_by_both_globs_means_they_overlap(
    data: st.DataObject, segs: list[str]
) -> None:
    path = "/".join(segs)
    a, b = data.draw(glob_covering(path)), data.draw(glob_covering(path))
    assert reference(a).fullmatch(path) and reference(b).fullmatch(path), (a, b, path)
    assert globs_overlap(a, b), (a, b, path)


@settings(max_examples=200, deadline=None)
@given(globs)
def test_a_glob_overlaps_itself(a: str) -> None:
    assert globs_overlap(a, a)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("src/*.py", "src/main.py", True),
        ("src/*.py", "src/pkg/main.py", False),  # "*" stays within a segment
        ("src/**/*.py", "src/pkg/main.py", True),  # "**" crosses them
        ("src/**", "src", True),
        ("docs", "docs/index.md", True),  # a directory covers what is under it
        ("docs", "docsite/index.md", False),
        ("*.md", "docs/a.md", False),
        ("**/*.md", "README.md", True),
        ("a/**/b", "a/b", True),
        ("a/[xy]", "a/z", True),  # classes: conservative
        ("lib/a.c", "lib/b.c", False),
        ("./lib//a.c", "lib/a.c", True),
    ],
)
def test_overlap_table(a: str, b: str, overlap: bool) -> None:
    assert globs_overlap(a, b) is overlap


def test_glob_sets_overlap_when_any_pair_does() -> None:
    assert sets_overlap(["x/*", "docs/**"], ["src", "docs/api/index.md"])
    assert not sets_overlap(["x/*", "docs/**"], ["src", "doc"])


def plan_of(tickets: list[dict[str, Any]], **kwargs: Any) -> Any:
    return build_plan(IndexDocument.loads(json.dumps({"tickets": tickets})), **kwargs)


def t(tid: str, paths: Any = None, deps: list[str] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": tid, "run": "true", "dependencies": deps or []}
    if paths is not None:
        item["paths"] = paths
    return item


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ("src/**", "ticket A: 'paths' must be a list of relative globs, got 'src/**'"),
        (["/etc/passwd"], "ticket A: 'paths'[0] '/etc/passwd' is absolute"),
        (["ok", ""], "ticket A: 'paths'[1] '' is empty"),
        (["../up"], "ticket A: 'paths'[0] '../up' leaves the repository"),
        ([7], "ticket A: 'paths'[0] 7 is not a string"),
    ],
)
def test_bad_paths_name_the_ticket_and_the_field(paths: Any, message: str) -> None:
    with pytest.raises(IndexValidationError) as err:
        plan_of([t("A", paths), t("B")])
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_overlapping_tickets_of_one_level_go_to_different_batches() -> None:
    plan = plan_of(
        [
            t("A", ["src/**"]),
            t("B", ["src/app.py"]),
            t("C", ["docs"]),
            t("D", ["tests/*"]),
            t("E", None, ["A"]),
        ]
    )
    assert plan.batches == [["A", "C", "D"], ["B"], ["E"]]
    assert plan.batch_levels == [1, 1, 2]
    assert plan.overlaps == {"A": ["B"], "B": ["A"]}
    assert plan.serialized == [["A", "B"]]
    assert plan.to_json()["serialized"] == [["A", "B"]]


def test_tickets_ordered_by_a_dependency_are_not_reported_as_serialized() -> None:
    plan = plan_of([t("A", ["x"]), t("B", ["x/y"], ["A"])])
    assert plan.batches == [["A"], ["B"]]
    assert plan.overlaps == {"A": ["B"], "B": ["A"]} and plan.serialized == []


def test_with_parallel_groups_stay_within_n_and_apart() -> None:
    tickets = [t(f"T{i}", [f"f{i % 2}"]) for i in range(6)]
    plan = plan_of(tickets, parallel=2, schedules=True)
    assert plan.batches == [["T0", "T1"], ["T2", "T3"], ["T4", "T5"]]
    plan = plan_of([t(f"T{i}", ["same"]) for i in range(3)], schedules=True)
    assert plan.batches == [["T0"], ["T1"], ["T2"]]
    assert plan.schedules.eager == plan.schedules.levels == 3


def test_without_paths_the_batches_are_unchanged() -> None:
    plan = plan_of([t(f"T{i}") for i in range(5)], parallel=2)
    assert plan.batches == [["T0", "T1"], ["T2", "T3"], ["T4"]]
    assert plan.overlaps == {} and plan.serialized == []
