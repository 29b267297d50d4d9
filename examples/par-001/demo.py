"""``make demo``: run the 29 PAR-001 tickets on a private Redis and local workers.

Builds the demo repository in a temporary folder (kept, so you can look at
it), runs ``sage-submit --repo <it> --local --parallel 4 --report <folder>/report.html``
(``--local`` starts the repository's private Redis and the workers, follows
the run, then stops them; the run's history stays), prints the wall time,
where to find the result and its report (sage-submit itself ends with the
commands that show the run again), and exits with sage-submit's code.

Any arguments replace ``--parallel 4``, e.g. ``demo.py --parallel auto`` (half
the cores, as the seed chose) or ``demo.py --schedule eager``. The tickets
mostly wait, so four slots help even on a two-core machine.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from build_repo import build


def sage_submit() -> str:
    """The sage-submit beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "sage-submit"
    return str(beside) if beside.exists() else shutil.which("sage-submit") or "sage-submit"


def run_branches(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "for-each-ref", "--format=%(refname:short)", "refs/heads"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [b for b in out.split() if b != "main"]


def main(argv: list[str]) -> int:
    repo = build(Path(tempfile.mkdtemp(prefix="sage-par-001-")) / "repo")
    report = repo.parent / "report.html"
    print(f"demo repository: {repo} (29 PAR-001 tickets on main)")
    cmd = [sage_submit(), "--repo", str(repo), "--local", *(argv or ["--parallel", "4"])]
    if "--report" not in argv:
        cmd += ["--report", str(report)]
    print("$ " + shlex.join(cmd), flush=True)
    start = time.monotonic()
    code = subprocess.call(cmd)
    print(f"\nwall time: {time.monotonic() - start:.1f} s, sage-submit exit code {code}")
    for branch in run_branches(repo):
        print(f"result:    git -C {repo} log --oneline main..{branch}")
    if report.exists():
        print(f"report:    {report} (open it in a browser)")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
