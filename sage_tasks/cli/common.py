"""What both commands share: one-line errors with the right exit code, consoles."""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from sage_tasks.errors import IndexValidationError, SageError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

#: what a command leaves for the process's end (see :func:`keep_until_exit`)
_kept: list[object] = []


def keep_until_exit(*objects: object) -> None:
    """Leave ``objects`` alive until the process ends, instead of freeing them on return.

    A 100,000-ticket index and its plan are millions of small objects, and
    freeing them one by one takes a good part of a second that nobody waits
    for: :func:`run_program` ends the process without it.
    """
    _kept.extend(objects)


def run_program(command: click.Command, prog_name: str) -> NoReturn:
    """Run ``command`` as the process's program, then end it without freeing every object.

    The exit code is the command's (``sys.exit``'s rules: None is 0, a
    message is printed and gives 1). Exit handlers run and stdout and stderr
    are flushed as at a normal exit; only the interpreter's teardown is
    skipped. With a thread still running, the normal exit waits for it.
    """
    try:
        command.main(prog_name=prog_name)
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if threading.active_count() > 1:
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader went away, or the stream is closed
            code = code or 1
    os._exit(code)


def error(message: str) -> None:
    """Print one error line on stderr."""
    err_console.print(f"sage: error: {message}", markup=False)


def broker_message(exc: Exception) -> str | None:
    """The line for a Redis error, None for any other exception.

    redis-py is imported by the commands that talk to the broker, not by a
    dry run: an error of its kind can only come once it is loaded.
    """
    redis = sys.modules.get("redis")
    if redis is None:
        return None
    errors = redis.exceptions
    if isinstance(exc, errors.AuthenticationError):
        return f"broker refused the credentials: {exc}"
    if isinstance(exc, (errors.ConnectionError, errors.TimeoutError)):
        return f"broker unreachable: {exc}"
    if isinstance(exc, errors.RedisError):
        return f"broker error: {exc}"
    return None


def handle_errors(func: F) -> F:
    """Turn sage-tasks' errors into one clear line each and their exit code, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except IndexValidationError as exc:
            for line in exc.lines():
                error(line)
            sys.exit(exc.exit_code)
        except SageError as exc:
            error(str(exc))
            sys.exit(exc.exit_code)
        except Exception as exc:
            message = broker_message(exc)
            if message is None:
                raise
            error(message)
            sys.exit(3)
        except KeyboardInterrupt:
            error("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class ParallelType(click.ParamType):  # type: ignore[type-arg]
    """``--parallel N|auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or value == "auto" or isinstance(value, int):
            return value
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a positive number nor 'auto'", param, ctx)
        if n < 1:
            self.fail(f"{value!r} must be at least 1", param, ctx)
        return n
