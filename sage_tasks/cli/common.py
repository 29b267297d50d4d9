"""What both commands share: one-line errors with the right exit code, consoles."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from sage_tasks.errors import IndexValidationError, SageError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


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
