"""The report of a 100,000-ticket run: written from a real redis-server, opened in Chromium."""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from html.parser import HTMLParser
from pathlib import Path

from sage_tasks.store import keys
from sage_tasks.store.runstate import Phase, RunStore
from sage_tasks.views.report import write_report
from tests.support.browser import WINDOW, dump_dom_and_console, screenshot
from tests.support.builders import run_info
from tests.support.png import read_png

TICKETS = 100_000
BATCHES = 20
RUN_ID = "r-large-report"


class Shapes(HTMLParser):
    """The SVG shapes of each section of the page, as the browser built it."""

    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.rects: dict[str, list[dict[str, str]]] = {}
        self.paths: dict[str, list[dict[str, str]]] = {}
        self.rows = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.section = found.get("id", "")
        elif tag == "rect":
            self.rects.setdefault(self.section, []).append(found)
        elif tag == "path":
            self.paths.setdefault(self.section, []).append(found)
        elif tag == "tr" and self.section == "tickets":
            self.rows += 1


def large_run(store: RunStore) -> list[str]:
    """A finished run of :data:`TICKETS` tickets in :data:`BATCHES` batches; its critical path."""
    rng = random.Random(3)
    per = TICKETS // BATCHES
    ids = [f"T-{i:06d}" for i in range(TICKETS)]
    batches = [ids[b * per : (b + 1) * per] for b in range(BATCHES)]
    deps = {
        t: ([batches[b - 1][rng.randrange(per)]] if b else [])
        + ([batches[b - 2][rng.randrange(per)]] if b > 1 and rng.random() < 0.2 else [])
        for b in range(BATCHES)
        for t in batches[b]
    }
    path = [batches[b][7] for b in range(BATCHES)]
    for before, after in itertools.pairwise(path):
        deps[after] = [before]
    plan = {
        "batches": batches,
        "levels": batches,
        "critical_path": path,
        "deps": deps,
        "blocked": [],
        "tickets": TICKETS,
        "to_run": TICKETS,
    }
    t0 = time.time() - 3600
    info = run_info(
        RUN_ID,
        created=t0,
        status="FINISHED",
        batches=BATCHES,
        tickets=TICKETS,
        started=t0,
        ended=t0 + 3000,
    )
    records = {
        t: {"state": "PENDING", "batch": str(n // per), "attempts": "0"} for n, t in enumerate(ids)
    }
    store.create(info, json.dumps(plan), records)
    pipe = store.r.pipeline(transaction=False)
    for n, tid in enumerate(ids):
        b = n // per
        deferred = n % 997 == 5 and tid not in path
        start = t0 + b * 150 + (n % per) // 16 * 0.5
        slot = n % 16
        pipe.hset(
            keys.ticket(RUN_ID, tid),
            mapping={
                "state": Phase.DEFERRED.value if deferred else Phase.COMPLETED.value,
                "host": f"w{slot // 2}",
                "slot": f"w{slot // 2}#{slot % 2}",
                "started": str(start),
                "duration": "0.4",
                "ended": str(start + 0.45),
                "attempts": "1",
                "reason": "exit code 1" if deferred else "",
                "commit": "" if deferred else f"{n:040x}",
            },
        )
        pipe.hset(
            keys.final(RUN_ID), tid, Phase.DEFERRED.value if deferred else Phase.COMPLETED.value
        )
    pipe.execute()
    return path


def test_the_report_of_a_hundred_thousand_tickets_loads_and_draws_in_chromium(
    store: RunStore, tmp_path: Path
) -> None:
    path = large_run(store)
    page = tmp_path / "report.html"
    write_report(store, RUN_ID, page)
    html = page.read_text(encoding="utf-8")
    assert len(html) < 5_000_000

    dom, console = dump_dom_and_console(page)
    assert console == [], console
    shapes = Shapes()
    shapes.feed(dom)
    # the timeline: every lane drawn, each critical path ticket a bar of its own
    bars = shapes.rects["timeline"]
    assert 16 <= len(bars) < 20_000
    on_path = {b["data-ticket"] for b in bars if "cp" in b["class"].split()}
    assert on_path == set(path)
    assert sum(int(b.get("data-tickets", "1")) for b in bars) == TICKETS
    # a span with a DEFERRED ticket in it is drawn as the worst outcome it holds
    assert {b["class"].split()[1] for b in bars} == {"ok", "df"}
    # the graph by batch: a box per batch, the critical path's edges in blue
    boxes = [r for r in shapes.rects["graph"] if r["class"].split()[0] == "ot"]
    assert len(boxes) == BATCHES
    assert sum("cp" in r["class"].split() for r in boxes) == BATCHES
    edges = [p["class"] for p in shapes.paths["graph"]]
    assert edges.count("ce") == BATCHES - 1 and edges.count("e") == BATCHES - 2
    # the table: what did not complete and the critical path, said so
    deferred = sum(1 for n in range(TICKETS) if n % 997 == 5)
    assert shapes.rows == 1 + deferred + len(path)
    assert re.search(rf"{TICKETS - deferred - len(path)} more are not listed", dom)

    png = tmp_path / "report.png"
    screenshot(page, png)
    image = read_png(png)
    assert (image.width, image.height) == WINDOW
    assert image.variance() > 500, "the screenshot is blank"
    assert image.near((0x2F, 0x9E, 0x44)) > 2000  # COMPLETED green
