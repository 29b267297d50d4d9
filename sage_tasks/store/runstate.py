"""A run's record in Redis: the plan, each ticket's progress, the outcome.

Workers write it as tickets move; ``sage-submit --wait`` and ``status`` read
it; the supervisor uses it to find lost tickets and stalled batches. Every
key name comes from :mod:`sage_tasks.store.keys`, and every key carries a TTL so a
finished run leaves nothing behind forever.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from itertools import chain, islice, repeat
from typing import Any

import orjson
import redis

from sage_tasks.model.run import RunOptions
from sage_tasks.store import events, keys


class Phase(StrEnum):
    """Where a ticket is in a run; the last three are final."""

    PENDING = "PENDING"  # planned, not yet sent
    QUEUED = "QUEUED"  # sent to the ticket queue
    RUNNING = "RUNNING"  # its command runs on a worker
    RAN = "RAN"  # ran; its result waits for the commit queue
    COMPLETED = "COMPLETED"
    DEFERRED = "DEFERRED"
    BLOCKED = "BLOCKED"
    #: its run was cancelled before it finished (not final: resubmitting runs it)
    CANCELLED = "CANCELLED"


FINAL_PHASES = frozenset({Phase.COMPLETED, Phase.DEFERRED, Phase.BLOCKED})


#: a ticket's fields kept apart from its hash, each in one hash of the run (ticket id ->
#: value): the ticket's definition and its command's outcome pass the 64 bytes up to which
#: Redis (by default) keeps a hash a listpack, and one such value would make every ticket's
#: hash a hash table, twice the memory. :meth:`RunStore.record` reads them back in place.
APART: dict[str, Callable[[str], str]] = {"ticket": keys.definitions, "result": keys.results}

#: HSET the ticket's fields unless it is already final, or gone (a late worker must not bring
#: back, without a TTL, the record of a run that expired); then join the running set (counting
#: a delivery; ARGV[3] is the TTL of the sets and of the run's results) or leave it. ARGV[4]
#: fences by attempt: '' none, '+' starts a new attempt (returns its number), a number
#: writes only while that attempt is the ticket's current one and still runs it (not taken
#: away by the supervisor). ARGV[5], unless '', is the ticket's result (KEYS[3]: the run's)
_SET_UNLESS_FINAL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'COMPLETED' or state == 'DEFERRED' or state == 'BLOCKED' then return 0 end
local result = 1
if ARGV[4] == '+' then
  result = redis.call('HINCRBY', KEYS[1], 'attempt_no', 1)
elseif ARGV[4] ~= '' then
  local current = redis.call('HGET', KEYS[1], 'attempt_no') or '0'
  if current ~= ARGV[4] or state ~= 'RUNNING' then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
return result
"""


#: HINCRBY the ticket's attempts unless it is already final (then 0)
_COUNT_UNLESS_FINAL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'COMPLETED' or state == 'DEFERRED' or state == 'BLOCKED' then return 0 end
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

#: HSET fields of a hash that exists (a run's record that expired is not brought back)
_HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


#: HMGET the same fields (ARGV) of every key, answered as one JSON document: a list per key
#: (a missing field is ``null``); one string to parse instead of a reply per field
_HMGET_JSON = """
local out = {}
for i, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(ARGV))
  for j = 1, #ARGV do
    if not values[j] then values[j] = cjson.null end
  end
  out[i] = values
end
return cjson.encode(out)
"""

#: record a ticket's final state (KEYS: final, counts; ARGV: ticket, state, ttl) and keep
#: the count of tickets per final state, so a follower reads a few counters, not every final
_SET_FINAL = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
if old then redis.call('HINCRBY', KEYS[2], old, -1) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

