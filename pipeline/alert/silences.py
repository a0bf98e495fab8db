"""Silences (made with ``meshwatch silence``) and maintenance windows (in the config).

A silence is a set of matchers and a time range. While one matches an
incident, sinks hear nothing about it; the incident is still tracked (counts,
last finding, its resolve). When the silence ends, whatever is still owed is
sent on the group's next turn: the firing of an incident still firing, or the
resolve of one that was announced before the silence and resolved under it.
An incident that fired and resolved entirely under a silence is never
mentioned, as in Alertmanager.

Storage: silence records live on the compacted incidents topic, in partition
0, keyed ``silence:<id>``; a change (expiry) is a new record with the same
key, so compaction keeps one record per silence. Why not a topic of their
own: the incidents topic is already the alerter's compacted state, so
nothing new has to be provisioned, granted or listed in deployment manifests,
and the CLI needs only what the alerter already uses. The cost is that every
alerter replica reads partition 0 (incidents included, skipped by key
without decoding) to find them, at start and then every
``silence_refresh_seconds``; with compaction that partition holds one record
per incident, which is small next to the findings stream.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from kafka import KafkaConsumer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.alert.matchers import Matcher, MatcherError, match_all, parse_all
from pipeline.alert.settings import WEEKDAYS, MaintenanceWindow
from pipeline.config import MeshwatchConfig
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.schema import decode, encode

log = logging.getLogger(__name__)

SILENCE_PREFIX = "silence:"
SILENCE_PARTITION = 0
State = Literal["pending", "active", "expired"]


class Silence(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["meshwatch.silence/v1"] = Field("meshwatch.silence/v1", alias="schema")
    id: str = Field(min_length=1)
    matchers: tuple[str, ...] = Field(min_length=1)
    starts_at: float
    ends_at: float
    created_by: str = ""
    comment: str = ""
    created_at: float
    updated_at: float

    @field_validator("matchers")
    @classmethod
    def _parse(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        try:
            parse_all(v)
        except MatcherError as exc:
            raise ValueError(str(exc)) from None
        return v

    @property
    def key(self) -> str:
        return SILENCE_PREFIX + self.id

    def state(self, now: float) -> State:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"


def new_silence(
    matchers: Sequence[str],
    *,
    starts_at: float,
    ends_at: float,
    created_by: str = "",
    comment: str = "",
    now: float | None = None,
) -> Silence:
    stamp = time.time() if now is None else now
    if ends_at <= starts_at:
        raise ValueError("a silence must end after it starts")
    return Silence(
        id=uuid.uuid4().hex[:12],
        matchers=tuple(matchers),
        starts_at=starts_at,
        ends_at=ends_at,
        created_by=created_by,
        comment=comment,
        created_at=stamp,
        updated_at=stamp,
    )


# -- maintenance windows ------------------------------------------------------


def window_spans(w: MaintenanceWindow, now: float) -> list[tuple[float, float]]:
    """The window's (start, end) spans around ``now`` (yesterday to a week ahead)."""
    if w.starts_at is not None and w.ends_at is not None:
        return [(w.starts_at.timestamp(), w.ends_at.timestamp())]
    assert w.start is not None
    assert w.end is not None
    tz = ZoneInfo(w.timezone)
    today = datetime.fromtimestamp(now, tz).date()
    days = {WEEKDAYS.index(d) for d in w.weekdays}
    spans = []
    for offset in range(-1, 8):
        day = today + timedelta(days=offset)
        if day.weekday() not in days:
            continue
        start = datetime.combine(day, w.start, tz)
        end_day = day if w.end > w.start else day + timedelta(days=1)
        end = datetime.combine(end_day, w.end, tz)
        spans.append((start.timestamp(), end.timestamp()))
    return spans


class SilenceSet:
    """Silences and maintenance windows, asked with the alerter's clock (no I/O)."""

    def __init__(self, windows: Sequence[MaintenanceWindow] = ()) -> None:
        self.silences: dict[str, Silence] = {}
        self._parsed: dict[str, tuple[Matcher, ...]] = {}
        self.windows = [(w, parse_all(w.match)) for w in windows]

    def update(self, silence: Silence) -> bool:
        """Take a new or changed silence; True if anything changed."""
        if self.silences.get(silence.id) == silence:
            return False
        self.silences[silence.id] = silence
        self._parsed[silence.id] = parse_all(silence.matchers)
        return True

    def active(self, now: float) -> list[tuple[str, tuple[Matcher, ...]]]:
        """The silences and windows in force at ``now``, with their matchers."""
        out = [
            (sid, self._parsed[sid])
            for sid, s in self.silences.items()
            if s.starts_at <= now < s.ends_at
        ]
        for w, matchers in self.windows:
            if any(a <= now < b for a, b in window_spans(w, now)):
                out.append((f"maintenance:{w.name}", matchers))
        return out

    def muting(self, labels: Mapping[str, str], now: float) -> list[str]:
        """Ids of active silences and names of open windows that mute these labels."""
        return [name for name, matchers in self.active(now) if match_all(matchers, labels)]

    def next_change(self, now: float) -> float | None:
        """The next time a silence or window starts or ends after ``now``."""
        times = [t for s in self.silences.values() for t in (s.starts_at, s.ends_at) if t > now]
        for w, _ in self.windows:
            times.extend(t for span in window_spans(w, now) for t in span if t > now)
        return min(times) if times else None


