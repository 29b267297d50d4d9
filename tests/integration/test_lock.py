"""CommitLock against a real redis-server."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from typing import cast

import pytest
import redis

from sage_tasks.errors import LockBusy, Retryable
from sage_tasks.store.lock import CommitLock
from tests.support.procs import wait_until
from tests.support.redis_server import RedisServer

NAME = "sage:test:commit-lock"

HOLDER_SCRIPT = """
import sys, time, redis
from sage_tasks.store.lock import CommitLock
lock = CommitLock(redis.Redis.from_url(sys.argv[1]), sys.argv[2], lease=float(sys.argv[3]))
lock.acquire(5)
print("held", flush=True)
time.sleep(1000)
"""


def get_int(client: redis.Redis, key: str) -> int:
    return int(cast(bytes | None, client.get(key)) or 0)


def is_free(server: RedisServer) -> bool:
    return server.client().exists(NAME) == 0


def test_only_one_of_two_clients_holds_the_lock(redis_server: RedisServer) -> None:
    first = CommitLock(redis_server.client(), NAME, lease=5)
    second = CommitLock(redis_server.client(), NAME, lease=5)
    first.acquire(blocking_timeout=1)
    with pytest.raises(LockBusy):
        second.acquire(blocking_timeout=0.2)
    assert first.held and not second.held

    first.release()
    second.acquire(blocking_timeout=0.2)
    assert second.held
    with pytest.raises(LockBusy):
        first.acquire(blocking_timeout=0)
    second.release()
    assert is_free(redis_server)


def test_writers_in_threads_never_overlap(redis_server: RedisServer) -> None:
    counter = "sage:test:counter"
    errors: list[BaseException] = []

    def writer() -> None:
        client = redis_server.client()
        try:
            for _ in range(10):
                with CommitLock(client, NAME, lease=5, blocking_timeout=10):
                    value = get_int(client, counter)
                    time.sleep(0.005)
                    client.set(counter, value + 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert get_int(redis_server.client(), counter) == 30


def test_a_busy_lock_raises_a_retryable_lock_busy_after_the_blocking_timeout(
    redis_server: RedisServer,
) -> None:
    holder = CommitLock(redis_server.client(), NAME, lease=5)
    holder.acquire(blocking_timeout=1)
    started = time.monotonic()
    with pytest.raises(LockBusy, match=NAME) as raised:
        CommitLock(redis_server.client(), NAME).acquire(blocking_timeout=0.5)
    waited = time.monotonic() - started
    assert isinstance(raised.value, Retryable)
    assert 0.35 <= waited < 1.5
    holder.release()


def test_the_lease_is_renewed_past_its_first_expiry_while_held(redis_server: RedisServer) -> None:
    holder = CommitLock(redis_server.client(), NAME, lease=1.0)
    other = CommitLock(redis_server.client(), NAME, lease=1.0)
    holder.acquire(blocking_timeout=1)
    until = time.monotonic() + 3
    while time.monotonic() < until:
        with pytest.raises(LockBusy):
            other.acquire(blocking_timeout=0)
        assert 0 < redis_server.client().pttl(NAME) <= 1000
        time.sleep(0.1)
    assert holder.held and not holder.lost
    holder.release()
    assert not holder.lost
    assert is_free(redis_server)


def test_the_lease_expires_after_its_holder_process_dies(redis_server: RedisServer) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, redis_server.url, NAME, "1.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        holder.kill()
        holder.wait(5)
        other = CommitLock(redis_server.client(), NAME, lease=1.0)
        with pytest.raises(LockBusy):
            other.acquire(blocking_timeout=0)
        started = time.monotonic()
        other.acquire(blocking_timeout=3)
        assert time.monotonic() - started < 1.5
        other.release()
    finally:
        holder.kill()
        holder.wait(5)


def test_a_lock_dropped_without_release_stops_renewing_and_expires(
    redis_server: RedisServer,
) -> None:
    holder = CommitLock(redis_server.client(), NAME, lease=0.6)
    holder.acquire(blocking_timeout=1)
    keepalive = holder._keepalive
    assert keepalive is not None
    del holder
    gc.collect()
    keepalive.join(2)
    assert not keepalive.is_alive()
    assert wait_until(lambda: is_free(redis_server), timeout=2, interval=0.02)


def test_lost_is_set_when_the_key_is_deleted_from_under_the_holder(
    redis_server: RedisServer,
) -> None:
    holder = CommitLock(redis_server.client(), NAME, lease=0.6)
    holder.acquire(blocking_timeout=1)
    assert not holder.lost
    redis_server.client().delete(NAME)
    assert wait_until(lambda: holder.lost, timeout=2, interval=0.02)
    holder.release()
    assert holder.lost
    assert not holder.held


def test_release_after_the_lease_expired_does_not_raise_or_free_the_next_holder(
    redis_server: RedisServer,
) -> None:
    holder = CommitLock(redis_server.client(), NAME, lease=3.0)
    holder.acquire(blocking_timeout=1)
    # expire it well before the first renewal (after 1 s)
    redis_server.client().pexpire(NAME, 20)
    assert wait_until(lambda: is_free(redis_server), timeout=0.5, interval=0.02)
    successor = CommitLock(redis_server.client(), NAME, lease=5)
    successor.acquire(blocking_timeout=0)

    holder.release()
    assert holder.lost
    assert not holder.held
    with pytest.raises(LockBusy):
        CommitLock(redis_server.client(), NAME).acquire(blocking_timeout=0)
    successor.release()
    assert not successor.lost


def test_a_lost_connection_marks_the_lease_lost_and_release_does_not_raise(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=1, socket_connect_timeout=1)
    holder = CommitLock(client, NAME, lease=0.6)
    holder.acquire(blocking_timeout=1)
    redis_server.stop(kill=True)
    assert wait_until(lambda: holder.lost, timeout=3, interval=0.02)
    holder.release()
    assert holder.lost
    assert not holder.held


def test_the_context_manager_acquires_and_releases(redis_server: RedisServer) -> None:
    with CommitLock(redis_server.client(), NAME, lease=5, blocking_timeout=0.2) as lock:
        assert lock.held
        assert not is_free(redis_server)
        with pytest.raises(LockBusy), CommitLock(redis_server.client(), NAME, blocking_timeout=0):
            pytest.fail("a second holder got in")
    assert not lock.held
    assert is_free(redis_server)


def test_the_context_manager_releases_when_the_body_raises(redis_server: RedisServer) -> None:
    with pytest.raises(RuntimeError), CommitLock(redis_server.client(), NAME, lease=5):
        raise RuntimeError("commit failed")
    assert is_free(redis_server)


def test_a_lock_acquired_explicitly_is_released_by_the_context_manager(
    redis_server: RedisServer,
) -> None:
    lock = CommitLock(redis_server.client(), NAME, lease=5)
    lock.acquire(blocking_timeout=1)
    with lock:
        assert lock.held
    assert is_free(redis_server)


def test_release_twice_or_without_acquire_is_harmless(redis_server: RedisServer) -> None:
    lock = CommitLock(redis_server.client(), NAME, lease=5)
    lock.release()
    lock.acquire(blocking_timeout=1)
    lock.release()
    lock.release()
    assert not lock.held and not lock.lost


def test_acquiring_twice_from_one_holder_is_an_error(redis_server: RedisServer) -> None:
    lock = CommitLock(redis_server.client(), NAME, lease=5)
    lock.acquire(blocking_timeout=1)
    with pytest.raises(RuntimeError):
        lock.acquire(blocking_timeout=0)
    lock.release()


def test_a_released_lock_can_be_acquired_again_and_lost_is_reset(
    redis_server: RedisServer,
) -> None:
    lock = CommitLock(redis_server.client(), NAME, lease=0.6)
    lock.acquire(blocking_timeout=1)
    redis_server.client().delete(NAME)
    assert wait_until(lambda: lock.lost, timeout=2, interval=0.02)
    lock.release()
    lock.acquire(blocking_timeout=1)
    assert lock.held and not lock.lost
    lock.release()


def test_a_non_positive_lease_is_rejected(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError):
        CommitLock(redis_server.client(), NAME, lease=0)
