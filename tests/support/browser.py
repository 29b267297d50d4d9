"""Open a page in headless Chromium (Debian's ``chromium``): a screenshot, or the DOM it built.

No network: every host name fails to resolve, so a page that needs anything
from outside shows it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

#: the window the page is laid out in
WINDOW = (1280, 1600)


def chromium() -> str:
    """The browser; a test that needs it fails (never skips) where it is missing."""
    path = shutil.which("chromium")
    assert path, "chromium is not installed: make system-deps (Debian package chromium)"
    return path


def _run(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = page.parent / "chromium-profile"  # its own, so browsers of parallel tests never meet
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # tests may run as root (CI containers)
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-extensions",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            *args,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def screenshot(page: Path, png: Path) -> None:
    """Write a PNG of the page as a browser window of :data:`WINDOW` shows it."""
    _run(page, f"--screenshot={png}")
    assert png.exists(), f"chromium wrote no screenshot to {png}"


def dump_dom(page: Path) -> str:
    """The page's DOM as the browser built it, serialised."""
    return _run(page, "--dump-dom").stdout


def dump_dom_and_console(page: Path) -> tuple[str, list[str]]:
    """The page's DOM as the browser built it, and what the page logged to the console."""
    proc = _run(page, "--dump-dom", "--enable-logging=stderr", "--v=0")
    logged = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    return proc.stdout, logged
