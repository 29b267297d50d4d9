"""A run's metrics from its rows: the most tickets at once, counted as a sweep would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sage_tasks.views.summary import RunSummary, TicketRow
from tests.support.builders import run_info

#: start and duration on a coarse grid, so that starts and ends often meet
_spans = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 6).map(float)),
        st.one_of(st.none(), st.integers(-1, 4).map(float)),
    ),
    max_size=30,
)


def _summary(spans: list[tuple[float | None, float | None]]) -> RunSummary:
    info = run_info("r", tickets=len(spans))
    rows = [
        TicketRow(id=f"T{n}", state="COMPLETED", started=s, duration_s=d)
        for n, (s, d) in enumerate(spans)
    ]
    return RunSummary(info, rows, [[r.id for r in rows]])


def _by_events(spans: list[tuple[float | None, float | None]]) -> int:
    """Each start +1 and end -1, in time order, an end before a start at the same time."""
    events: list[tuple[float, int]] = []
    for s, d in spans:
        if s and d:
            events += [(s, 1), (s + d, -1)]
    best = cur = 0
    for _, step in sorted(events):
        cur += step
        best = max(best, cur)
    return best


@settings(max_examples=300, deadline=None)
@given(_spans)
def test_the_most_tickets_at_once_is_the_peak_of_the_event_sweep(
    spans: list[tuple[float | None, float | None]],
) -> None:
    assert _summary(spans).max_parallel == _by_events(spans)


def test_a_ticket_that_starts_as_another_ends_does_not_run_beside_it() -> None:
    assert _summary([(1.0, 2.0), (3.0, 1.0), (3.0, 1.0)]).max_parallel == 2
    assert _summary([(1.0, 2.0), (2.5, 1.0)]).max_parallel == 2
    assert _summary([]).max_parallel == 0
