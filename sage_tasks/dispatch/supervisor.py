"""The run supervisor: one per repository, inside its commit worker.

The Redis transport can lose a message outright (popped, then the worker's
connection dropped before it recorded the delivery), and a batch's chord can
lose its state. The supervisor does not depend on the producer waiting: on a
timer it looks at each unfinished run of its repository and

- takes a running ticket from its attempt and sends it again when its
  heartbeat is older than the heartbeat timeout, whatever the ticket and
  visibility timeouts (the old attempt is fenced off: see
  :mod:`sage_tasks.store.liveness`), and sends a queued ticket again when no worker
  has taken it for the visibility timeout (the commit is idempotent, so a
  late duplicate is harmless);
- sends a ticket's stored outcome to the commit queue again when it has
  waited that long for its commit;
- finishes a batch whose tickets are all final but whose barrier never ran
  (its body message was lost, or tickets were sent again outside the chord);
- fails the run, which ``--wait`` reports lost (exit 3), when that batch's
  chord state is gone from the result backend: submitting again with the
  same ``--branch`` resumes it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from celery import Celery, bootsteps

from sage_tasks.dispatch import eager, producer
from sage_tasks.dispatch.names import TASK_PREPARE
from sage_tasks.store import events, liveness
from sage_tasks.store.runstate import FINAL_PHASES, Phase, RunInfo, RunStatus
from sage_tasks.work.runtime import Runtime

log = logging.getLogger(__name__)

#: Celery's Redis backend keeps a chord's ``done`` marker this long (300 s) after its body
#: is sent; past it a chord that completed cannot be told from one whose state was lost
CHORD_DONE_MARK_S = 240.0


class Supervisor:
    """Finds lost tickets and stalled batches of the runs of one repository."""

    def __init__(self, app: Celery, rt: Runtime):
        self.app = app
        self.rt = rt
        self._broker: Any = None

    @property
    def grace(self) -> float:
        """How long a finished batch may wait for its chord body before we finish it."""
        return max(10.0, 3 * self.rt.settings.supervisor_interval)

    def tick(self) -> None:
        """Look at every unfinished run once; never raises."""
        try:
            store = self.rt.store
            runs = {r for ident in self.rt.repo_identities for r in store.active(ident)}
            for run_id in sorted(runs):
                self.check_run(run_id)
        except Exception:
            log.warning("supervisor pass failed", exc_info=True)

    def check_run(self, run_id: str) -> None:
        store = self.rt.store
        info = store.get(run_id)
        if info is None:
            return
        now = time.time()
        vt = self.rt.settings.vt
        if info.status == RunStatus.SUBMITTED:
            if now - info.created > vt:
                log.warning("run %s: not started after %.0f s; asking again", run_id, vt)
                store.update(run_id, created=now)
                self.app.send_task(TASK_PREPARE, args=(run_id,), queue=info.commit_queue)
            return
        if info.status != RunStatus.RUNNING:
            return
        if eager.is_eager(info):
            self.check_eager(info, now)
            return
        if info.batch < 0:
            if now - info.started > self.grace:
                log.warning("run %s: started but no batch sent; sending the first", run_id)
                producer.advance(self.app, self.rt, run_id, 0)
            return
        self.check_batch(info, info.batch, now)

    def check_batch(self, info: RunInfo, index: int, now: float) -> None:
        store = self.rt.store
        run_id = info.run_id
        batch = store.batch(run_id, index)
        ticket_ids: list[str] = batch.get("tickets", [])
        # the records of the batch's unfinished tickets only: a pass costs what is in flight
        finished = store.final_states(run_id, ticket_ids)
        pending = [t for t in ticket_ids if t not in finished]
        if not pending:
            if store.batch_is_done(run_id, index):
                return
            records = store.tickets(run_id, ticket_ids)
            last = max((float(records[t].get("ended") or 0) for t in ticket_ids), default=0.0)
            if (
                not batch.get("barrier")  # its chord completed: its state was not lost
                and self.grace < now - last < CHORD_DONE_MARK_S
                and not self.chord_state_exists(batch)
            ):
                # DESIGN: a batch's chord state gone from Redis means the run is lost
                error = (
                    f"run lost: the chord state of batch {index + 1} is gone from Redis; "
                    "submit again with the same --branch to resume the run"
                )
                log.error("run %s: %s", run_id, error)
                store.finish(run_id, info.repo, status=RunStatus.FAILED, error=error)
                return
            if now - last > self.grace:
                log.warning(
                    "run %s: batch %d finished but its barrier never ran; finishing it",
                    run_id,
                    index + 1,
                )
                producer.finish_batch(self.app, self.rt, run_id, index)
            return
        vt = self.rt.settings.vt
        records = store.tickets(run_id, pending)
        for tid in pending:
            if records[tid].get("state") not in FINAL_PHASES:
                self.check_ticket(info, tid, records[tid], now, vt)
        self.check_lost_messages(info, {t: records[t] for t in pending}, now)

    def chord_state_exists(self, batch: dict[str, Any]) -> bool:
        """True unless the batch's chord is known to have lost its state in the result backend.

        Celery's Redis backend keeps a chord's size (``<group key>.s``) from
        the moment the chord is sent until its body is dispatched, then a
        ``done`` marker (``.c``) for a few minutes. With neither, while the
        batch's tickets ended less than those few minutes ago, the counter
        that would fire the barrier is gone: deleted, evicted, lost in a
        failover — or dropped by Celery because a task of the chord failed
        for good, an infrastructure failure too. Any other backend, or any
        doubt, counts as present.
        """
        group_id = batch.get("group")
        backend = self.app.backend
        key_for = getattr(backend, "get_key_for_group", None)
        client = getattr(backend, "client", None)
        if not isinstance(group_id, str) or not group_id or key_for is None or client is None:
            return True
        try:
            names = [key_for(group_id, suffix) for suffix in (".s", ".c")]
            return bool(client.exists(*names))
        except Exception:  # a backend client that is not redis-py's
            return True

    def check_eager(self, info: RunInfo, now: float) -> None:
        """An eager run has no batches: look at the tickets it has in flight.

        Only those (claimed and not yet released): the pass costs what runs
        now, not the size of the run.
        """
        store = self.rt.store
        run_id = info.run_id
        ticket_ids = eager.in_flight(self.rt, run_id)
        records = store.tickets(run_id, ticket_ids)
        for tid in ticket_ids:
            if records[tid].get("state") not in FINAL_PHASES and records[tid].get("queued"):
                self.check_ticket(info, tid, records[tid], now, self.rt.settings.vt)
        self.check_lost_messages(info, records, now)
        eager.pump(self.app, self.rt, run_id)

    def check_ticket(
        self, info: RunInfo, tid: str, rec: dict[str, str], now: float, vt: float
    ) -> None:
        store = self.rt.store
        run_id = info.run_id
        state = rec.get("state", "")
        if state == Phase.QUEUED:
            since = max(float(rec.get("queued") or 0), float(rec.get("resent") or 0))
            if now - since > vt:
                log.warning(
                    "run %s: ticket %s not taken for %.0f s; sending it again",
                    run_id,
                    tid,
                    now - since,
                )
                self._resend(info, tid, state, f"not taken for {now - since:.0f} s", now)
        elif state == Phase.RUNNING:
            beat = max(float(rec.get("heartbeat") or 0), float(rec.get("resent") or 0))
            timeout = self.rt.settings.heartbeat_timeout
            if now - beat > timeout and liveness.take_over(store, run_id, tid, timeout, now):
                log.warning(
                    "run %s: ticket %s silent for %.0f s (host %s); sending it again",
                    run_id,
                    tid,
                    now - beat,
                    rec.get("host", "?"),
                )
                self._resend(info, tid, state, f"silent for {now - beat:.0f} s", now)
        elif state == Phase.RAN:
            ran = float(rec.get("ran") or 0)
            if now - ran > vt:
                self._commit_again(info, tid, now - ran, now)

    def _commit_again(self, info: RunInfo, tid: str, waited: float, now: float) -> None:
        """Send a ran ticket's stored outcome to the commit queue again (its commit is lost)."""
        store, run_id = self.rt.store, info.run_id
        raw = store.record(run_id, tid).get("result")  # read only now: results are long
        if not raw:
            return
        log.warning(
            "run %s: ticket %s waited %.0f s for its commit; sending it again",
            run_id,
            tid,
            waited,
        )
        store.set_ticket(run_id, tid, ran=now)
        events.ticket_event(
            run_id, tid, Phase.RAN.value, event="resent", reason=f"waited {waited:.0f} s"
        )
        result: dict[str, Any] = json.loads(raw)
        producer.commit_only(self.app, result, run_id, tid, info.commit_queue).apply_async()

    def check_lost_messages(
        self, info: RunInfo, records: dict[str, dict[str, str]], now: float
    ) -> None:
        """Send again a queued ticket whose message the broker no longer has.

        A host that was cut off or froze may still hold a pending pop on the
        ticket queue: a message sent meanwhile (a ticket taken from it, the
        next batch) goes to that dead connection and is lost for good, and the
        visibility timeout does not bring it back. A ticket queued for longer
        than the heartbeat timeout, while the ticket queue is empty and no
        delivered message carries it, is sent again. The broker is searched
        only then (its unacknowledged messages: a few per worker slot).
        """
        timeout = self.rt.settings.heartbeat_timeout
        suspects = [
            tid
            for tid, rec in records.items()
            if rec.get("state") == Phase.QUEUED
            and now - max(float(rec.get("queued") or 0), float(rec.get("resent") or 0)) > timeout
        ]
        if not suspects or self.broker.llen(self.rt.settings.ticket_queue):
            return  # a message still waiting in the queue may be theirs
        held = liveness.held_by_broker(
            self.broker,
            {tid: liveness.message_mark(info.run_id, tid, records[tid]) for tid in suspects},
        )
        for tid in suspects:
            if tid in held:
                continue
            log.warning(
                "run %s: ticket %s not taken for %.0f s and no worker holds its message; "
                "sending it again",
                info.run_id,
                tid,
                now
                - max(
                    float(records[tid].get("queued") or 0), float(records[tid].get("resent") or 0)
                ),
            )
            self._resend(info, tid, Phase.QUEUED.value, "its message was lost", now)

    @property
    def broker(self) -> Any:
        """A client of the broker's Redis (its queues may live apart from the results)."""
        if self._broker is None:
            self._broker = redis.Redis.from_url(
                self.rt.settings.broker_url, socket_timeout=30, socket_connect_timeout=10
            )
        return self._broker

    def _resend(self, info: RunInfo, tid: str, state: str, why: str, now: float) -> None:
        """Send a ticket's tasks again (the supervisor's warning said why)."""
        self.rt.store.set_ticket(info.run_id, tid, resent=now)
        events.ticket_event(info.run_id, tid, state, event="resent", reason=why)
        sent = producer.ticket_chain(self.app, info.run_id, tid, info.commit_queue).apply_async()
        # the run task's id: a lost message is told from a queued one by it
        run_task = getattr(sent.parent, "id", None) or ""
        self.rt.store.set_ticket(info.run_id, tid, resent_task=run_task)


def install(app: Celery, rt: Runtime) -> None:
    """Run a :class:`Supervisor` on the worker's timer (a consumer bootstep)."""
    supervisor = Supervisor(app, rt)
    interval = rt.settings.supervisor_interval

    class SupervisorStep(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.tref: Any = None

        def start(self, c: Any) -> None:
            self.tref = c.timer.call_repeatedly(interval, supervisor.tick, priority=10)

        def stop(self, c: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None

    app.steps["consumer"].add(SupervisorStep)
