"""What both commands share: one-line errors with the right exit code, consoles."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rich.console import Console

from sage_tasks.errors import BrokerUnavailable, IndexValidationError, SageError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def redact(url: str) -> str:
    """A broker URL with its password replaced, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


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


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A Redis client that has answered a PING, or :class:`BrokerUnavailable`.

    The PING goes through a probe that waits at most ``timeout`` for the
    connection and for the answer, once: a server that accepts connections
    and never answers (hung, or not Redis) is reported within seconds, not
    after the long reads and retries the returned client allows.
    """
    try:
        probe = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        try:
            probe.ping()
        finally:
            probe.close()
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=30,
            health_check_interval=10,
            retry_on_timeout=True,
        )
    except redis.exceptions.AuthenticationError as exc:
        raise BrokerUnavailable(f"broker {redact(url)} refused the credentials: {exc}") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"broker unreachable at {redact(url)}: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise BrokerUnavailable(
            f"broker at {redact(url)} does not answer as Redis: {exc}"
        ) from None
    except ValueError as exc:
        raise BrokerUnavailable(f"invalid broker URL {redact(url)}: {exc}") from None
    return client


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
