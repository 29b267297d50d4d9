"""What both commands share: one-line errors with the right exit code, consoles."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import redis
from rich.console import Console

from sage_tasks.errors import IndexValidationError, SageError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    """Print one error line on stderr."""
    err_console.print(f"sage: error: {message}", markup=False)


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
        except redis.exceptions.AuthenticationError as exc:
            error(f"broker refused the credentials: {exc}")
            sys.exit(3)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            error(f"broker unreachable: {exc}")
            sys.exit(3)
        except redis.exceptions.RedisError as exc:
            error(f"broker error: {exc}")
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
