"""The eager schedule's state in Redis: pending counts, a ready set, claims.

Two Lua scripts change it, each atomically:

- :data:`_INIT` lays the run out once: for every ticket to run, how many of
  its dependencies are still to be COMPLETED, who depends on it, whose
  ``paths`` overlap its own, and its rank (priority, then the work waiting on
  it, then id). Tickets with
  nothing pending enter the ready set.
- :data:`_RELEASE` applies one ticket's final outcome (once per ticket, however
  often it is called for it): it leaves the in-flight set and, when COMPLETED,
  each dependent's pending count drops by one, those reaching zero becoming
  ready. Then ready tickets are claimed, most urgent first, up to the cap on
  tickets in flight, passing over any whose paths overlap a ticket in flight.
  A claimed ticket joins the in-flight and the unsent sets. It returns every
  claimed ticket not yet sent, so a caller that died between the claim and
  the send is made good by the next caller.

Sending a claimed ticket takes a short lease (SET NX EX) and leaves the unsent
set once the broker has it, so two callers never both send it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sage_tasks.store import keys

#: how long one caller may take to send a claimed ticket before another may
SEND_LEASE_S = 30

_INIT = """
-- laid out once: a marker that expired in a very long run is set again, the counts stay
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
  return 0
end
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
local data = cjson.decode(ARGV[2])
for tid, n in pairs(data['pending']) do
  redis.call('HSET', KEYS[2], tid, n)
  if n == 0 then redis.call('ZADD', KEYS[5], data['rank'][tid], tid) end
end
for tid, r in pairs(data['rank']) do redis.call('HSET', KEYS[6], tid, r) end
for tid, ds in pairs(data['dependents']) do redis.call('HSET', KEYS[3], tid, cjson.encode(ds)) end
for tid, ov in pairs(data["overlaps"]) do redis.call("HSET", KEYS[4], tid, cjson.encode(ov)) end
for i = 2, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS: released inflight pending dependents ready rank overlaps final unsent
# ARGV: ticket ('' for none), its final state, cap (0: none; -1: claim nothing), ttl,
# '1' when some tickets' paths overlap
_RELEASE = """
local tid, state, cap, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if tid ~= '' and redis.call('SADD', KEYS[1], tid) == 1 then
  redis.call('SREM', KEYS[2], tid)
  if state == 'COMPLETED' then
    local raw = redis.call('HGET', KEYS[4], tid)
    if raw then
      for _, d in ipairs(cjson.decode(raw)) do
        local n = redis.call('HINCRBY', KEYS[3], d, -1)
        if n == 0 and redis.call('HEXISTS', KEYS[8], d) == 0 then
          redis.call('ZADD', KEYS[5], tonumber(redis.call('HGET', KEYS[6], d)), d)
        end
      end
    end
  end
end
local free = -1
if cap > 0 then free = math.max(0, cap - redis.call('SCARD', KEYS[2]))
elseif cap < 0 then free = 0 end
if free ~= 0 then
  local last = -1
  if free > 0 and ARGV[5] ~= '1' then last = free - 1 end
  for _, d in ipairs(redis.call('ZRANGE', KEYS[5], 0, last)) do
    if free == 0 then break end
    local ok = true
    local raw = redis.call('HGET', KEYS[7], d)
    if raw then
      for _, o in ipairs(cjson.decode(raw)) do
        if redis.call('SISMEMBER', KEYS[2], o) == 1 then ok = false; break end
      end
    end
    if ok then
      redis.call('ZREM', KEYS[5], d)
      redis.call('SADD', KEYS[2], d)
      redis.call('SADD', KEYS[9], d)
      free = free - 1
    end
  end
end
for _, i in ipairs({1, 2, 3, 4, 5, 6, 7, 9}) do redis.call('EXPIRE', KEYS[i], ttl) end
return redis.call('SMEMBERS', KEYS[9])
"""


class ReadySet:
    """One run's eager-schedule keys (every one with the run's TTL)."""

    def __init__(self, client: Any, run_id: str, *, ttl: int):
        self.r: Any = client
        self.run_id = run_id
        self.ttl = ttl
        self.k = keys.eager(run_id)

    def initialized(self) -> bool:
        return bool(self.r.exists(self.k.init))

    def init(
        self,
        deps: Mapping[str, Sequence[str]],
        rank: Mapping[str, int],
        overlaps: Mapping[str, Sequence[str]],
    ) -> bool:
        """Lay the run out (once: False when it already was)."""
        dependents: dict[str, list[str]] = {}
        for tid, ds in deps.items():
            for d in ds:
                dependents.setdefault(d, []).append(tid)
        payload = {
            "pending": {tid: len(set(ds)) for tid, ds in deps.items()},
            "rank": dict(rank),
            "dependents": dependents,
            "overlaps": {t: list(o) for t, o in overlaps.items() if o},
        }
        k = self.k
        names = [k.init, k.pending, k.dependents, k.overlaps, k.ready, k.rank]
        return bool(self.r.eval(_INIT, len(names), *names, self.ttl, json.dumps(payload)))

    def release(self, ticket_id: str, state: str, *, cap: int, paths: bool) -> list[str]:
        """Apply ``ticket_id``'s final ``state`` (once), claim what may start; returns unsent."""
        k = self.k
        names = [k.released, k.inflight, k.pending, k.dependents, k.ready, k.rank, k.overlaps]
        names += [keys.final(self.run_id), k.unsent]
        args = [ticket_id, state, cap, self.ttl, "1" if paths else "0"]
        unsent = self.r.eval(_RELEASE, len(names), *names, *args)
        return sorted(m.decode() for m in unsent)

    def dependents(self, ticket_id: str) -> list[str]:
        raw = self.r.hget(self.k.dependents, ticket_id)
        return [] if raw is None else list(json.loads(raw))

    def released(self) -> set[str]:
        return {m.decode() for m in self.r.smembers(self.k.released)}

    def released_count(self) -> int:
        """How many outcomes have been released (one SCARD)."""
        return int(self.r.scard(self.k.released))

    def inflight(self) -> set[str]:
        return {m.decode() for m in self.r.smembers(self.k.inflight)}

    def lease(self, ticket_id: str) -> bool:
        """True for the one caller that may send this claimed ticket now (and it is unsent)."""
        key = keys.sending(self.run_id, ticket_id)
        if not self.r.set(key, "1", nx=True, ex=SEND_LEASE_S):
            return False
        return bool(self.r.sismember(self.k.unsent, ticket_id))

    def mark_sent(self, ticket_id: str) -> None:
        self.r.srem(self.k.unsent, ticket_id)
