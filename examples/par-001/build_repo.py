"""Build the PAR-001 demo repository: ``python3 examples/par-001/build_repo.py DEST``.

DEST becomes a git repository with one commit on ``main``:

- ``.sage/tickets/index.json``: the 29 PAR-001 tickets (``index.json`` here);
- ``tools/write_file.py``: what every ticket runs (``scripts/write_file.py``
  here), by a path relative to the worktree, so no setup is needed on workers;
- ``docs/PAR-001/tasks.md``: the task breakdown the tickets come from, named in
  each ticket's ``docs``;
- a README.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

README = """\
# PAR-001 demo

The 29 tasks of PAR-001 as a sage-tasks ticket graph. Each ticket runs
`python3 tools/write_file.py`, which writes the files the ticket names and
fails if a dependency's files are missing.
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, stdout=subprocess.DEVNULL)


def build(dest: Path) -> Path:
    """Create the repository at ``dest`` (absent or empty) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise SystemExit(f"{dest} is not empty")
    (dest / "README.md").write_text(README)
    for src, rel in [
        (HERE / "index.json", ".sage/tickets/index.json"),
        (HERE / "scripts" / "write_file.py", "tools/write_file.py"),
        (HERE / "tasks.md", "docs/PAR-001/tasks.md"),
    ]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.name", "sage-tasks demo")
    git(dest, "config", "user.email", "demo@sage-tasks.invalid")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "PAR-001: ticket index, tools and task breakdown")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: build_repo.py DEST")
    print(build(Path(sys.argv[1])))
