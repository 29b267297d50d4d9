"""Turn an example into a git repository: ``python3 examples/make_repo.py examples/basic DEST``.

DEST (absent or empty) gets the example's ``index.json`` as
``.sage/tickets/index.json``, a copy of the example's ``repo/`` folder when it
has one (files the tickets start from), and one commit on ``main``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, stdout=subprocess.DEVNULL)


def make_repo(example: Path, dest: Path) -> Path:
    """Build the repository for ``example`` at ``dest`` and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise SystemExit(f"{dest} is not empty")
    if (example / "repo").is_dir():
        shutil.copytree(example / "repo", dest, dirs_exist_ok=True)
    index = dest / ".sage" / "tickets" / "index.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(example / "index.json", index)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.name", "sage-tasks example")
    git(dest, "config", "user.email", "example@sage-tasks.invalid")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", f"{example.resolve().name}: ticket index")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: make_repo.py EXAMPLE_DIR DEST")
    print(make_repo(Path(sys.argv[1]), Path(sys.argv[2])))
