"""``make reliability``: faults inflicted and survived, bad inputs refused, load held.

Runs the fault tier, the security tier and the multi-host tier on real
processes, reads their results from pytest's JUnit XML, and prints one table:
each row is a test (its name is the sentence it proves) and whether it held.
Then runs the load benchmark (2,000 no-op tickets in 200 batches unless
``--quick``) and prints its figures: tickets/s, broker peak memory, largest
message, and the keys left after the run.

    python bench/reliability.py [--quick] [--no-load]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIERS = [
    ("faults inflicted", "survived", ["tests/slow/test_faults.py"]),
    (
        "bad input and secure paths",
        "held",
        ["tests/integration/test_security.py", "tests/integration/test_flower.py"],
    ),
    ("multi-host (network namespaces)", "survived", ["tests/slow/test_multihost.py"]),
]


def sentence(name: str) -> str:
    """``test_a_thing_is_done[param]`` -> ``a thing is done [param]``."""
    base, _, param = name.partition("[")
    text = base.removeprefix("test_").replace("_", " ")
    return f"{text} [{param}" if param else text


def run_tier(paths: list[str]) -> list[tuple[str, str, float]]:
    """(test, outcome, seconds) for every test in ``paths``."""
    present = [p for p in paths if (ROOT / p).exists()]
    if not present:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "results.xml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                "slow or not slow",
                f"--junitxml={xml}",
                *present,
            ],
            cwd=ROOT,
            check=False,
        )
        if not xml.exists():
            return [(p, "ERROR (no results)", 0.0) for p in present]
        rows = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = "ok"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "FAILED"
                elif child.tag == "skipped":
                    outcome = "SKIPPED"
            rows.append((sentence(case.get("name", "?")), outcome, float(case.get("time", 0))))
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small load run (200 tickets)")
    parser.add_argument("--no-load", action="store_true", help="skip the load benchmark")
    args = parser.parse_args()
    started = time.monotonic()
    results = [(title, good, run_tier(paths)) for title, good, paths in TIERS]
    load_out = ""
    load_ok = True
    if not args.no_load:
        cmd = [sys.executable, str(ROOT / "bench" / "e2e.py")] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        load_out = proc.stdout + (proc.stderr if proc.returncode else "")
        load_ok = proc.returncode == 0 and "correctness: FAILED" not in proc.stdout

    print("\n" + "=" * 100)
    print("sage-tasks reliability report")
    print("=" * 100)
    failed = 0
    for title, good, rows in results:
        held = sum(1 for _, o, _ in rows if o == "ok")
        print(f"\n{title}: {held}/{len(rows)} {good}")
        for name, outcome, secs in rows:
            mark = good.split(" /")[0] if outcome == "ok" else outcome
            print(f"  {mark:>9}  {secs:6.1f}s  {name}")
            failed += outcome != "ok"
        if not rows:
            print("  (no tests found)")
            failed += 1
    if not args.no_load:
        print(f"\nload held: {'yes' if load_ok else 'NO'}")
        keep = (
            "tickets/s",
            "target",
            "peak memory",
            "largest message",
            "keys left",
            "by shape",
            "FINDING",
            "correctness",
            "raw Celery chords, mean",
            "sage-tasks,",
        )
        for line in load_out.splitlines():
            if any(k in line for k in keep):
                print(f"  {line.strip()}")
        failed += not load_ok
    print(f"\n{failed} problem(s); {time.monotonic() - started:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
