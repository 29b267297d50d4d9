"""The core imports no celery, kombu, redis or git: it stays a pure library."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import sage_tasks.core

FORBIDDEN = ("celery", "kombu", "redis", "git")


def test_importing_every_core_module_pulls_in_no_broker_or_git_library() -> None:
    modules = [m.name for m in pkgutil.walk_packages(sage_tasks.core.__path__, "sage_tasks.core.")]
    assert "sage_tasks.core.plan" in modules
    code = "\n".join(
        [
            "import importlib, sys",
            *(f"importlib.import_module({name!r})" for name in modules),
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})",
            "print(','.join(bad))",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "", f"the core imported {done.stdout.strip()}"
