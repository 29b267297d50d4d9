"""Workarounds for known defects of the libraries we pin, each with its reason.

kombu 5.7's Redis transport: when the broker connection drops while a worker
has a running task and a free slot, Celery detaches the connection before it
closes the channels; restoring the unacknowledged message on close (and the
late ack when the task ends) then dereferences the detached connection and
the worker dies with ``AttributeError: 'NoneType' object has no attribute
'hostname'``. Raising a connection error there instead lets Celery's
reconnect logic do its job (the message stays in the unacked set and is
restored after the visibility timeout).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_installed = False


def install() -> None:
    """Apply the workarounds once per process."""
    global _installed
    if _installed:
        return
    original = kombu_redis.Channel._connparams  # type: ignore[attr-defined]

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("this channel's broker connection is closed")
        return original(self, asynchronous=asynchronous)

    kombu_redis.Channel._connparams = _connparams  # type: ignore[attr-defined]
    _installed = True
