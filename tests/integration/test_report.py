"""The HTML report of a run, written from its record in a real redis-server."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from sage_tasks.cli.submit import cli
from sage_tasks.errors import UnknownRun
from sage_tasks.store.runstate import Phase, RunStatus, RunStore
from sage_tasks.views.report import render_html, write_report
from sage_tasks.views.summary import RunSummary, TicketRow
from tests.support.builders import run_info
from tests.support.redis_server import RedisServer

RUN_ID = "r-20260101-report"
REPO = "/srv/repos/demo"
#: executor output, as a DEFERRED reason carries it: markup, colours, non-ASCII
DEFERRED_REASON = (
    "exit status 1\n"
    "--- output tail ---\n"
    "<script>alert('owned')</script>\n"
    "\x1b[31mGröße überschritten\x1b[0m — ✗ 失败 & done\n"
)
BLOCKED_REASON = "depends on T-2, which ended DEFERRED"
PLANNED_BLOCKED_REASON = "depends on a DEFERRED ticket that is not retried"

#: T-1 -> T-3 (critical path), T-2 (DEFERRED) -> T-4 (BLOCKED); T-5 blocked when planned
DEPS: dict[str, list[str]] = {"T-1": [], "T-2": [], "T-3": ["T-1"], "T-4": ["T-2"]}
PLAN = {
    "batches": [["T-1", "T-2"], ["T-3", "T-4"]],
    "batch_levels": [1, 2],
    "levels": [["T-1", "T-2"], ["T-3", "T-4"]],
    "critical_path": ["T-1", "T-3"],
    "critical_path_seconds": 5.0,
    "deps": DEPS,
    "blocked": ["T-5"],
    "completed": ["T-0"],
    "deferred": ["T-9"],
    "tickets": 7,
    "to_run": 4,
    "parallel": None,
    "stats": {},
}
ALL_TICKETS = ["T-1", "T-2", "T-3", "T-4", "T-5"]


class Document(HTMLParser):
    """Counts the tags of a page and collects every URL it names."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action")]


def parse(page: str) -> Document:
    doc = Document()
    doc.feed(page)
    doc.close()
    return doc


