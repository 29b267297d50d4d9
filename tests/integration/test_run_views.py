"""Seeing a run from outside: ``status`` while it runs and after, the HTML report in a
real browser, and the workers' one-line-per-event logs — all on real processes."""

from __future__ import annotations

import re
import shlex
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import WINDOW, dump_dom, screenshot
from tests.support.builders import Submitted, ticket, writes
from tests.support.fleet import Fleet
from tests.support.gitrepo import make_repo
from tests.support.png import read_png
from tests.support.procs import wait_until
from tests.support.runs import rows

HOST = f"tickets@{socket.gethostname()}"
#: executor output that is markup to rich and to HTML
NASTY_OUTPUT = "[/oops] <b>bold</b> [red]"
#: wide enough that rich does not fold the status table in a captured stdout
WIDE = "220"


@dataclass
class Finished:
    """A run that ended with COMPLETED, DEFERRED and BLOCKED tickets."""

    repo: Path
    queue: str
    commit_node: str
    run_id: str
    data: dict[str, Any]


@pytest.fixture(scope="module")
def finished(shared_fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    # A -> C -> F, B alone, D fails -> E is BLOCKED: three batches
    tickets = [
        ticket("A", "sleep 0.4 && " + writes("A")),
        ticket("B", writes("B")),
        ticket("C", writes("C", ["A"]), ["A"]),
        ticket("D", f"echo {shlex.quote(NASTY_OUTPUT)}; exit 3"),
        ticket("E", writes("E"), ["D"]),
        ticket("F", writes("F", ["C"]), ["C"]),
    ]
    repo = make_repo(
        tmp_path_factory.mktemp("finished") / "repo", {}, {"version": "1.0", "tickets": tickets}
    )
    with shared_fleet.serving(repo) as (queue, node):
        res = shared_fleet.submit(repo, "--wait", "--json", queue=queue)
        assert res.code == 1 and res.data is not None, res.stderr + shared_fleet.logs()
        yield Finished(repo, queue, node, res.data["run_id"], res.data)


def status(fleet: Fleet, repo: Path, queue: str, *args: str) -> Submitted:
    return fleet.submit(repo, "status", *args, queue=queue, COLUMNS=WIDE)


# -- status ------------------------------------------------------------------------------


def test_status_follows_a_run_while_it_runs_and_after(fleet: Fleet, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    wait = f"while [ ! -f {shlex.quote(str(gate))} ]; do sleep 0.1; done; echo g > g.txt"
    tickets = [
        ticket("QUICK", writes("QUICK")),
        ticket("GATED", wait, timeout=120),
        ticket("AFTER", writes("AFTER"), ["GATED"]),
    ]
    repo = make_repo(tmp_path / "repo", {}, {"version": "1.0", "tickets": tickets})
    with fleet.serving(repo) as (queue, _):
        run_id = fleet.launch(repo, queue)
        seen: dict[str, Any] = {}

        def gated_runs_and_quick_is_done() -> bool:
            st = status(fleet, repo, queue, run_id, "--json")
            assert st.code == 0 and st.data is not None, st.stderr
            seen.update(st.data)
            t = rows(st.data)
            return bool(t["GATED"]["state"] == "RUNNING" and t["QUICK"]["state"] == "COMPLETED")

        assert wait_until(gated_runs_and_quick_is_done, 60, 0.5), f"{seen}\n{fleet.logs()}"
        live = rows(seen)
        assert seen["status"] == "RUNNING" and seen["current_batch"] == 0
        assert seen["running"] == ["GATED"]
        gated = live["GATED"]
        assert gated["host"] == HOST and re.fullmatch(rf"{re.escape(HOST)}#[12]", gated["slot"])
        assert gated["attempts"] == 1 and gated["duration_s"] is None
        assert gated["running_s"] > 0 and gated["started"] > 0
        quick = live["QUICK"]
        assert quick["host"] == HOST and quick["attempts"] == 1 and quick["duration_s"] > 0
        assert quick["slot"] != gated["slot"]  # the two ran at once, on two slots
        after = live["AFTER"]
        assert after["state"] == "PENDING" and after["host"] == "" and after["attempts"] == 0

        shown = status(fleet, repo, queue, run_id)
        assert shown.code == 0, shown.stderr
        assert f"run {run_id}: RUNNING" in shown.stdout
        assert "batch 1/2" in shown.stdout and "running: GATED" in shown.stdout
        # where it runs and how fresh its heartbeat is
        assert re.search(rf"running: GATED \(on {re.escape(HOST)}, beat \d+s ago\)", shown.stdout)
        gated_line = next(
            ln for ln in shown.stdout.splitlines() if "GATED" in ln and HOST in ln and "│" in ln
        )
        assert "RUNNING" in gated_line
        assert re.search(r"running \d+\.\ds", gated_line), gated_line
        assert "wall time" not in shown.stdout  # no metrics before the end

        gate.touch()

        def ended() -> bool:
            st = status(fleet, repo, queue, run_id, "--json")
            seen.update(st.data or {})
            return seen.get("status") == "FINISHED"

        assert wait_until(ended, 60, 0.5), f"{seen}\n{fleet.logs()}"
        done = rows(seen)
        assert {t["state"] for t in done.values()} == {"COMPLETED"}
        assert done["GATED"]["duration_s"] > 0 and done["GATED"]["running_s"] is None
        assert done["AFTER"]["host"] == HOST and done["AFTER"]["attempts"] == 1
        assert seen["running"] == []
        shown = status(fleet, repo, queue, run_id)
        assert f"run {run_id}: FINISHED" in shown.stdout and "wall time" in shown.stdout


def test_status_after_the_run_shows_state_host_attempts_duration_and_reason(
    fleet: Fleet, finished: Finished
) -> None:
    st = status(fleet, finished.repo, finished.queue, finished.run_id, "--json")
    assert st.code == 0 and st.data is not None, st.stderr
    t = rows(st.data)
    assert st.data["status"] == "FINISHED"
    for tid in "ABCF":
        assert t[tid]["state"] == "COMPLETED", t[tid]
        assert t[tid]["host"] == HOST and t[tid]["slot"].startswith(HOST + "#")
        assert t[tid]["attempts"] == 1 and t[tid]["duration_s"] > 0 and t[tid]["reason"] == ""
    assert t["A"]["duration_s"] >= 0.4
    assert t["D"]["state"] == "DEFERRED" and t["D"]["attempts"] == 1
    assert t["D"]["reason"].startswith("exit code 3") and NASTY_OUTPUT in t["D"]["reason"]
    assert t["E"]["state"] == "BLOCKED" and t["E"]["attempts"] == 0 and t["E"]["host"] == ""
    assert t["E"]["reason"] == "dependency D is DEFERRED"

    shown = status(fleet, finished.repo, finished.queue, finished.run_id)
    assert shown.code == 0, shown.stderr  # markup in a reason is shown, not interpreted
    assert NASTY_OUTPUT in shown.stdout
    assert "dependency D is DEFERRED" in shown.stdout and "wall time" in shown.stdout


def test_status_without_a_run_id_lists_the_latest_runs_and_shows_the_latest(
    fleet: Fleet, finished: Finished
) -> None:
    st = status(fleet, finished.repo, finished.queue, "--json")
    assert st.code == 0 and st.data is not None, st.stderr
    runs = st.data["runs"]
    assert st.data["run_id"] == runs[0]["run_id"]
    mine = next(r for r in runs if r["run_id"] == finished.run_id)
    assert mine["status"] == "FINISHED" and mine["done"] == mine["planned"] == 6
    shown = status(fleet, finished.repo, finished.queue)
    assert shown.code == 0 and "latest runs" in shown.stdout and finished.run_id in shown.stdout
    unknown = status(fleet, finished.repo, finished.queue, "nosuchrun")
    assert unknown.code == 2


# -- the report in a browser ---------------------------------------------------------------


class Bars(HTMLParser):
    """The bars of the timeline section of a page: one dict of attributes per ``<rect>``."""

    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.bars: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.section = found.get("id", "")
        elif tag == "rect" and self.section == "timeline":
            self.bars.append(found)


def test_the_report_opens_in_chromium_with_one_bar_per_ticket_that_ran(
    fleet: Fleet, finished: Finished, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    made = fleet.submit(
        finished.repo, "report", finished.run_id, "--html", str(page), queue=finished.queue
    )
    assert made.code == 0, made.stderr
    st = status(fleet, finished.repo, finished.queue, finished.run_id, "--json")
    assert st.data is not None
    ran = {tid: t for tid, t in rows(st.data).items() if t["started"]}
    assert set(ran) == set("ABCDF")

    parser = Bars()
    parser.feed(dump_dom(page))
    bars = {b["data-ticket"]: b for b in parser.bars}
    assert len(parser.bars) == len(bars) == len(ran) and set(bars) == set(ran)
    for tid, bar in bars.items():
        outcome = "df" if tid == "D" else "ok"
        assert bar["class"].split()[:2] == ["bar", outcome], bar
        assert float(bar["width"]) >= 1
    lanes = {t["slot"]: bars[tid]["y"] for tid, t in ran.items()}
    assert len(set(lanes.values())) == len(lanes)  # one lane per worker slot
    for tid, t in ran.items():
        assert bars[tid]["y"] == lanes[t["slot"]]
    assert "cp" in bars["A"]["class"].split() and "cp" in bars["F"]["class"].split()

    png = tmp_path / "report.png"
    screenshot(page, png)
    image = read_png(png)
    assert (image.width, image.height) == WINDOW
    assert image.variance() > 500, "the screenshot is blank"
    assert len(image.colours()) > 50
    assert image.near((0x2F, 0x9E, 0x44)) > 2000  # COMPLETED green: bars, nodes, chips
    assert image.near((0xE8, 0xA3, 0x17)) > 300  # DEFERRED amber


# -- logs ---------------------------------------------------------------------------------


def events(log: str, run_id: str, ticket_id: str, state: str) -> list[str]:
    pattern = rf"^.*sage\.ticket run={run_id} ticket={ticket_id} host=\S+ state={state}\b.*$"
    return re.findall(pattern, log, re.M)


def test_workers_log_one_structured_line_per_ticket_event(fleet: Fleet, finished: Finished) -> None:
    rid = finished.run_id
    tickets_log, commit_log = fleet.log("tickets"), fleet.log(finished.commit_node)
    for tid in "ABCDF":
        (started,) = events(tickets_log, rid, tid, "RUNNING")
        assert f"host={HOST} " in started
        assert re.search(rf"slot={re.escape(HOST)}#[12]\b", started), started
        (ran,) = events(tickets_log, rid, tid, "RAN")
        assert re.search(r"duration_s=\d+\.\d{3}\b", ran), ran
        (queued,) = events(commit_log, rid, tid, "QUEUED")
        assert re.search(r"batch=[123]\b", queued), queued
    for tid in "ABCF":
        (done,) = events(commit_log, rid, tid, "COMPLETED")
        assert re.search(r"duration_s=\d+\.\d{3} .*commit=[0-9a-f]{12}", done), done
    (deferred,) = events(commit_log, rid, "D", "DEFERRED")
    assert re.search(r'reason="exit code 3; output ends[^:]*: \[/oops\] <b>', deferred), deferred
    (blocked,) = events(commit_log, rid, "E", "BLOCKED")
    assert 'reason="dependency D is DEFERRED"' in blocked
    assert not events(tickets_log, rid, "E", "RUNNING")
