"""The outbox: every notification the alerter has decided to send, until it is sent.

A decision is written here *before* the first attempt, as a record on the
compacted incidents topic keyed ``outbox:<sink>:<notification id>``; when
the sink accepts it (or refuses it for good, which dead-letters it) the key
gets a tombstone. So at any moment the topic holds exactly the notices that
are owed, in the order they were decided, and:

- a destination that is down costs nothing but a growing outbox: the batch
  that decided the notice is committed as soon as the record is acknowledged,
  and the alerter keeps trying from ``idle()`` with backoff, oldest first,
  one at a time per destination, so they arrive in order once it is back;
- a crash at any point before the tombstone means the notice is sent
  (again) after the restart. The only duplicate left is a notice whose
  HTTP request was answered in the last moments before the crash, and it
  carries the same notification id (``X-Meshwatch-Notification-Id``,
  PagerDuty ``dedup_key``, …) so idempotent targets drop it. Restored
  entries are handed to sinks as ``resumed`` notifications, so a sink that
  can ask its target (Slack bot: the message metadata) looks before posting;
  docs/sinks.md lists what each target does with a repeat.

Entries go to the partition of their lead incident, so the replica that owns
an incident also owns its pending notices, and a rebalance moves them along.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.alert.message import Member, Notification
from pipeline.schema import Finding, Incident

OUTBOX_PREFIX = "outbox:"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OutboxMember(_Record):
    incident: Incident
    finding: Finding
    action: Literal["firing", "update", "resolved"]
    #: The member's own rendered links, for grouped entries (empty otherwise:
    #: a single notice uses the entry's ``links``).
    links: dict[str, str] = Field(default_factory=dict)


class OutboxEntry(_Record):
    """One decided notification for one sink, with everything needed to send it again."""

    schema_: Literal["meshwatch.outbox/v1"] = Field("meshwatch.outbox/v1", alias="schema")
    sink: str
    notification_id: str
    seq: int = Field(ge=0, description="Decision order within one alerter, per sink.")
    decided_at: float = Field(description="Alerter clock at the decision.")
    action: Literal["firing", "update", "resolved"]
    reason: str = ""
    members: tuple[OutboxMember, ...] = Field(min_length=1, description="Lead first.")
    grouped: bool = False
    group_labels: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)
    attempts: int = Field(0, ge=0)
    next_attempt_at: float = 0.0
    last_error: str | None = None

    @property
    def key(self) -> str:
        return outbox_key(self.sink, self.notification_id)

    @property
    def lead(self) -> OutboxMember:
        return self.members[0]

    def notification(
        self, incidents: dict[str, Incident] | None = None, *, resumed: bool = False
    ) -> Notification:
        """The notification to send, with each member's latest ids from that sink.

        A resolve decided while the firing was still waiting carries a
        snapshot without the firing's message ts or ticket key; the sink
        needs the ones the firing got back, so they are taken from the book.
        """
        members = tuple(
            Member(_fresh(m.incident, self.sink, incidents), m.finding, m.action, dict(m.links))
            for m in self.members
        )
        lead = members[0]
        return Notification(
            incident=lead.incident,
            finding=lead.finding,
            action=self.action,
            links=dict(self.links),
            notification_id=self.notification_id,
            members=members if self.grouped else (),
            reason=self.reason,
            group_labels=dict(self.group_labels),
            resumed=resumed,
        )


def _fresh(inc: Incident, sink: str, incidents: dict[str, Incident] | None) -> Incident:
    if incidents is None:
        return inc
    cur = incidents.get(inc.fingerprint)
    if cur is None or cur.first_seen != inc.first_seen:
        return inc
    refs = cur.sink_refs.get(sink)
    if not refs or refs == inc.sink_refs.get(sink):
        return inc
    return inc.model_copy(update={"sink_refs": {**inc.sink_refs, sink: dict(refs)}})


def outbox_key(sink: str, notification_id: str) -> str:
    return f"{OUTBOX_PREFIX}{sink}:{notification_id}"


@dataclass
class SinkQueue:
    """The pending notices of one sink, oldest decision first."""

    entries: deque[OutboxEntry] = field(default_factory=deque)
    ids: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[OutboxEntry]:
        return iter(self.entries)

    def push(self, entry: OutboxEntry) -> bool:
        """Append unless a notice with that id is already waiting."""
        if entry.notification_id in self.ids:
            return False
        self.entries.append(entry)
        self.ids.add(entry.notification_id)
        return True

    def head(self) -> OutboxEntry | None:
        return self.entries[0] if self.entries else None

    def pop(self) -> OutboxEntry:
        entry = self.entries.popleft()
        self.ids.discard(entry.notification_id)
        return entry

    def replace_head(self, entry: OutboxEntry) -> None:
        self.entries[0] = entry

    def drop(self, keep: Iterable[OutboxEntry]) -> None:
        self.entries = deque(keep)
        self.ids = {e.notification_id for e in self.entries}
