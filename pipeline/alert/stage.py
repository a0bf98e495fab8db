"""The alerter as a stage: Findings in, notifications out, incidents kept.

One turn (a poll batch in ``process``, or a timer in ``idle``) goes:

1. findings are folded into incidents (``IncidentBook``) and each changed
   incident is (re)placed in its routes' groups (``Grouper``);
2. groups that are due say what they owe (``Decision`` s): firing, updates,
   resolves held for flap damping, reminders; silenced members are left out;
3. every decision becomes an outbox entry on the incidents topic, and the
   alerter waits for the broker to acknowledge them **before** the first
   HTTP attempt (``outbox.py`` explains why that makes a crash safe);
4. the outbox is pumped: per sink, oldest first, one at a time, through
   that sink's token bucket, for at most ``delivery_budget_seconds``. A
   delivered entry gets a tombstone at once; a refused one goes to the DLQ
   with the response; the rest wait for a later ``idle()`` with backoff;
5. changed incidents are produced, and everything is flushed — all before
   ``process`` returns, so before the loop commits the findings' offsets.

A batch therefore never blocks on a destination that is down: it costs one
acknowledged outbox record, and the findings are committed.

Incidents and outbox entries are co-partitioned with findings (same
partition number), so a replica that is assigned findings partition p
restores exactly incidents partition p — its incidents and its pending
notices — and nothing else. Findings are keyed by workload
(``namespace/kind/workload``), so every incident of one workload, and hence
each group of the default ``group_by``, lives on one partition and is told
by one replica; a ``group_by`` coarser than the workload (namespace alone)
can still span replicas (docs/sinks.md, "Grouping and replicas").
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from kafka import KafkaProducer, TopicPartition
from rich.console import Console

from pipeline.alert.delivery import DeliveryOutcome, deliver, make_client
from pipeline.alert.grouping import Decision, Grouper, Muted, muted_by, single_id
from pipeline.alert.incidents import FAILED, TOLD_FIRING, IncidentBook, owes_late_firing
from pipeline.alert.message import Member, Notification, render_links
from pipeline.alert.metrics import OpenIncidentsCollector
from pipeline.alert.outbox import OUTBOX_PREFIX, OutboxEntry, OutboxMember, SinkQueue
from pipeline.alert.ratelimit import Limiter, limiter_for
from pipeline.alert.routing import Router, incident_labels
from pipeline.alert.silences import SILENCE_PREFIX, SilenceSet, SilenceStore
from pipeline.alert.sinks import Sink, build_sink
from pipeline.config import MeshwatchConfig
from pipeline.kafka.clients import make_producer
from pipeline.kafka.replay import read_to_end
from pipeline.observe.stage_metrics import StageMetrics
from pipeline.schema import Finding, Incident, decode, encode
from pipeline.stage.loop import Inbound, Output, dead_letter

log = logging.getLogger(__name__)

#: Sink types whose messages are plain posts (no per-incident thread or
#: ticket): they take one grouped notification for a whole group. The
#: others get one notification per incident, on the group's timing. A sink
#: object may say otherwise with a boolean ``accepts_groups`` attribute.
GROUPED_TYPES = frozenset({"console", "webhook", "slack", "teams", "mattermost"})
#: How often to look for resolved incidents old enough to forget.
HOUSEKEEPING_SECONDS = 30.0
#: Waits for a rate-limit token up to this long happen inline; longer ones are
#: left to a later ``idle()`` so the consumer keeps polling.
INLINE_TOKEN_WAIT = 0.05
#: Freeze long-lived objects out of the garbage collector's sight after this
#: many more incidents.
FREEZE_EVERY = 500


#: How long to wait for the broker to acknowledge state records.
BARRIER_SECONDS = 60.0


class StateNotSaved(BaseException):
    """The incidents topic did not take the alerter's state; stop before committing.

    A ``BaseException`` on purpose, like ``SystemExit``: it must end the
    stage, not be handled as one bad message.
    """


@dataclass(frozen=True, slots=True)
class Delivered:
    """A delivery as the demo and tests see it."""

    at: float
    sink: str
    action: str
    route_key: str
    kind: str
    ok: bool
    detail: str


@dataclass
class AlerterStats:
    decided: int = 0
    delivered: int = 0
    refused: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    evicted: int = 0
    restored_incidents: int = 0
    restored_outbox: int = 0


class AlerterProcessor:
    name = "alerter"

    def __init__(
        self,
        cfg: MeshwatchConfig,
        sinks: Sequence[Sink] | None = None,
        *,
        console: Console | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
        checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        """``clock`` and ``sleep`` drive every timer (tests pass a fake pair);
        ``checkpoint`` is called at named points of a turn ("decided", "sent",
        "persisted") so tests can stop the alerter exactly there.
        """
        self.cfg = cfg
        a = cfg.alerter
        self.sinks: list[Sink] = (
            list(sinks) if sinks is not None else [build_sink(s, console=console) for s in a.sinks]
        )
        self._sink_by_name = {s.name: s for s in self.sinks}
        types = {entry.name: entry.type for entry in a.sinks}
        self._sink_types = {s.name: types.get(s.name) for s in self.sinks}
        self.clock = clock or time.time
        self._sleep = sleep or asyncio.sleep
        self._checkpoint = checkpoint or (lambda point: None)

        window = cfg.window.seconds
        gi = a.grouping.group_interval_seconds
        self.group_interval = window if gi is None else gi
        self.flap_damping = 3 * window if a.flap_damping_seconds is None else a.flap_damping_seconds
        self.book = IncidentBook(self.flap_damping)
        self.router = Router(
            a.routes,
            a.grouping,
            list(self._sink_by_name),
            default_sinks=a.default_sinks,
            group_interval=self.group_interval,
        )
        self.grouper = Grouper(
            self.router,
            accepts_groups=self._accepts_groups,
            flap_damping=self.flap_damping,
            max_group_size=a.grouping.max_group_size,
        )
        self.silences = SilenceSet(a.maintenance_windows)
        self._silence_store: SilenceStore | None = None
        self._silence_wake: float | None = None
        self._limiters: dict[str, Limiter] = {
            s.name: limiter_for(self._sink_types[s.name], a.rate_limits.get(s.name), self.clock)
            for s in self.sinks
        }
        self._queues: dict[str, SinkQueue] = {s.name: SinkQueue() for s in self.sinks}
        self._blocked_until: dict[str, float] = {}
        self._entry_partition: dict[str, int] = {}
        #: Outbox keys restored after a restart: maybe delivered already.
        self._resumed: set[str] = set()
        self._seq = 0
        self._partition_of: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._superseded: list[Decision] = []
        self._journal: KafkaProducer | None = None
        self._futures: list[Any] = []
        self._loop = asyncio.new_event_loop()
        self._client: httpx.AsyncClient | None = None
        self._next_housekeeping = 0.0
        self._frozen_at = 0
        self._next_refresh: dict[str, float] = {}
        self.deliveries: deque[Delivered] = deque(maxlen=200)
        self._lock = threading.Lock()
        #: handed to the StageRunner so /metrics serves deliveries and open incidents
        self.metrics = StageMetrics(self.name)
        self.metrics.registry.register(OpenIncidentsCollector(self._incident_snapshot))
        self.stats = AlerterStats()
        log.info(
            "alerter: group_by %s, group_wait %.1f s, group_interval %.1f s, repeat %.0f s, "
            "flap damping %.1f s, %d route(s)",
            a.grouping.group_by,
            a.grouping.group_wait_seconds,
            self.group_interval,
            a.grouping.repeat_interval_seconds,
            self.flap_damping,
            len(a.routes),
        )

    # -- Processor protocol -------------------------------------------------

    def decode(self, raw: bytes) -> Finding:
        return decode(Finding, raw)

    def process(self, batch: Sequence[Inbound[Any]]) -> Iterable[Output]:
        self._ensure_silences()
        now = self.clock()
        for item in batch:
            change = self.book.apply(item.value, now)
            if change is None:
                continue
            inc = change.incident
            moved_from = self._partition_of.get(inc.fingerprint, item.partition)
            if moved_from != item.partition:
                # Its findings now come on another partition (findings were
                # keyed by route in earlier versions): the record follows them, and
                # the old copy is removed so no restore can read it back.
                self._send(inc.fingerprint, None, self._partition_for(inc.fingerprint))
            self._partition_of[inc.fingerprint] = item.partition
            self._dirty.add(inc.fingerprint)
            if change.superseded is not None:
                self._resolve_superseded(change.superseded, now)
            self.grouper.place(inc, now)
        self._turn(now)
        return ()

    def idle(self, now: float) -> Iterable[Output]:
        """Timers: group waits and intervals, damping, reminders, silences, retries.

        The alerter's own clock is used rather than ``now`` so that a test
        clock drives every timer; with the default clock they are the same.
        """
        now = self.clock()
        self._ensure_silences()
        self._watch_silences(now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_SECONDS
            self._evict(now)
        if len(self.book.incidents) >= self._frozen_at + FREEZE_EVERY:
            # Incidents live for hours: keep them out of the cyclic garbage
            # collector's full passes, which otherwise walk every one of them
            # (a 100-300 ms pause with 10,000 open incidents). Reference
            # counting still frees them; the stage loop does the same once
            # at start.
            self._frozen_at = len(self.book.incidents)
            gc.freeze()
        if self._has_work(now):
            self._turn(now)
        return ()

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]:
        self._ensure_silences()
        now = self.clock()
        mine = [tp.partition for tp in partitions]
        incidents: dict[str, tuple[Incident, int]] = {}
        entries: dict[str, tuple[OutboxEntry, int]] = {}
        for record in read_to_end(self.cfg.kafka, self.cfg.topics.incidents, mine):
            key = (record.key or b"").decode("utf-8", "replace")
            if key.startswith(SILENCE_PREFIX):
                continue  # the silence store reads those
            try:
                if key.startswith(OUTBOX_PREFIX):
                    if record.value is None:
                        entries.pop(key, None)
                    else:
                        entries[key] = (decode(OutboxEntry, record.value), record.partition)
                elif record.value is None:
                    incidents.pop(key, None)
                else:
                    incidents[key] = (decode(Incident, record.value), record.partition)
            except Exception as exc:  # a bad state record must not block the restore
                log.error("alerter: skipping unreadable record %r: %s", key, exc)
        for inc, partition in incidents.values():
            self.book.restore([inc])
            self._partition_of[inc.fingerprint] = partition
            if (
                inc.status == "firing"
                or any(v in TOLD_FIRING for v in inc.notified.values())
                or owes_late_firing(inc)
            ):
                self.grouper.place(inc, now)
        self._restore_outbox(entries.values())
        self.stats.restored_incidents += len(incidents)
        log.info(
            "alerter: partitions %s assigned; %d incident(s) and %d pending notice(s) restored",
            mine,
            len(incidents),
            len(entries),
        )
        return ()

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]:
        self._barrier()
        gone = {tp.partition for tp in partitions}
        drop = [fp for fp, p in self._partition_of.items() if p in gone]
        self.book.forget(drop)
        for fp in drop:
            del self._partition_of[fp]
            self.grouper.remove(fp)
            self._dirty.discard(fp)
        for queue in self._queues.values():
            keep = [e for e in queue if self._entry_partition.get(e.key) not in gone]
            queue.drop(keep)
        self._resumed &= {e.key for queue in self._queues.values() for e in queue}
        return ()

    def close(self) -> None:
        try:
            self._barrier()
        finally:
            if self._journal is not None:
                self._journal.close(timeout=10)
                self._journal = None
            if self._silence_store is not None:
                self._silence_store.close()
            if self._client is not None:
                self._loop.run_until_complete(self._client.aclose())
                self._client = None
            self._loop.close()

    # -- queries (tests, demo, benchmarks) ----------------------------------

    def pending(self, sink: str | None = None) -> int:
        """Notices decided but not yet delivered (for one sink or all)."""
        if sink is not None:
            return len(self._queues.get(sink, ()))
        return sum(len(q) for q in self._queues.values())

    def muted_now(self, inc: Incident) -> list[str]:
        return self.silences.muting(incident_labels(inc), self.clock())

    # -- one turn -----------------------------------------------------------

    def _turn(self, now: float) -> None:
        muted = self._muted(now)
        decisions = self._superseded
        self._superseded = []
        for group in self.grouper.due_groups(now):
            decisions += self.grouper.evaluate(group, self.book.incidents, muted, now)
        for fp in self.grouper.hushed:
            if self.book.settle_untold(fp):
                self._dirty.add(fp)
        self.grouper.hushed.clear()
        if decisions:
            self._enqueue(decisions, now)
            self._barrier()  # every decision is in the outbox before any attempt
            self._checkpoint("decided")
        if any(self._sink_due(name, now) for name in self._queues) or self._refresh_due():
            deadline = now + self.cfg.alerter.delivery_budget_seconds
            self._loop.run_until_complete(self._pump(deadline, muted))
        self._write_incidents()
        self._barrier()
        self._checkpoint("persisted")

    def _has_work(self, now: float) -> bool:
        wake = self.grouper.next_wake()
        return bool(
            self._dirty
            or self._superseded
            or self._futures
            or self.grouper.has_dirty()
            or (wake is not None and wake <= now)
            or any(self._sink_due(name, now) for name in self._queues)
            or self._refresh_due()
        )

    def _sink_due(self, sink: str, now: float) -> bool:
        """The sink has a notice waiting that may be tried now (backoff and bucket allowing)."""
        head = self._queues[sink].head()
        return (
            head is not None
            and head.next_attempt_at <= now
            and self._blocked_until.get(sink, 0.0) <= now
        )

    def _accepts_groups(self, sink_name: str) -> bool:
        flag = getattr(self._sink_by_name.get(sink_name), "accepts_groups", None)
        if isinstance(flag, bool):
            return flag
        return self._sink_types.get(sink_name) in GROUPED_TYPES

    # -- silences -----------------------------------------------------------

    def _ensure_silences(self) -> None:
        if self._silence_store is None:
            self._silence_store = SilenceStore(
                self.cfg,
                self.silences,
                refresh_seconds=self.cfg.alerter.silence_refresh_seconds,
                clock=self.clock,
            )
            self._silence_store.load()
            self._silence_wake = self.silences.next_change(self.clock())

    def _watch_silences(self, now: float) -> None:
        assert self._silence_store is not None
        changed = self._silence_store.refresh()
        if changed or (self._silence_wake is not None and now >= self._silence_wake):
            self.grouper.touch_all()
            self._silence_wake = self.silences.next_change(now)

    def _muted(self, now: float) -> Muted:
        """The silences and windows in force now (worked out once per turn)."""
        return self.silences.active(now)

    # -- deciding -----------------------------------------------------------

    def _resolve_superseded(self, old: Incident, now: float) -> None:
        """A route fired again after its resolve was due: settle the old occurrence first.

        Sinks told it fired get its resolve; routed sinks never told of it
        (it fired and resolved within one batch) get its firing notice, from
        the opening finding, then its resolve, unless a silence covers it.
        """
        member = Member(old, old.last_finding, "resolved")
        sinks = [s for s, told in old.notified.items() if told in TOLD_FIRING]
        if owes_late_firing(old) and not self.silences.muting(incident_labels(old), now):
            assert old.opened_by is not None
            opening = Member(old, old.opened_by, "firing")
            for sink in self.router.route(incident_labels(old)):
                if old.notified.get(sink) is None and sink in self._sink_by_name:
                    nid = single_id(opening, "firing")
                    self._superseded.append(Decision(sink, "firing", (opening,), False, nid, {}))
                    sinks.append(sink)
        for sink in sinks:
            if sink in self._sink_by_name:
                self._superseded.append(
                    Decision(sink, "resolved", (member,), False, single_id(member, "resolved"), {})
                )

    def _enqueue(self, decisions: Sequence[Decision], now: float) -> None:
        templates = self.cfg.alerter.links
        limit = self.cfg.alerter.outbox.max_pending_per_sink
        for d in decisions:
            queue = self._queues[d.sink]
            lead = d.members[0]
            self._seq += 1
            entry = OutboxEntry(
                sink=d.sink,
                notification_id=d.notification_id,
                seq=self._seq,
                decided_at=now,
                action=d.action,
                reason=d.reason,
                members=tuple(
                    OutboxMember(
                        incident=m.incident,
                        finding=m.finding,
                        action=m.action,
                        links=render_links(templates, m.finding) if d.grouped else {},
                    )
                    for m in d.members
                ),
                grouped=d.grouped,
                group_labels=d.group_labels,
                links=render_links(templates, lead.finding),
            )
            if len(queue) >= limit:
                self._dead(entry, "outbox full", f"sink={d.sink}: {len(queue)} notices waiting")
                self._record(entry, FAILED + d.action, now)
                continue
            if not queue.push(entry):
                continue  # the same notice is already waiting
            self.stats.decided += 1
            partition = self._partition_for(lead.incident.fingerprint)
            self._entry_partition[entry.key] = partition
            self._send(entry.key, encode(entry), partition)
            self._record(entry, d.action, now)

    def _record(self, entry: OutboxEntry, action: str, now: float) -> None:
        for m in entry.members:
            inc = m.incident
            if self.book.record(inc.fingerprint, inc.first_seen, entry.sink, action, now):
                self._dirty.add(inc.fingerprint)

    def _restore_outbox(self, entries: Iterable[tuple[OutboxEntry, int]]) -> None:
        ordered = sorted(entries, key=lambda ep: (ep[0].decided_at, ep[0].seq))
        for entry, partition in ordered:
            self._seq = max(self._seq, entry.seq)
            if entry.sink not in self._queues:
                log.warning(
                    "alerter: pending notice %s is for sink %r, which is not configured",
                    entry.notification_id,
                    entry.sink,
                )
                self._dead(entry, "sink not configured", f"sink={entry.sink}")
                self._send(entry.key, None, partition)
                continue
            # A crash between the outbox record and the incident records must
            # not make the alerter decide the same notice again: the entry's
            # snapshot (taken after its findings were applied, so it knows
            # their ids) stands in for an incident record that never arrived.
            for m in entry.members:
                snap = m.incident
                inc = self.book.incidents.get(snap.fingerprint)
                if _newer(snap, inc):
                    self.book.restore([snap])
                    self._partition_of.setdefault(snap.fingerprint, partition)
                    self._dirty.add(snap.fingerprint)
                    inc = snap
                if inc is None or inc.first_seen != snap.first_seen:
                    continue
                if inc.notified_at.get(entry.sink, float("-inf")) < entry.decided_at:
                    self.book.record(
                        inc.fingerprint, inc.first_seen, entry.sink, entry.action, entry.decided_at
                    )
                    self.grouper.place(self.book.incidents[inc.fingerprint], self.clock())
            if self._queues[entry.sink].push(entry):
                self._entry_partition[entry.key] = partition
                self._resumed.add(entry.key)
                self.stats.restored_outbox += 1

    # -- delivering ---------------------------------------------------------

    async def _pump(self, deadline: float, muted: Muted) -> None:
        if self._client is None:
            self._client = make_client(self.cfg.alerter.retry.timeout_seconds)
        now = self.clock()
        jobs = [self._pump_sink(s, deadline) for s in self.sinks if self._sink_due(s.name, now)]
        jobs += [self._refresh(s, muted) for s in self.sinks if self._refresh_due_for(s)]
        await asyncio.gather(*jobs)

    async def _pump_sink(self, sink: Sink, deadline: float) -> None:
        """Oldest first, one at a time: a destination sees notices in decision order."""
        assert self._client is not None
        queue = self._queues[sink.name]
        retry = self.cfg.alerter.retry
        limiter = self._limiters[sink.name]
        while (head := queue.head()) is not None:
            now = self.clock()
            if now >= deadline or head.next_attempt_at > now:
                return
            wait = limiter.wait_time()
            if wait > INLINE_TOKEN_WAIT:
                # Rate-limited: come back when a token is free, and let the
                # loop poll meanwhile instead of sleeping here.
                self._blocked_until[sink.name] = now + wait
                return
            outcome = await deliver(
                sink,
                head.notification(self.book.incidents, resumed=head.key in self._resumed),
                self._client,
                retry,
                sleep=self._sleep,
                limiter=limiter,
                deadline=deadline,
                clock=self.clock,
                prior_attempts=head.attempts,
            )
            if outcome.delivered or outcome.permanent:
                self._resumed.discard(head.key)
            if outcome.delivered:
                queue.pop()
                self._checkpoint("sent")
                self._delivered(head, outcome)
            elif outcome.permanent:
                queue.pop()
                self._refused(head, outcome)
            else:
                self._not_yet(queue, head, outcome)
                return

    def _delivered(self, entry: OutboxEntry, outcome: DeliveryOutcome) -> None:
        """Record the members' incidents, then the tombstone, in that order.

        Once the tombstone is durable the entry is gone for good, so the
        incidents saying the sink was told (and the ids it gave back) must
        already be there, or a replay of the findings would decide the same
        notice again. Every decision is in the outbox before any attempt,
        so an incident record may be written at any moment.
        """
        self.stats.delivered += 1
        for m in entry.members:
            inc = m.incident
            self.book.add_refs(inc.fingerprint, inc.first_seen, entry.sink, outcome.refs)
            current = self.book.incidents.get(inc.fingerprint)
            if current is not None and current.first_seen == inc.first_seen:
                self._send(inc.fingerprint, encode(current), self._partition_for(inc.fingerprint))
                self._dirty.discard(inc.fingerprint)
        self._send(entry.key, None, self._entry_partition.pop(entry.key, None))
        self._note(entry, True, "delivered")

    def _refused(self, entry: OutboxEntry, outcome: DeliveryOutcome) -> None:
        self.stats.refused += 1
        error = (
            f"sink={entry.sink} status={outcome.last_status} attempts={outcome.attempts} "
            f"error={outcome.error} response={outcome.response_body or ''}"
        )
        self._dead(entry, "rejected by sink", error)
        self._send(entry.key, None, self._entry_partition.pop(entry.key, None))
        self._record(entry, FAILED + entry.action, entry.decided_at)
        self._note(entry, False, outcome.error or "refused")
        log.error(
            "alerter: %s %s refused by %s after %d attempt(s): %s",
            entry.action,
            entry.notification_id,
            entry.sink,
            outcome.attempts,
            outcome.error,
        )

    def _not_yet(self, queue: SinkQueue, entry: OutboxEntry, outcome: DeliveryOutcome) -> None:
        now = self.clock()
        wait = outcome.retry_in if outcome.retry_in is not None else 1.0
        if outcome.attempts == 0:  # only waited for a token: nothing to remember
            queue.replace_head(entry.model_copy(update={"next_attempt_at": now + wait}))
            return
        self.stats.failed_attempts += outcome.attempts
        max_age = self.cfg.alerter.outbox.max_age_seconds
        if now - entry.decided_at > max_age:
            queue.pop()
            self._dead(
                entry,
                "sink unreachable",
                f"sink={entry.sink} undelivered for {now - entry.decided_at:.0f} s "
                f"({entry.attempts + outcome.attempts} attempts): {outcome.error}",
            )
            self._send(entry.key, None, self._entry_partition.pop(entry.key, None))
            self._record(entry, FAILED + entry.action, entry.decided_at)
            self._note(entry, False, outcome.error or "unreachable")
            return
        updated = entry.model_copy(
            update={
                "attempts": entry.attempts + outcome.attempts,
                "next_attempt_at": now + wait,
                "last_error": outcome.error,
            }
        )
        queue.replace_head(updated)
        self._send(updated.key, encode(updated), self._entry_partition.get(updated.key))
        log.warning(
            "alerter: %s to %s not delivered yet (%s); %d waiting, next try in %.1f s",
            entry.notification_id,
            entry.sink,
            outcome.error,
            len(queue),
            wait,
        )

    # -- re-posting to targets whose alerts expire (Alertmanager's API) ------

    def _refresh_due_for(self, sink: Sink) -> bool:
        interval = getattr(sink, "resend_interval_seconds", None)
        if not isinstance(interval, int | float) or not callable(getattr(sink, "refresh", None)):
            return False
        return self.clock() >= self._next_refresh.get(sink.name, 0.0)

    def _refresh_due(self) -> bool:
        return any(self._refresh_due_for(s) for s in self.sinks)

    async def _refresh(self, sink: Sink, muted: Muted) -> None:
        assert self._client is not None
        now = self.clock()
        interval = float(getattr(sink, "resend_interval_seconds", 60.0))
        self._next_refresh[sink.name] = now + interval
        links = self.cfg.alerter.links
        open_ = [
            Notification(i, i.last_finding, "firing", links=render_links(links, i.last_finding))
            for i in self.book.incidents.values()
            if i.status == "firing"
            and i.notified.get(sink.name) in TOLD_FIRING
            and not (muted and muted_by(muted, incident_labels(i)))
        ]
        if not open_:
            return
        limiter = self._limiters[sink.name]
        if limiter.wait_time() > 0:
            self._next_refresh[sink.name] = now + min(interval, 1.0)
            return
        limiter.take()
        try:
            await sink.refresh(open_, self._client)  # type: ignore[attr-defined]
        except Exception as exc:  # retried on the next interval
            log.warning("alerter: re-posting open incidents to %s failed: %s", sink.name, exc)

    # -- state on the incidents topic ---------------------------------------

    def _partition_for(self, fingerprint: str) -> int:
        """Where the incident's records go: the partition of its findings."""
        partition = self._partition_of.get(fingerprint, 0)
        return partition % self.cfg.topics.specs["incidents"].partitions

    def _producer(self) -> KafkaProducer:
        if self._journal is None:
            self._journal = make_producer(self.cfg.kafka, "alerter-state")
        return self._journal

    def _send(
        self, key: str, value: bytes | None, partition: int | None, topic: str | None = None
    ) -> None:
        future = self._producer().send(
            topic or self.cfg.topics.incidents,
            key=key.encode(),
            value=value,
            partition=partition,
        )
        self._futures.append(future)

    def _barrier(self) -> None:
        """Wait until the broker has every record sent so far.

        If it cannot confirm them the alerter no longer knows what it has
        promised, so it stops without committing (``StateNotSaved`` is not an
        ``Exception``: the stage loop must not retry the batch message by
        message, dead-letter it and commit). A restart restores what was saved.
        """
        if not self._futures:
            return
        assert self._journal is not None
        futures, self._futures = self._futures, []
        deadline = time.monotonic() + BARRIER_SECONDS
        try:
            self._journal.flush(timeout=BARRIER_SECONDS)
            for f in futures:
                f.get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            log.critical("alerter: state not saved to %s: %s", self.cfg.topics.incidents, exc)
            raise StateNotSaved(f"{type(exc).__name__}: {exc}") from exc

    def _write_incidents(self) -> None:
        for fp in sorted(self._dirty):
            inc = self.book.incidents.get(fp)
            if inc is not None:
                self._send(fp, encode(inc), self._partition_for(fp))
        self._dirty.clear()

    def _evict(self, now: float) -> None:
        """Forget resolved incidents nobody is owed anything about, after the retention."""
        keep_for = self.flap_damping + self.cfg.alerter.resolved_retention_seconds
        old = [
            inc
            for inc in self.book.incidents.values()
            if inc.status == "resolved"
            and (inc.resolved_at or 0.0) + keep_for < now
            and not any(v in TOLD_FIRING for v in inc.notified.values())
        ]
        for inc in old:
            fp = inc.fingerprint
            partition = self._partition_for(fp)
            self.book.forget([fp])
            self.grouper.remove(fp)
            self._partition_of.pop(fp, None)
            self._dirty.discard(fp)
            self._send(fp, None, partition)
        self.stats.evicted += len(old)

    def _dead(self, entry: OutboxEntry, reason: str, error: str) -> None:
        lead = entry.lead
        raw = encode(entry) if entry.grouped else encode(lead.finding)
        out: Output = dead_letter(
            self.name,
            self.cfg.topics.dlq,
            reason,
            error,
            raw=raw,
            key=lead.incident.fingerprint.encode(),
            topic=self.cfg.topics.findings,
        )
        self.stats.dead_lettered += 1
        future = self._producer().send(
            out.topic, key=out.key, value=out.value, headers=list(out.headers)
        )
        self._futures.append(future)

    def _incident_snapshot(self) -> list[Incident]:
        # list() of a dict view runs without releasing the GIL: a consistent copy
        # even while the stage thread changes the book
        return list(self.book.incidents.values())

    def _note(self, entry: OutboxEntry, ok: bool, detail: str) -> None:
        f = entry.lead.finding
        self.metrics.delivered(entry.sink, ok)
        with self._lock:
            self.deliveries.append(
                Delivered(
                    at=time.time(),
                    sink=entry.sink,
                    action=entry.action,
                    route_key=f.route_key,
                    kind=f.kind,
                    ok=ok,
                    detail=detail,
                )
            )


def _newer(snapshot: Incident, current: Incident | None) -> bool:
    """Is an outbox entry's snapshot of an incident later than the restored record?"""
    if current is None or snapshot.first_seen > current.first_seen:
        return True
    return (
        snapshot.first_seen == current.first_seen
        and snapshot.last_finding.id not in current.finding_ids
    )
