"""Removing a big tree of files (a worktree, a worker's folder) with several threads.

Deleting a 50,000-file worktree is a long series of ``unlink`` calls that
mostly wait on the disk, not on the CPU; one thread a folder keeps several
of them in flight. On a busy virtual disk here, four to five times faster
than one ``rm -rf``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: threads deleting at once
REMOVERS = 8
#: folders worth handing out before the threads start (enough to keep them all busy)
_SPLIT = 4 * REMOVERS


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything below it, even where write permission was taken away.

    Never follows a symlink; a file or symlink at ``path`` is just unlinked.
    """
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    parts = _folders(path)
    if len(parts) > 1:
        with ThreadPoolExecutor(REMOVERS) as pool:
            list(pool.map(_rmtree, parts))
    _rmtree(path)


def _folders(path: Path) -> list[Path]:
    """Folders below ``path`` that do not contain one another, level by level up to _SPLIT."""
    level = [path]
    for _ in range(3):
        below: list[Path] = []
        for folder in level:
            with contextlib.suppress(OSError), os.scandir(folder) as entries:
                below += [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        if not below:
            break
        level = below
        if len(level) >= _SPLIT:
            break
    return level if level != [path] else []


def _rmtree(path: Path) -> None:
    def retry(func: Callable[..., object], name: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), stat.S_IRWXU)
            os.chmod(name, stat.S_IRWXU)
        with contextlib.suppress(FileNotFoundError):
            func(name)

    shutil.rmtree(path, onerror=retry)
