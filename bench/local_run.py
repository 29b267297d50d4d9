"""A whole ``sage-submit --local`` run of many no-op tickets, and each process's peak memory.

    python bench/local_run.py [--tickets 10000] [--levels 20]

An index of ``--tickets`` tickets (command ``true``) in ``--levels`` levels,
each depending on one to three tickets of earlier levels, is committed to a
fresh repository; ``sage-submit --local --json`` runs it to the end (its
private Redis, a ticket worker with a slot per core, the commit worker). While it runs, every
process it started is sampled twice a second; the table gives each one's
peak resident memory (``VmHWM``): ``sage-submit --wait`` itself, the commit
worker's main process (its consumer, where the supervisor runs on the
worker's timer), the commit worker's pool process (where the commits are
made), the ticket worker's processes and Redis. Then it checks the run:
exit 0, every ticket COMPLETED, exactly one commit per ticket on the branch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from commands import make_index  # bench/commands.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:")), 0)
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def role(pid: int, root: int) -> str | None:
    """What the process is, from its command line and parent."""
    try:
        cmd = (Path(f"/proc/{pid}/cmdline").read_bytes()).replace(b"\0", b" ").decode()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    ppid = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:"))
    if "redis-server" in cmd:
        return "redis-server"
    for kind in ("commit", "tickets"):
        if f"sage-worker {kind} " in cmd or f"cli.worker {kind} " in cmd:
            return f"{kind} worker (main)" if ppid == root else f"{kind} worker (pool)"
    return None


def peak_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM")), 0)


class Sampler(threading.Thread):
    """Samples the peak memory of every process below the run, by role."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[str, int] = {}
        self.roles: dict[int, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.sample()

    def sample(self) -> None:
        self.note("sage-submit --wait", peak_kb(self.root))
        for pid in descendants(self.root):
            if pid not in self.roles:
                found = role(pid, self.root)
                if found is None:
                    continue
                self.roles[pid] = found
            self.note(self.roles[pid], peak_kb(pid))

    def note(self, name: str, kb: int) -> None:
        self.peaks[name] = max(self.peaks.get(name, 0), kb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickets", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=20)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sage-bench-local-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    raw = make_index(args.tickets, args.levels, seed=5, extra=2, prefix="N-")
    ids = [t["id"] for t in raw["tickets"]]
    repo = tmp / "repo"
    index = repo / ".sage" / "tickets" / "index.json"
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps(raw, indent=2) + "\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=b", "add", "-A")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-qm", "index")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}
    env["SAGE_WORKDIR"] = str(tmp / "work")
    argv = [str(BIN / "sage-submit"), "--repo", str(repo), "--local", "--json"]
    print(f"{args.tickets} no-op tickets in {args.levels} levels, sage-submit --local")
    start = time.perf_counter()
    with open(tmp / "stderr", "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=tmp)
        sampler = Sampler(proc.pid)
        sampler.start()
        out, _ = proc.communicate()
        sampler.done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    problems = []
    if proc.returncode != 0:
        problems.append(f"sage-submit exited {proc.returncode}")
    summary = json.loads(out) if out.strip() else {}
    if set(summary.get("completed", [])) != set(ids):
        problems.append(f"{len(set(ids) - set(summary.get('completed', [])))} not COMPLETED")
    if summary:
        trailers = git(
            repo,
            "log",
            "--format=%(trailers:key=Sage-Ticket,valueonly)%x00",
            f"{summary['base']}..{summary['branch']}",
        )
        seen = Counter(t.strip() for t in trailers.split("\0") if t.strip())
        twice = [t for t, c in seen.items() if c > 1]
        if twice or set(seen) != set(ids):
            problems.append(f"{len(seen)} tickets committed, twice: {twice[:5]}")
    print(f"{seconds:.0f} s, {args.tickets / seconds:.1f} tickets/s")
    print(f"{'process':<26} {'peak MB':>8}")
    for name, kb in sorted(sampler.peaks.items()):
        print(f"{name:<26} {kb / 1024:8.0f}")
    if problems:
        tail = (tmp / "stderr").read_text(errors="replace")[-3000:]
        raise SystemExit("PROBLEMS: " + "; ".join(problems) + "\n" + tail)
    print(f"every ticket COMPLETED and committed once ({len(ids)} commits)")


if __name__ == "__main__":
    main()
