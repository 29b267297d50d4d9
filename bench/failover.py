"""Failover: how long a ticket whose host dies waits before it runs again elsewhere.

    python bench/failover.py [--vt 40] [--heartbeat-timeout 30]

A ticket worker host ("doomed") takes a long ticket and is killed whole
(main process, pool processes and the ticket's command, SIGKILL); a second
host ("survivor") is idle. The time from the kill to the ticket's command
starting on the survivor is measured twice, in the same run, on real
processes (redis-server, Celery workers, git):

- **heartbeat timeout** (what a fleet does now): the visibility timeout is an
  hour and the heartbeat settings are the defaults (beat every 5 s,
  timeout ``--heartbeat-timeout``, supervisor pass every 5 s);
- **visibility timeout** (the baseline it replaces): the supervisor is kept
  out of the way, so only the broker's redelivery after the visibility
  timeout ``--vt`` brings the ticket back (a stale heartbeat then lets the
  redelivery run it).

It prints both, their ratio, and what the baseline costs at the default
visibility timeout of a fleet with the default ticket timeout (an hour plus
ten minutes), which the heartbeat timeout does not depend on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sage_tasks.config import DEFAULT_TICKET_TIMEOUT, VISIBILITY_SLACK  # noqa: E402
from tests.support.builders import ticket, writes  # noqa: E402
from tests.support.faults import Background, kill_host  # noqa: E402
from tests.support.fleet import Fleet, unique_queue  # noqa: E402
from tests.support.gitrepo import make_repo  # noqa: E402
from tests.support.procs import wait_until  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

#: longest a measurement may take before the benchmark gives up
GIVE_UP_S = 600


def command(marks: Path) -> str:
    """Mark where and when it starts (its process group id); long on the doomed host."""
    return (
        f'echo $$ > {marks}/start.$WORKER && if [ "$WORKER" = doomed ]; then sleep 3000; fi'
        f" && {writes('LONG')}"
    )


def measure(root: Path, **env: str) -> float:
    """Seconds from the doomed host's death to the ticket's start on the survivor."""
    marks = root / "marks"
    marks.mkdir(parents=True)
    server = RedisServer(root / "redis")
    server.start()
    fleet = Fleet(root, server, **env)
    try:
        index = {"version": "1.0", "tickets": [ticket("LONG", command(marks), timeout=3000)]}
        repo = make_repo(root / "repo", {}, index)
        queue = unique_queue()
        fleet.start_tickets("doomed", concurrency=1, WORKER="doomed")
        fleet.start_commit(repo, queue)
        if not wait_until(lambda: " ready." in fleet.log("doomed"), 60):
            raise RuntimeError(f"the doomed worker did not start:\n{fleet.logs()}")
        run = Background(fleet, repo, "--wait", "--json", queue=queue)
        started = marks / "start.doomed"
        if not wait_until(started.exists, 60):
            raise RuntimeError(f"the ticket did not start:\n{fleet.logs()}")
        fleet.start_tickets("survivor", concurrency=1, WORKER="survivor")
        if not wait_until(lambda: " ready." in fleet.log("survivor"), 60):
            raise RuntimeError(f"the survivor did not start:\n{fleet.logs()}")
        group = int(started.read_text().strip())
        kill_host(fleet, "doomed")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        died = time.monotonic()
        if not wait_until((marks / "start.survivor").exists, GIVE_UP_S, interval=0.05):
            raise RuntimeError(f"the ticket never ran again:\n{fleet.logs()}")
        restarted = time.monotonic() - died
        res = run.result(timeout=120)
        if res.code != 0:
            raise RuntimeError(f"the run ended {res.code}:\n{res.stderr}\n{fleet.logs()}")
        return restarted
    finally:
        fleet.stop()
        server.stop(kill=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vt", type=float, default=40.0, help="the baseline's visibility timeout")
    parser.add_argument("--heartbeat-timeout", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sage-failover-") as tmp:
        heartbeat = measure(
            Path(tmp) / "heartbeat",
            SAGE_VISIBILITY_TIMEOUT="3600",
            SAGE_TICKET_TIMEOUT="3000",
            SAGE_HEARTBEAT_INTERVAL="5",
            SAGE_HEARTBEAT_TIMEOUT=f"{args.heartbeat_timeout:g}",
            SAGE_SUPERVISOR_INTERVAL="5",
        )
        baseline = measure(
            Path(tmp) / "visibility",
            SAGE_VISIBILITY_TIMEOUT=f"{args.vt:g}",
            SAGE_TICKET_TIMEOUT="3000",
            SAGE_HEARTBEAT_INTERVAL="5",
            SAGE_HEARTBEAT_TIMEOUT="20",
            SAGE_SUPERVISOR_INTERVAL="86400",  # its first pass would come after a day
        )
    default_vt = DEFAULT_TICKET_TIMEOUT + VISIBILITY_SLACK
    print("death of a host -> its ticket running again elsewhere")
    print(
        f"  heartbeat timeout {args.heartbeat_timeout:g} s "
        f"(visibility timeout 3600 s):        {heartbeat:7.1f} s"
    )
    print(f"  visibility timeout {args.vt:g} s (baseline, same run):        {baseline:7.1f} s")
    print(
        f"  ratio baseline / heartbeat:                               {baseline / heartbeat:7.2f}x"
    )
    at_default = default_vt + baseline - args.vt
    print(
        f"  the baseline at the default visibility timeout ({default_vt} s = ticket timeout "
        f"{DEFAULT_TICKET_TIMEOUT} s + {VISIBILITY_SLACK} s): about "
        f"{at_default:.0f} s, {at_default / heartbeat:.0f}x"
    )


if __name__ == "__main__":
    main()
