"""Reaching the broker: a connection checked before it is handed out."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sage_tasks.core.urls import redact_url
from sage_tasks.errors import BrokerUnavailable


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
        raise BrokerUnavailable(
            f"broker {redact_url(url)} refused the credentials: {exc}"
        ) from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"broker unreachable at {redact_url(url)}: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise BrokerUnavailable(
            f"broker at {redact_url(url)} does not answer as Redis: {exc}"
        ) from None
    except ValueError as exc:
        raise BrokerUnavailable(f"invalid broker URL {redact_url(url)}: {exc}") from None
    return client