#: store a :class:`TicketBlock`: KEYS are the run's hashes of the fields kept apart
#: (ARGV[3] of them), then the tickets' hashes; ARGV[1] is the TTL, ARGV[2] the block as
#: JSON ``[ids, names, columns, apart columns]`` (a column: a list, or one value for all)
_HSET_COLUMNS = """
local ttl, apart_n = ARGV[1], tonumber(ARGV[3])
local block = cjson.decode(ARGV[2])
local ids, names, columns, apart = block[1], block[2], block[3], block[4]
local function value(column, i)
  if type(column) == 'table' then return column[i] end
  return column
end
local args = {}
for i, id in ipairs(ids) do
  for j, name in ipairs(names) do
    args[2 * j - 1] = name
    args[2 * j] = value(columns[j], i)
  end
  local key = KEYS[apart_n + i]
  redis.call('HSET', key, unpack(args))
  redis.call('EXPIRE', key, ttl)
end
for j = 1, apart_n do
  -- a thousand fields a call (unpack has a limit)
  for first = 1, #ids, 1000 do
    local fields = {}
    for i = first, math.min(first + 999, #ids) do
      fields[#fields + 1] = ids[i]
      fields[#fields + 1] = value(apart[j], i)
    end
    redis.call('HSET', KEYS[j], unpack(fields))
  end
  redis.call('EXPIRE', KEYS[j], ttl)
end
return #ids
"""

#: keys read or written by one script call (a call blocks Redis for a few milliseconds)
SCRIPT_CHUNK = 5000


def blocking_reason(records: Mapping[str, Mapping[str, str]], deps: Iterable[str]) -> str:
    """Why a ticket is BLOCKED: its first dependency that ended DEFERRED or BLOCKED ('' if none)."""
    for dep in deps:
        state = records[dep].get("state", "")
        if state in (Phase.DEFERRED, Phase.BLOCKED):
            return f"dependency {dep} is {state}"
    return ""


#: a field's values in a :class:`TicketBlock`: one per ticket, or one for them all
Column = list[str] | str


@dataclass(slots=True)
class TicketBlock:
    """The first records of some tickets of a run, a column per field.

    Ticket ``ids[i]`` has, for each ``name``, ``columns[name][i]`` (or the
    string itself when that column is one value for all). Made a few
    thousand tickets at a time, it is stored with one script call and
    encodes as one JSON document instead of a dict per ticket.
    """

    ids: list[str]
    columns: dict[str, Column]

    def values(self, name: str) -> Iterator[Any]:
        """The ``name`` of each ticket, in ``ids`` order."""
        column = self.columns[name]
        return repeat(column, len(self.ids)) if isinstance(column, str) else iter(column)


def blocks_of(pairs: Iterable[tuple[str, Mapping[str, str]]]) -> Iterator[TicketBlock]:
    """Records given a ticket at a time, as blocks: consecutive tickets with the same fields."""
    ids: list[str] = []
    columns: dict[str, list[str]] = {}
    for tid, fields in pairs:
        if ids and (list(columns) != list(fields) or len(ids) >= SCRIPT_CHUNK):
            yield TicketBlock(ids, dict(columns))
            ids = []
        if not ids:
            columns = {name: [] for name in fields}
        ids.append(tid)
        for name, value in fields.items():
            columns[name].append(value)
    if ids:
        yield TicketBlock(ids, dict(columns))


def _as_blocks(tickets: Any) -> Iterator[TicketBlock]:
    """``tickets`` as :meth:`RunStore.create` takes them (a mapping, pairs or blocks), as
    blocks."""
    items = iter(tickets.items() if isinstance(tickets, Mapping) else tickets)
    first = next(items, None)
    if first is None:
        return iter(())
    rest = chain([first], items)
    return rest if isinstance(first, TicketBlock) else blocks_of(rest)


class RunStatus(StrEnum):
    """A run's life: submitted, running its batches, then finished."""

    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    #: could not start (e.g. the branch could not be prepared), or its --local command ended first
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # stopped by ``sage-submit cancel``


@dataclass
class RunInfo:
    """The run's own record: what it runs, where, and how far it has come."""

    run_id: str
    repo: str  # identity the commit worker checks (its path or URL)
    repo_url: str  # what ticket workers fetch from
    branch: str
    base: str
    index_path: str
    commit_queue: str
    executor: str | None
    ticket_timeout: float
    batches: int
    tickets: int
    to_run: int
    created: float
    status: str = RunStatus.SUBMITTED.value
    batch: int = -1
    base_sha: str = ""
    head: str = ""
    started: float = 0.0
    ended: float = 0.0
    error: str = ""
    submitted_by: str = ""
    #: the run's options as stored; read them through :attr:`options`
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> RunOptions:
        """The run's options, each with its one default."""
        return RunOptions.read(self.extra, to_run=self.to_run)

    def to_hash(self) -> dict[str, str]:
        """Field -> string, as stored in the run's Redis hash."""
        out: dict[str, str] = {}
        for k, v in asdict(self).items():
            out[k] = json.dumps(v)
        return out

    @classmethod
    def from_hash(cls, data: Mapping[bytes, bytes]) -> RunInfo:
        """Read back what :meth:`to_hash` stored; unknown fields are ignored."""
        names = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {}
        for k, v in data.items():
            name = k.decode()
            if name in names:
                values[name] = json.loads(v)
        return cls(**values)


