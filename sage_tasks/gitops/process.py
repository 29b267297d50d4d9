"""Running the git binary: one short-lived call, or a long-lived helper process.

Every git call goes through :func:`run_git` so the environment is the same
everywhere: variables that would point git at another repository, index or
work tree are dropped, messages are in the C locale (some are parsed), and
git never prompts for credentials.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from sage_tasks.errors import GitError

#: variables that redirect git away from the repository we name explicitly
_REPO_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_QUARANTINE_PATH",
    "GIT_SHALLOW_FILE",
    "GIT_GRAFT_FILE",
    "GIT_REPLACE_REF_BASE",
    "GIT_NO_REPLACE_OBJECTS",
)

#: settings that would make the index or diff output differ from what we parse
SAFE_CONFIG = (
    # no hook ever runs: a ticket could plant one in a worker's shared mirror
    # (post-checkout would then run at the next worktree, outside any timeout)
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.splitIndex=false",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.quotePath=true",
)


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a git process: ours, minus repository redirections."""
    env = {k: v for k, v in os.environ.items() if k not in _REPO_VARIABLES}
    env["LC_ALL"] = "C"
    env["LANGUAGE"] = "C"
    env["GIT_TERMINAL_PROMPT"] = "0"
    if extra:
        env.update(extra)
    return env


def run_git(
    cwd: Path,
    *args: str,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    what: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git <args>`` in ``cwd``; raise :class:`GitError` on failure when ``check``.

    ``what`` names the operation in the error message (default: the git
    sub-command); past ``timeout`` seconds git is killed and GitError raised.
    """
    try:
        proc = subprocess.run(
            ["git", *SAFE_CONFIG, *args],
            cwd=cwd,
            input=input,
            capture_output=True,
            env=git_env(env),
            check=False,
            timeout=timeout,
        )
    except OSError as exc:
        raise GitError(f"cannot run git in {cwd}: {exc.strerror}", path=str(cwd)) from None
    except subprocess.TimeoutExpired:
        doing = what or "git " + _subcommand(args)
        raise GitError(f"{doing} timed out after {timeout:g} s in {cwd}", path=str(cwd)) from None
    if check and proc.returncode != 0:
        raise GitError(
            f"{what or 'git ' + _subcommand(args)} failed in {cwd}: {first_line(proc.stderr)}",
            path=str(cwd),
        )
    return proc


def git_out(cwd: Path, *args: str, input: bytes | None = None) -> str:
    """Run git and return its stdout as text without the trailing newline."""
    return run_git(cwd, *args, input=input).stdout.decode("utf-8", "surrogateescape").rstrip("\n")


def first_line(stderr: bytes) -> str:
    """The most telling line of git's error output (the first ``fatal``/``error``)."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("fatal:", "error:")):
            return ln
    return lines[0] if lines else "no message"


def _subcommand(args: Sequence[str]) -> str:
    return next((a for a in args if not a.startswith("-") and "=" not in a), "")


class Helper:
    """A long-lived git process speaking a line protocol on stdin/stdout.

    git start-up dominates short calls, so reads and ref updates on the commit
    path go through one process each. The process is started lazily, restarted
    after it dies, and never shared across a fork (it is re-created when the
    pid changes).
    """

    def __init__(self, cwd: Path, *args: str) -> None:
        self.cwd = cwd
        self.args = args
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = 0
        #: git's error output when the process last died
        self.last_stderr = b""

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._pid == os.getpid() and self._proc.poll() is None:
            return self._proc
        if self._pid == os.getpid():
            self.close()
        try:
            self._proc = subprocess.Popen(
                ["git", *SAFE_CONFIG, *self.args],
                cwd=self.cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=git_env(),
            )
        except OSError as exc:
            raise GitError(f"cannot run git in {self.cwd}: {exc.strerror}") from None
        self._pid = os.getpid()
        return self._proc

    @property
    def stdin(self) -> IO[bytes]:
        """The running process's stdin (starting it if needed)."""
        stream = self._ensure().stdin
        assert stream is not None
        return stream

    @property
    def stdout(self) -> IO[bytes]:
        """The running process's stdout (starting it if needed)."""
        stream = self._ensure().stdout
        assert stream is not None
        return stream

    def send(self, data: bytes) -> None:
        """Write ``data`` and flush."""
        stream = self.stdin
        try:
            stream.write(data)
            stream.flush()
        except BrokenPipeError:
            raise self.fail("died") from None

    def fail(self, doing: str) -> GitError:
        """Stop the process and return an error with its last message (to raise)."""
        stderr = b""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr is not None:
                stderr = proc.stderr.read()
        self._proc = None
        self.last_stderr = stderr
        return GitError(f"git {self.args[0]} {doing} in {self.cwd}: {first_line(stderr)}")

    def close(self) -> None:
        """Stop the process (it exits on end of input)."""
        proc, self._proc = self._proc, None
        if proc is None or self._pid != os.getpid():
            return
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