# -- Kafka --------------------------------------------------------------------


def _silence_records(records: Iterable[Any]) -> Iterable[Silence]:
    for r in records:
        key = r.key or b""
        if not key.startswith(SILENCE_PREFIX.encode()) or r.value is None:
            continue
        try:
            yield decode(Silence, r.value)
        except Exception as exc:  # a bad record must not hide the others
            log.error("skipping unreadable silence record %r: %s", key, exc)


class SilenceStore:
    """Keeps a :class:`SilenceSet` in step with partition 0 of the incidents topic."""

    def __init__(
        self,
        cfg: MeshwatchConfig,
        silences: SilenceSet,
        *,
        refresh_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.set = silences
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._consumer: KafkaConsumer | None = None
        self._next_refresh = 0.0

    def load(self, timeout_s: float = 60.0) -> None:
        """Read every silence there is now (called once, before the first batch)."""
        consumer = self._ensure()
        tp = TopicPartition(self.cfg.topics.incidents, SILENCE_PARTITION)
        end = consumer.end_offsets([tp]).get(tp, 0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=300, max_records=5000)
            for s in _silence_records(r for batch in polled.values() for r in batch):
                self.set.update(s)
            if not polled and consumer.position(tp) >= end:
                break
        self._next_refresh = self._clock() + self.refresh_seconds
        log.info("alerter: %d silence(s) loaded", len(self.set.silences))

    def refresh(self) -> bool:
        """Pick up silences added or expired since; True if any changed."""
        now = self._clock()
        if now < self._next_refresh:
            return False
        self._next_refresh = now + self.refresh_seconds
        consumer = self._ensure()
        changed = False
        polled = consumer.poll(timeout_ms=0, max_records=5000)
        for s in _silence_records(r for batch in polled.values() for r in batch):
            if self.set.update(s):
                log.info("alerter: silence %s (%s) updated", s.id, ", ".join(s.matchers))
                changed = True
        return changed

    def _ensure(self) -> KafkaConsumer:
        if self._consumer is None:
            consumer = make_consumer(self.cfg.kafka, "silences", group_id=None)
            tp = TopicPartition(self.cfg.topics.incidents, SILENCE_PARTITION)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            self._consumer = consumer
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None


def write_silence(cfg: MeshwatchConfig, silence: Silence) -> None:
    """Store a silence (new or changed) where every alerter replica reads it."""
    producer = make_producer(cfg.kafka, "silence-cli")
    try:
        producer.send(
            cfg.topics.incidents,
            key=silence.key.encode(),
            value=encode(silence),
            partition=SILENCE_PARTITION,
        ).get(timeout=30)
    finally:
        producer.close(timeout=10)


def read_silences(cfg: MeshwatchConfig) -> dict[str, Silence]:
    """Every silence on record, the latest version of each."""
    from pipeline.kafka.replay import read_to_end

    out: dict[str, Silence] = {}
    for s in _silence_records(read_to_end(cfg.kafka, cfg.topics.incidents, [SILENCE_PARTITION])):
        out[s.id] = s
    return out


# -- what the ``meshwatch silence`` commands need ---------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m``, ``1d``: seconds (> 0)."""
    compact = text.replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(f"{n}{u}" for n, u in parts).lower() != compact.lower():
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 2h, 1h30m or 1d")
    seconds = sum(float(n) * _UNITS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds


def parse_time(text: str, now: float) -> float:
    """``now`` or an ISO 8601 time with a UTC offset (``2026-01-10T22:00:00Z``)."""
    if text.strip().lower() == "now":
        return now
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} needs a UTC offset, e.g. 2026-01-10T22:00:00Z")
    return when.timestamp()


def expired(silence: Silence, now: float) -> Silence:
    """The silence ended now (a pending one is cancelled the same way)."""
    return silence.model_copy(
        update={"starts_at": min(silence.starts_at, now), "ends_at": now, "updated_at": now}
    )


def format_silences(silences: Iterable[Silence], now: float) -> str:
    """A table for a terminal: id, state, matchers, times (UTC), author, comment."""
    rows = [("ID", "STATE", "MATCHERS", "STARTS (UTC)", "ENDS (UTC)", "BY", "COMMENT")]
    for s in sorted(silences, key=lambda s: (s.ends_at, s.id)):
        rows.append(
            (
                s.id,
                s.state(now),
                " ".join(s.matchers),
                _utc(s.starts_at),
                _utc(s.ends_at),
                s.created_by,
                s.comment,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip()
        for r in rows
    )


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