def finished_run(store: RunStore) -> None:
    """A run that finished with COMPLETED, DEFERRED and BLOCKED tickets."""
    t0 = time.time() - 60
    info = run_info(
        RUN_ID,
        repo=REPO,
        repo_url=REPO,
        branch="sage/run-report",
        index_path="tickets/index.json",
        batches=2,
        tickets=7,
        to_run=4,
        created=t0,
        status="RUNNING",
        base_sha="a" * 40,
        head="b" * 40,
        started=t0 + 1,
        submitted_by="laptop",
    )
    tickets = {
        tid: {
            "state": "PENDING",
            "deps": json.dumps(DEPS[tid]),
            "batch": str(n // 2),
            "attempts": "0",
        }
        for n, tid in enumerate(ALL_TICKETS[:4])
    }
    tickets["T-5"] = {
        "state": "BLOCKED",
        "reason": PLANNED_BLOCKED_REASON,
        "attempts": "0",
        "ended": str(t0),
    }
    store.create(info, json.dumps(PLAN), tickets)
    ran = {
        "T-1": ("worker-a", "worker-a#1", t0 + 2, 3.0),
        "T-2": ("worker-b", "worker-b#1", t0 + 2, 1.5),
        "T-3": ("worker-a", "worker-a#1", t0 + 6, 2.0),
    }
    for tid, (host, slot, started, duration) in ran.items():
        store.set_ticket(
            RUN_ID, tid, host=host, slot=slot, started=started, duration=duration, attempts=1
        )
    store.record_batch(RUN_ID, 0, tickets=["T-1", "T-2"], sent=t0 + 1.5, ended=t0 + 5.5)
    store.record_batch(RUN_ID, 1, tickets=["T-3", "T-4"], sent=t0 + 5.6, ended=t0 + 8.5)
    store.finish_ticket(RUN_ID, "T-1", Phase.COMPLETED, commit="c1" * 20)
    store.finish_ticket(RUN_ID, "T-2", Phase.DEFERRED, reason=DEFERRED_REASON)
    store.finish_ticket(RUN_ID, "T-4", Phase.BLOCKED, reason=BLOCKED_REASON)
    store.finish_ticket(RUN_ID, "T-3", Phase.COMPLETED, commit="c3" * 20)
    store.update(RUN_ID, head="d" * 40)
    store.finish(RUN_ID, REPO, status=RunStatus.FINISHED)


@pytest.fixture
def page(store: RunStore, tmp_path: Path) -> str:
    finished_run(store)
    out = tmp_path / "report.html"
    write_report(store, RUN_ID, out)
    return out.read_text(encoding="utf-8")


def section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, f"no {name} section"
    return match.group(1)


def test_the_report_is_one_document_that_fetches_nothing(page: str) -> None:
    doc = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    assert doc.tags["html"] == doc.tags["head"] == doc.tags["body"] == 1
    assert "script" not in doc.tags and "link" not in doc.tags
    assert doc.tags["style"] == 1
    assert all(url.startswith("#") for url in doc.urls), doc.urls
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "url(" not in page and "@import" not in page


def test_the_report_names_every_ticket_and_the_run(page: str) -> None:
    table = section(page, "tickets")
    for tid in ALL_TICKETS:
        assert f"<code>{tid}</code>" in table
    assert RUN_ID in page and "sage/run-report" in page
    assert "a" * 12 in page and "d" * 12 in page  # base -> head
    assert "c3" * 6 in table  # short commit sha
    assert "FINISHED" in page


def test_reasons_from_executor_output_are_escaped_and_shown_in_full(page: str) -> None:
    assert "<script" not in page
    reasons = section(page, "reasons")
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in reasons
    assert "Größe überschritten — ✗ 失败 &amp; done" in reasons  # colour codes dropped
    assert "\x1b" not in page
    assert "--- output tail ---" in reasons
    assert BLOCKED_REASON in reasons and PLANNED_BLOCKED_REASON in reasons
    assert "T-9" in reasons  # DEFERRED earlier, not retried


def test_the_critical_path_is_listed_in_order_with_its_total(page: str) -> None:
    path = section(page, "critical-path")
    assert path.index("T-1") < path.index("T-3")
    assert "T-2" not in path
    assert "total 5.0s" in path and "planned 5.0s" in path


def test_the_timeline_draws_a_bar_per_ticket_that_ran_grouped_by_host(page: str) -> None:
    timeline = section(page, "timeline")
    assert "<svg" in timeline
    assert timeline.count("<rect") == 3  # T-4 and T-5 never ran
    assert timeline.index("worker-a") < timeline.index("T-1:") < timeline.index("T-3:")


def bars(section_html: str) -> dict[str, dict[str, str]]:
    """The attributes of each bar of a timeline, by ticket id."""
    found = {}
    for tag in re.findall(r"<rect [^>]*>", section_html):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        found[attrs["data-ticket"]] = attrs
    return found


def test_each_worker_slot_is_one_lane_and_bars_are_coloured_by_outcome(page: str) -> None:
    drawn = bars(section(page, "timeline"))
    assert set(drawn) == {"T-1", "T-2", "T-3"}
    assert drawn["T-1"]["y"] == drawn["T-3"]["y"] != drawn["T-2"]["y"]  # worker-a#1 ran both
    assert float(drawn["T-1"]["x"]) + float(drawn["T-1"]["width"]) <= float(drawn["T-3"]["x"])
    assert drawn["T-1"]["class"] == drawn["T-3"]["class"] == "bar ok cp"  # on the critical path
    assert drawn["T-2"]["class"] == "bar df"
    assert "slot 1" in section(page, "timeline")


def test_the_timeline_marks_batch_starts_and_ends_and_links_the_critical_path(page: str) -> None:
    timeline = section(page, "timeline")
    for n in (1, 2):
        assert f"batch {n} starts" in timeline and f"batch {n} ends" in timeline
    assert timeline.count('class="cpl"') == 1  # T-1 -> T-3


def test_the_graph_draws_every_ticket_and_highlights_the_critical_edge(page: str) -> None:
    graph = section(page, "graph")
    assert "<svg" in graph
    for tid in ALL_TICKETS:
        assert f"<title>{tid}:" in graph
    assert graph.count('class="e"') == 1  # T-2 -> T-4
    assert graph.count('class="ce"') == 1  # T-1 -> T-3


def test_writing_again_replaces_the_report_and_leaves_no_temporary_file(
    store: RunStore, tmp_path: Path
) -> None:
    finished_run(store)
    out = tmp_path / "reports" / "run.html"
    write_report(store, RUN_ID, out)
    out.write_text("stale")
    write_report(store, RUN_ID, out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["run.html"]


def test_an_unknown_run_raises_unknown_run_and_writes_nothing(
    store: RunStore, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    with pytest.raises(UnknownRun):
        write_report(store, "no-such-run", out)
    assert not out.exists()


def test_an_eager_run_draws_no_batch_boundaries() -> None:
    t0 = 1_700_000_000.0
    rows = [
        TicketRow(
            id=t,
            state="COMPLETED",
            host="w",
            slot="w#1",
            attempts=1,
            duration_s=1.0,
            batch=-1,
            started=t0 + n,
            ended=t0 + n + 1.5,
        )
        for n, t in enumerate(["E-1", "E-2"])
    ]
    info = run_info(
        "eager", created=t0, status="FINISHED", tickets=2, ended=t0 + 5, extra={"schedule": "eager"}
    )
    summary = RunSummary(info, rows, [["E-1"], ["E-2"]], ["E-1", "E-2"])
    page = render_html(summary, {"levels": [["E-1"], ["E-2"]], "deps": {"E-2": ["E-1"]}})
    timeline = section(page, "timeline")
    assert timeline.count("<rect") == 2 and 'class="batch' not in timeline
    assert "no batch boundaries" in timeline
    assert '<td class="n">—</td>' in section(page, "tickets")  # no batch number either


def test_a_run_of_two_thousand_tickets_stays_a_readable_size() -> None:
    n, width = 2000, 50
    ids = [f"T-{i:04d}" for i in range(n)]
    levels = [ids[i : i + width] for i in range(0, n, width)]
    deps = {
        t: ([levels[k - 1][j]] if k else [])
        for k, lv in enumerate(levels)
        for j, t in enumerate(lv)
    }
    t0 = 1_700_000_000.0
    rows = [
        TicketRow(
            id=t,
            state="COMPLETED",
            host=f"w{i % 8}",
            attempts=1,
            duration_s=2.0,
            commit="f" * 40,
            batch=i // width,
            started=t0 + 3 * (i // width),
            ended=t0 + 3 * (i // width) + 2.5,
        )
        for i, t in enumerate(ids)
    ]
    info = run_info(
        "big", created=t0, status="FINISHED", batches=len(levels), tickets=n, ended=t0 + 130
    )
    path = [lv[0] for lv in levels]
    summary = RunSummary(info, rows, levels, path)
    page = render_html(summary, {"levels": levels, "deps": deps, "critical_path": path})
    assert len(page) < 3_000_000
    svg_sizes = [int(h) for h in re.findall(r'<svg width="\d+" height="(\d+)"', page)]
    assert len(svg_sizes) == 2 and max(svg_sizes) < 5000
    assert all(f"<code>{t}</code>" in page for t in ids)


def test_sage_submit_report_writes_the_page_and_exits_2_for_an_unknown_run(
    store: RunStore, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAGE_RESULT_BACKEND", raising=False)
    finished_run(store)
    out = tmp_path / "cli.html"
    runner = CliRunner()
    done = runner.invoke(cli, ["report", RUN_ID, "--html", str(out), "--broker", redis_server.url])
    assert done.exit_code == 0, done.output
    assert "T-5" in out.read_text(encoding="utf-8")
    unknown = runner.invoke(
        cli, ["report", "nope", "--html", str(out), "--broker", redis_server.url]
    )
    assert unknown.exit_code == 2
