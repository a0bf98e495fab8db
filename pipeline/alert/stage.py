"""The alerter as a stage: Findings in, notifications out, incidents kept.

Order within a batch matters for "never lost, never twice": findings are
folded into incidents, notifications are delivered, then the incidents —
now recording what each sink was told — are produced to the compacted
incidents topic, and only after that are the findings' offsets committed.
A crash before the commit replays the findings; the restored incidents
already say what was delivered, so nothing is posted twice.

Incidents are co-partitioned with findings (same partition number), so a
replica that is assigned findings partition p restores exactly incidents
partition p and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from kafka import TopicPartition
from rich.console import Console

from pipeline.alert.delivery import DeliveryOutcome, deliver, make_client
from pipeline.alert.incidents import FAILED, Change, IncidentBook, next_action
from pipeline.alert.message import Notification, render_links
from pipeline.alert.sinks import Sink, build_sink
from pipeline.config import MeshwatchConfig
from pipeline.kafka.replay import read_to_end
from pipeline.schema import Finding, Incident, decode, encode
from pipeline.stage.loop import Inbound, Output, dead_letter

log = logging.getLogger(__name__)

Plan = dict[str, list[tuple[Notification, Sink]]]


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


class AlerterProcessor:
    name = "alerter"

    def __init__(
        self,
        cfg: MeshwatchConfig,
        sinks: Sequence[Sink] | None = None,
        *,
        console: Console | None = None,
    ) -> None:
        self.cfg = cfg
        self.sinks: list[Sink] = (
            list(sinks)
            if sinks is not None
            else [build_sink(s, console=console) for s in cfg.alerter.sinks]
        )
        self.book = IncidentBook()
        self._partition_of: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._client: httpx.AsyncClient | None = None
        self.deliveries: deque[Delivered] = deque(maxlen=200)
        self._lock = threading.Lock()

    # -- Processor protocol -------------------------------------------------

    def decode(self, raw: bytes) -> Finding:
        return decode(Finding, raw)

    def process(self, batch: Sequence[Inbound[Any]]) -> Iterable[Output]:
        changes: list[tuple[Change, int]] = []
        for item in batch:
            change = self.book.apply(item.value)
            if change is not None:
                changes.append((change, item.partition))
                self._partition_of[change.incident.fingerprint] = item.partition
        if not changes:
            return []
        plan = self._plan(changes)
        outcomes = self._loop.run_until_complete(self._deliver_all(plan)) if plan else []
        outputs: list[Output] = []
        for n, sink, outcome in outcomes:
            self._record(n, sink, outcome)
            if outcome.delivered:
                self.book.mark_delivered(
                    n.fingerprint, sink.name, n.action, outcome.refs, n.incident.first_seen
                )
            else:
                self.book.mark_delivered(
                    n.fingerprint, sink.name, FAILED + n.action, {}, n.incident.first_seen
                )
                outputs.append(self._dead(n, sink, outcome))
        touched = {c.incident.fingerprint for c, _ in changes}
        outputs.extend(self._incident_record(fp) for fp in sorted(touched))
        return outputs

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]:
        mine = [tp.partition for tp in partitions]
        restored = 0
        for record in read_to_end(self.cfg.kafka, self.cfg.topics.incidents, mine):
            try:
                inc = decode(Incident, record.value)
            except Exception as exc:  # a bad state record must not block the restore
                log.error("alerter: skipping unreadable incident record: %s", exc)
                continue
            self.book.restore([inc])
            self._partition_of[inc.fingerprint] = record.partition
            restored += 1
        log.info("alerter: partitions %s assigned; %d incident records restored", mine, restored)
        return ()

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]:
        gone = {tp.partition for tp in partitions}
        drop = [fp for fp, p in self._partition_of.items() if p in gone]
        self.book.forget(drop)
        for fp in drop:
            del self._partition_of[fp]
        return ()

    def idle(self, now: float) -> Iterable[Output]:
        return ()

    def close(self) -> None:
        if self._client is not None:
            self._loop.run_until_complete(self._client.aclose())
            self._client = None
        self._loop.close()

    # -- internals ----------------------------------------------------------

    def _plan(
        self, changes: Sequence[tuple[Change, int]]
    ) -> dict[str, list[tuple[Notification, Sink]]]:
        """What to tell whom, per fingerprint in finding order."""
        templates = self.cfg.alerter.links
        plan: Plan = defaultdict(list)
        # What each sink will have been told once the plan so far is carried
        # out: a batch may hold an incident's firing *and* its resolve.
        told: dict[tuple[str, float, str], str | None] = {}
        for change, _ in changes:
            inc = change.incident
            for sink in self.sinks:
                slot = (inc.fingerprint, inc.first_seen, sink.name)
                before = told.get(slot, inc.notified.get(sink.name))
                action = next_action(inc.status, before)
                if action is None and change.action == "update" and before in ("firing", "update"):
                    action = "update"
                if action is None:
                    continue
                told[slot] = action
                n = Notification(
                    incident=inc,
                    finding=change.finding,
                    action=action,
                    links=render_links(templates, change.finding),
                )
                plan[inc.fingerprint].append((n, sink))
        return plan

    async def _deliver_all(self, plan: Plan) -> list[tuple[Notification, Sink, DeliveryOutcome]]:
        if self._client is None:
            self._client = make_client(self.cfg.alerter.retry.timeout_seconds)
        client = self._client
        retry = self.cfg.alerter.retry

        async def one_incident(
            items: list[tuple[Notification, Sink]],
        ) -> list[tuple[Notification, Sink, DeliveryOutcome]]:
            # sequential per incident: a resolve never overtakes its firing
            out = []
            for n, sink in items:
                out.append((n, sink, await deliver(sink, n, client, retry)))
            return out

        results = await asyncio.gather(*(one_incident(v) for v in plan.values()))
        return [r for group in results for r in group]

    def _record(self, n: Notification, sink: Sink, outcome: DeliveryOutcome) -> None:
        detail = "delivered" if outcome.delivered else (outcome.error or "failed")
        with self._lock:
            self.deliveries.append(
                Delivered(
                    at=time.time(),
                    sink=sink.name,
                    action=n.action,
                    route_key=n.finding.route_key,
                    kind=n.finding.kind,
                    ok=outcome.delivered,
                    detail=detail,
                )
            )
        if not outcome.delivered:
            log.error(
                "alerter: %s of %s to %s failed after %d attempt(s): %s",
                n.action,
                n.fingerprint,
                sink.name,
                outcome.attempts,
                outcome.error,
            )

    def _dead(self, n: Notification, sink: Sink, outcome: DeliveryOutcome) -> Output:
        reason = "rejected by sink" if outcome.permanent else "sink unreachable"
        error = (
            f"sink={sink.name} status={outcome.last_status} attempts={outcome.attempts} "
            f"error={outcome.error} response={outcome.response_body or ''}"
        )
        return dead_letter(
            self.name,
            self.cfg.topics.dlq,
            reason,
            error,
            raw=encode(n.finding),
            key=n.fingerprint.encode(),
            topic=self.cfg.topics.findings,
        )

    def _incident_record(self, fingerprint: str) -> Output:
        inc = self.book.incidents[fingerprint]
        partition = self._partition_of.get(fingerprint)
        n_parts = self.cfg.topics.specs["incidents"].partitions
        return Output(
            self.cfg.topics.incidents,
            fingerprint.encode(),
            encode(inc),
            partition=None if partition is None else partition % n_parts,
        )