def _decode(data: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in data.items()}


def number(raw: str | bytes | None) -> float | None:
    """A number stored in a record; None when missing or malformed (records are not trusted)."""
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


class RunStore:
    """Reads and writes run records in one Redis database."""

    def __init__(self, client: redis.Redis, *, ttl: int):
        # redis-py types every reply as "value or awaitable" (sync and asyncio
        # share the signatures); this store only ever uses the sync client
        self.r: Any = client
        self.ttl = ttl

    # -- the run ---------------------------------------------------------------

    def create(
        self,
        info: RunInfo,
        plan_json: str,
        tickets: Mapping[str, Mapping[str, str]]
        | Iterable[tuple[str, Mapping[str, str]]]
        | Iterable[TicketBlock],
    ) -> None:
        """Store a new run: its record, its plan and a record per ticket.

        The tickets' records (a mapping, pairs as they are made, or
        :class:`TicketBlock` s) go first, by script a block at a time, their
        :data:`APART` fields into the run's hashes of them; the run's record,
        which makes the run visible, goes last, in one transaction with its
        indexes.
        """
        finals = self._store_tickets(info.run_id, _as_blocks(tickets))
        pipe = self.r.pipeline(transaction=True)
        key = keys.run(info.run_id)
        pipe.hset(key, mapping={**info.to_hash(), "plan": plan_json})
        pipe.expire(key, self.ttl)
        if finals:
            pipe.hset(keys.final(info.run_id), mapping=finals)
            pipe.expire(keys.final(info.run_id), self.ttl)
            pipe.hset(keys.counts(info.run_id), mapping=dict(Counter(finals.values())))
            pipe.expire(keys.counts(info.run_id), self.ttl)
        pipe.zadd(keys.RUNS, {info.run_id: info.created})
        pipe.sadd(keys.active_runs(info.repo), info.run_id)
        # even the indexes of runs expire, a TTL after the last submission
        pipe.expire(keys.RUNS, self.ttl)
        pipe.expire(keys.active_runs(info.repo), self.ttl)
        pipe.execute()

    def _store_tickets(self, run_id: str, blocks: Iterable[TicketBlock]) -> dict[str, str]:
        """Store each block of first records; the tickets already final, with their state."""
        finals: dict[str, str] = {}
        # a thread sends each block while the next one is made: Redis's work on one
        # overlaps ours on the other (the sender waits on its socket, without the GIL)
        with ThreadPoolExecutor(max_workers=1) as sender:
            sent: Future[Any] | None = None
            for block in blocks:
                states = zip(block.ids, block.values("state"), strict=True)
                finals.update((t, s) for t, s in states if s in FINAL_PHASES)
                pipe = self._block_pipeline(run_id, block)
                if sent is not None:
                    sent.result()
                sent = sender.submit(pipe.execute)
            if sent is not None:
                sent.result()
        return finals

    def _block_pipeline(self, run_id: str, block: TicketBlock) -> Any:  # redis-py's Pipeline
        """The pipeline that stores a block of first records (one round trip).

        Everything but the keys goes as one JSON argument: each argument
        costs redis-py some Python work, and a block is thousands of values.
        """
        apart = [n for n in APART if n in block.columns]
        own = [n for n in block.columns if n not in APART]
        spec = [
            block.ids,
            own,
            [block.columns[n] for n in own],
            [block.columns[n] for n in apart],
        ]
        names = [APART[n](run_id) for n in apart] + [keys.ticket(run_id, t) for t in block.ids]
        pipe = self.r.pipeline(transaction=False)
        pipe.eval(_HSET_COLUMNS, len(names), *names, self.ttl, orjson.dumps(spec), len(apart))
        return pipe

    def get(self, run_id: str) -> RunInfo | None:
        """The run's record, or None when Redis does not know it (anymore)."""
        return _run_info(self.r.hmget(keys.run(run_id), _RUN_FIELDS))

    def snapshot(
        self, run_id: str, ticket_id: str, digest: str = ""
    ) -> tuple[RunInfo | None, dict[str, str], bytes | None]:
        """The run's record, the ticket's (as :meth:`record` reads it) and its patch (if
        ``digest``), in one round trip."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hmget(keys.run(run_id), _RUN_FIELDS)
        if digest:
            pipe.get(keys.patch(run_id, digest))
        _read_record(pipe, run_id, ticket_id)
        found = pipe.execute()
        patch = bytes(found[1]) if digest and found[1] is not None else None
        return _run_info(found[0]), _record(found[2:] if digest else found[1:]), patch

    def waiting(self, run_id: str) -> list[str]:
        """The tickets whose outcome waits for the commit queue (some may be final by now)."""
        return sorted(m.decode() for m in self.r.smembers(keys.waiting(run_id)))

    def progress(self, run_id: str) -> tuple[RunInfo | None, dict[str, str], list[str]]:
        """What a follower needs each poll, cheaply: the record, the finals, what runs."""
        info = self.get(run_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.final(run_id))
        pipe.smembers(keys.running(run_id))
        finals, running = pipe.execute()
        return info, _decode(finals), sorted(m.decode() for m in running)

    def progress_counts(self, run_id: str) -> tuple[RunInfo | None, dict[str, int], list[str]]:
        """What a follower needs each poll, read in one round trip whatever the run's size.

        The record, how many tickets ended in each final state (counters the
        workers keep as they finish tickets) and what runs now.
        """
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(keys.run(run_id), _RUN_FIELDS)
        pipe.hgetall(keys.counts(run_id))
        pipe.smembers(keys.running(run_id))
        pipe.hlen(keys.final(run_id))
        values, raw_counts, running, finished = pipe.execute()
        counts = {k.decode(): int(v) for k, v in raw_counts.items() if int(v)}
        if sum(counts.values()) != finished:  # a run stored before the counters were kept
            counts = dict(Counter(self.finals(run_id).values()))
        return _run_info(values), counts, sorted(m.decode() for m in running)

    def plan_json(self, run_id: str) -> str | None:
        """The plan stored with the run."""
        raw = self.r.hget(keys.run(run_id), "plan")
        return None if raw is None else raw.decode()

    def exists(self, run_id: str) -> bool:
        return bool(self.r.exists(keys.run(run_id)))

    def update(self, run_id: str, **fields: Any) -> None:
        """Set some fields of the run's record (only when the run still exists)."""
        self.r.eval(_HSET_IF_EXISTS, 1, keys.run(run_id), *_run_fields(fields))

    def latest(self) -> str | None:
        """The id of the most recently submitted run."""
        ids = self.recent(1)
        return ids[0] if ids else None

    def recent(self, count: int) -> list[str]:
        """The ids of the ``count`` most recently submitted runs, the latest first."""
        return [m.decode() for m in self.r.zrevrange(keys.RUNS, 0, max(0, count - 1))]

    def active(self, repo: str) -> list[str]:
        """Unfinished runs of one repository."""
        return sorted(m.decode() for m in self.r.smembers(keys.active_runs(repo)))

    def finish(self, run_id: str, repo: str, *, status: RunStatus, error: str = "") -> None:
        """Mark the run ended and start the countdown on all its keys.

        A cancelled run stays cancelled: a late finish (a batch barrier or an
        eager release that read the run before the cancel) changes nothing.
        """
        if status != RunStatus.CANCELLED and self.r.exists(keys.cancelled(run_id)):
            return
        self.update(run_id, status=status.value, ended=time.time(), error=error)
        self.r.srem(keys.active_runs(repo), run_id)
        self.r.zremrangebyscore(keys.RUNS, "-inf", time.time() - self.ttl)
        found = self.r.scan_iter(match=keys.run_keys_pattern(run_id), count=SCRIPT_CHUNK)
        while batch := list(islice(found, SCRIPT_CHUNK)):  # one round trip per batch of keys
            pipe = self.r.pipeline(transaction=False)
            for key in batch:
                pipe.expire(key, self.ttl)
            pipe.execute()

    # -- tickets -----------------------------------------------------------------

    def ticket(self, run_id: str, ticket_id: str) -> dict[str, str]:
        """One ticket's hash: its record but the :data:`APART` fields (empty when unknown)."""
        return _decode(self.r.hgetall(keys.ticket(run_id, ticket_id)))

    def record(self, run_id: str, ticket_id: str) -> dict[str, str]:
        """One ticket's whole record: its hash and, where set, its definition (``ticket``)
        and result (``result``), read at one moment in one round trip (empty when unknown)."""
        pipe = self.r.pipeline(transaction=True)
        _read_record(pipe, run_id, ticket_id)
        return _record(pipe.execute())

    def tickets(self, run_id: str, ticket_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """Several tickets' records in one round trip."""
        ids = list(ticket_ids)
        pipe = self.r.pipeline(transaction=False)
        for tid in ids:
            pipe.hgetall(keys.ticket(run_id, tid))
        return {tid: _decode(d) for tid, d in zip(ids, pipe.execute(), strict=True)}

    def ticket_fields(
        self, run_id: str, ticket_ids: Iterable[str], fields: list[str]
    ) -> Iterator[tuple[str, list[str | None]]]:
        """``fields`` of each ticket's record (None where unset), in the order of ``ticket_ids``.

        The records are read by a script a few thousand at a time and come
        back as one JSON document per call: a 100,000-ticket run is twenty
        round trips, and its replies are parsed by orjson, not field by field.
        """
        ids = list(ticket_ids)
        for start in range(0, len(ids), SCRIPT_CHUNK):
            chunk = ids[start : start + SCRIPT_CHUNK]
            raw = self.r.eval(
                _HMGET_JSON, len(chunk), *(keys.ticket(run_id, t) for t in chunk), *fields
            )
            try:
                rows = orjson.loads(raw)
            except orjson.JSONDecodeError:  # bytes that are not UTF-8 in some field
                rows = json.loads(raw.decode(errors="replace"))
            yield from zip(chunk, rows, strict=True)

    def finals(self, run_id: str) -> dict[str, str]:
        """Ticket id -> final state for every ticket finished so far."""
        return _decode(self.r.hgetall(keys.final(run_id)))

    def final_states(self, run_id: str, ticket_ids: list[str]) -> dict[str, str]:
        """Ticket id -> final state for those of ``ticket_ids`` that are final (one HMGET)."""
        if not ticket_ids:
            return {}
        states = self.r.hmget(keys.final(run_id), ticket_ids)
        return {t: s.decode() for t, s in zip(ticket_ids, states, strict=True) if s is not None}

    def final_count(self, run_id: str) -> int:
        """How many tickets the run has finished."""
        return int(self.r.hlen(keys.final(run_id)))

    def count_dispatch(self, run_id: str, ticket_id: str) -> int:
        """Record that the ticket's chain is sent once more; returns the count."""
        return int(self.r.hincrby(keys.ticket(run_id, ticket_id), "dispatches", 1))

    def running(self, run_id: str) -> list[str]:
        return sorted(m.decode() for m in self.r.smembers(keys.running(run_id)))

    def set_ticket(self, run_id: str, ticket_id: str, **fields: Any) -> None:
        key = keys.ticket(run_id, ticket_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(key, self.ttl)
        pipe.execute()

    def mark_queued(self, run_id: str, ticket_ids: Iterable[str], batch: int) -> None:
        now = str(time.time())
        pipe = self.r.pipeline(transaction=False)
        for tid in ticket_ids:
            key = keys.ticket(run_id, tid)
            pipe.hset(
                key, mapping={"state": Phase.QUEUED.value, "queued": now, "batch": str(batch)}
            )
        pipe.execute()
        for tid in ticket_ids:
            events.ticket_event(
                run_id, tid, Phase.QUEUED.value, batch=batch + 1 if batch >= 0 else None
            )

    def start_ticket(
        self,
        run_id: str,
        ticket_id: str,
        host: str,
        *,
        deaths: int = 0,
        pid: int = 0,
        space: str = "",
        slot: str | None = None,
    ) -> int:
        """Record that a worker took the ticket (``deaths``: workers lost on it so far).

        Starts a new attempt and returns its number (0, nothing written, when
        the ticket is already final): only that attempt's heartbeats and
        outcome count from now on.

        ``pid`` and ``space`` (the pid space it lives in) name the process that
        runs it, so a redelivery in the same pid space can tell that it died;
        ``slot`` names the worker slot (node name and pool process index, by
        default this process's) that the report draws it on.
        """
        now = str(time.time())
        slot = slot or events.slot(host)
        fields = {
            "state": Phase.RUNNING.value,
            "host": host,
            "started": now,
            "heartbeat": now,
            "deaths": str(deaths),
            "pid": str(pid),
            "space": space,
            "slot": slot,
        }
        attempt_no = self._set_unless_final(run_id, ticket_id, fields, running=True, fence="+")
        if attempt_no:
            events.ticket_event(
                run_id, ticket_id, Phase.RUNNING.value, host=host, slot=slot, deaths=deaths or None
            )
        return attempt_no

    def requeue_ticket(self, run_id: str, ticket_id: str, *, attempt_no: int = 0) -> None:
        """The ticket waits in the queue again (a retry) — unless it is already final,
        or (``attempt_no``) that attempt is no longer the ticket's current one."""
        fence = str(attempt_no) if attempt_no else ""
        fields = {"state": Phase.QUEUED.value}
        if self._set_unless_final(run_id, ticket_id, fields, running=False, fence=fence):
            events.ticket_event(run_id, ticket_id, Phase.QUEUED.value, reason="retry")

    def _set_unless_final(
        self,
        run_id: str,
        ticket_id: str,
        fields: Mapping[str, str],
        *,
        running: bool,
        fence: str = "",
        result: str = "",
    ) -> int:
        """HSET ``fields`` (and ``result``, if any) atomically unless the ticket is final;
        0 when nothing was written.

        A worker cut off from Redis may have writes in flight that arrive when
        its link comes back, long after another worker finished the ticket:
        they must never turn a final ticket back into a running one. ``fence``
        '+' starts a new attempt (the result is its number); an attempt's number
        writes only while it is the current attempt.
        """
        args = [ticket_id, "1" if running else "0", str(self.ttl), fence, result]
        args += [x for kv in fields.items() for x in kv]
        names = (keys.ticket(run_id, ticket_id), keys.running(run_id), keys.results(run_id))
        return int(self.r.eval(_SET_UNLESS_FINAL, len(names), *names, *args))

    def rerun_ticket(self, run_id: str, ticket_id: str, conflicts: list[str]) -> int:
        """The ticket's patch conflicted: it waits to run again, on the new head.

        Its stored result is dropped (so the re-run executes), the conflicting
        paths kept for its prompt and environment; returns the re-runs so far.
        """
        key = keys.ticket(run_id, ticket_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(key, "conflict_reruns", 1)
        pipe.hdel(keys.results(run_id), ticket_id)
        pipe.srem(keys.waiting(run_id), ticket_id)
        pipe.hset(
            key,
            mapping={
                "state": Phase.QUEUED.value,
                "queued": str(time.time()),
                "conflict_paths": json.dumps(conflicts),
            },
        )
        return int(pipe.execute()[0])

    def count_attempt(self, run_id: str, ticket_id: str) -> int:
        """Record that the ticket's command is started once more; returns the count.

        0, and nothing counted, when the ticket is already final (a copy that
        stalled while another worker finished it must not run it again).
        """
        return int(self.r.eval(_COUNT_UNLESS_FINAL, 1, keys.ticket(run_id, ticket_id)))

    def ran(
        self, run_id: str, ticket_id: str, result: Mapping[str, Any], *, attempt_no: int = 0
    ) -> bool:
        """The command ended; its result now waits for the commit queue.

        A late copy of a ticket (a worker that was cut off and came back) must
        not overwrite a ticket that is already final, nor (``attempt_no``) one
        that another attempt has taken over: False then, nothing written.
        """
        fields = {
            "state": Phase.RAN.value,
            "ran": str(time.time()),
            "duration": str(result.get("duration_s", 0.0)),
        }
        fence = str(attempt_no) if attempt_no else ""
        outcome = json.dumps(dict(result))
        done = bool(
            self._set_unless_final(
                run_id, ticket_id, fields, running=False, fence=fence, result=outcome
            )
        )
        if done:
            pipe = self.r.pipeline(transaction=False)
            pipe.sadd(keys.waiting(run_id), ticket_id)
            pipe.expire(keys.waiting(run_id), self.ttl)
            pipe.execute()
            events.ticket_event(
                run_id,
                ticket_id,
                Phase.RAN.value,
                slot=events.slot(),
                duration_s=result.get("duration_s"),
                outcome=result.get("outcome"),
            )
        return done

    def finish_ticket(
        self,
        run_id: str,
        ticket_id: str,
        state: Phase,
        *,
        reason: str = "",
        commit: str = "",
        run_fields: Mapping[str, Any] | None = None,
    ) -> None:
        """The ticket's final state (COMPLETED, DEFERRED or BLOCKED).

        ``run_fields`` are set on the run's record in the same transaction
        (as :meth:`update` does).
        """
        key = keys.ticket(run_id, ticket_id)
        pipe = self.r.pipeline(transaction=True)
        if run_fields:
            pipe.eval(_HSET_IF_EXISTS, 1, keys.run(run_id), *_run_fields(run_fields))
        pipe.hset(
            key,
            mapping={
                "state": state.value,
                "ended": str(time.time()),
                "reason": reason,
                "commit": commit,
            },
        )
        final_keys = (keys.final(run_id), keys.counts(run_id))
        pipe.eval(_SET_FINAL, 2, *final_keys, ticket_id, state.value, self.ttl)
        pipe.srem(keys.running(run_id), ticket_id)
        pipe.srem(keys.waiting(run_id), ticket_id)
        pipe.hmget(key, ["duration", "slot"])
        duration, slot = pipe.execute()[-1]
        events.ticket_event(
            run_id,
            ticket_id,
            state.value,
            duration_s=number(duration),
            slot=slot.decode() if slot else None,
            commit=commit[:12] or None,
            reason=reason or None,
        )

    # -- patches -------------------------------------------------------------------

    def put_patch(self, run_id: str, digest: str, data: bytes) -> None:
        self.r.set(keys.patch(run_id, digest), data, ex=self.ttl)

    # -- batches ---------------------------------------------------------------------

    def record_batch(self, run_id: str, index: int, **fields: Any) -> None:
        key = keys.batch(run_id, index)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})
        pipe.expire(key, self.ttl)
        pipe.execute()

    def batch(self, run_id: str, index: int) -> dict[str, Any]:
        data = self.r.hgetall(keys.batch(run_id, index))
        return {k.decode(): json.loads(v) for k, v in data.items()}

    def claim_batch_done(self, run_id: str, index: int) -> bool:
        """True for the one caller that gets to finish this batch (SET NX)."""
        return bool(
            self.r.set(keys.batch_done(run_id, index), str(time.time()), nx=True, ex=self.ttl)
        )

    def claim(self, run_id: str, name: str) -> bool:
        """True for the one caller that gets to do the one-time step ``name`` of a run."""
        key = keys.claim(run_id, name)
        return bool(self.r.set(key, str(time.time()), nx=True, ex=self.ttl))

    def batch_is_done(self, run_id: str, index: int) -> bool:
        return bool(self.r.exists(keys.batch_done(run_id, index)))


_RUN_FIELDS = list(RunInfo.__dataclass_fields__)


def _read_record(pipe: Any, run_id: str, ticket_id: str) -> None:
    """Queue the reads of a ticket's whole record on ``pipe`` (see :func:`_record`)."""
    pipe.hgetall(keys.ticket(run_id, ticket_id))
    for key in APART.values():
        pipe.hget(key(run_id), ticket_id)


def _record(replies: list[Any]) -> dict[str, str]:
    """A ticket's whole record from the replies :func:`_read_record` queued."""
    record = _decode(replies[0])
    if record:  # a ticket the run does not know has no record, whatever else is left
        for name, raw in zip(APART, replies[1:], strict=True):
            if raw is not None:
                record[name] = raw.decode(errors="replace")
    return record


def _run_info(values: list[bytes | None]) -> RunInfo | None:
    """A run's record from HMGET of :data:`_RUN_FIELDS` (None: no such run)."""
    data = {n.encode(): v for n, v in zip(_RUN_FIELDS, values, strict=True) if v is not None}
    return RunInfo.from_hash(data) if data else None


def _run_fields(fields: Mapping[str, Any]) -> list[str]:
    """Run-record fields as HSET arguments (values JSON, as the record keeps them)."""
    return [x for k, v in fields.items() for x in (k, json.dumps(v))]
