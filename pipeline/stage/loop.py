"""The stage loop shared by the detector, the alerter and any later consumer.

At-least-once by construction: offsets are committed only after every output
of the batch is acknowledged by the broker, so a crash anywhere re-delivers
the batch, and the deterministic ids on outputs let the next stage drop the
repeats. A message that cannot be decoded or processed goes to the DLQ with
its reason, and the loop carries on with the rest of the batch.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import BaseModel

from pipeline.config import MeshwatchConfig
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.observe.stage_metrics import StageMetrics
from pipeline.schema import DeadLetter, encode
from pipeline.stage.batching import BalancedBatches

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce; ``partition`` pins it (e.g. co-partitioned state)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Inbound(Generic[T]):
    """A decoded message with where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: T
    timestamp_ms: int


class PoisonMessageError(Exception):
    """Raised by a processor for one message it can never handle."""


class Processor(Protocol):
    """What a stage supplies to the loop: decoding and batch processing."""

    name: str

    def decode(self, raw: bytes) -> Any:
        """Turn raw bytes into a message; raise to send the record to the DLQ."""
        ...

    def process(self, batch: Sequence[Inbound[Any]]) -> Iterable[Output]:
        """Handle a whole poll batch at once; return everything to produce."""
        ...

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]: ...

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]: ...

    def idle(self, now: float) -> Iterable[Output]:
        """Called after every poll, batch or not: timers (retries, resolves)."""
        ...


@dataclass
class StageStats:
    batches: int = 0
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    last_batch_seconds: float = 0.0
    assigned: tuple[int, ...] = ()
    errors: list[str] = field(default_factory=list)


#: Most of a bad value kept in its DLQ record. Undecodable bytes are escaped
#: (up to 4 characters each, then JSON-escaped again), so without a cap a
#: 3 MB binary body became a 10 MB record that the producer refuses, and the
#: stage died on it, was restarted, re-read it and died again: one poison
#: message stopped the partition for good.
MAX_DEAD_VALUE_CHARS = 256 * 1024

#: First and longest wait between attempts while the broker refuses a produce
#: or commit (on top of kafka-python's own retries inside each attempt).
BROKER_BACKOFF_SECONDS = (0.5, 10.0)


def dead_letter(
    stage: str,
    dlq_topic: str,
    reason: str,
    error: str,
    *,
    raw: bytes,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Output:
    """A DLQ record: the envelope as value and the reason also in headers.

    A value (or key) too big to forward is cut to its first
    :data:`MAX_DEAD_VALUE_CHARS` characters, and the record says so in its
    error and in a ``meshwatch-truncated`` header with the original size;
    the source coordinates still point at the whole original.
    """
    text = raw[: MAX_DEAD_VALUE_CHARS + 1].decode("utf-8", "backslashreplace")
    headers: tuple[tuple[str, bytes], ...] = (
        ("meshwatch-reason", reason.encode()),
        ("meshwatch-stage", stage.encode()),
        ("meshwatch-source", f"{topic}/{partition}/{offset}".encode()),
    )
    if len(raw) > MAX_DEAD_VALUE_CHARS or len(text) > MAX_DEAD_VALUE_CHARS:
        text = text[:MAX_DEAD_VALUE_CHARS]
        error = f"{error[:3000]} [value of {len(raw)} bytes cut to {len(text)} characters]"
        headers += (("meshwatch-truncated", str(len(raw)).encode()),)
    if key is not None and len(key) > 4096:
        key = key[:4096]
    letter = DeadLetter(
        stage=stage,
        reason=reason,
        error=error[:4000],
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key=key.decode("utf-8", "backslashreplace") if key is not None else None,
        value=text,
        failed_at=time.time(),
    )
    return Output(dlq_topic, key, encode(letter), headers)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Only notes the change: the runner acts on it after ``poll`` returns.

    Restoring state means reading other topics with other clients, which
    must not happen inside the consumer's own callback.
    """

    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.runner._pending.append((False, list(revoked)))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.runner._pending.append((True, list(assigned)))


class StageRunner:
    """Runs one processor against one input topic in one consumer group."""

    def __init__(
        self,
        cfg: MeshwatchConfig,
        processor: Processor,
        input_topic: str,
        group_id: str,
        *,
        stop: threading.Event | None = None,
        consumer_factory: Callable[[], KafkaConsumer] | None = None,
        producer: KafkaProducer | None = None,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.processor = processor
        self.input_topic = input_topic
        self.group_id = group_id
        self.stop_event = stop or threading.Event()
        self.stats = StageStats()
        self._consumer_factory = consumer_factory or (
            lambda: make_consumer(cfg.kafka, processor.name, group_id)
        )
        self._owns_producer = producer is None
        self._producer = producer
        self._consumer: KafkaConsumer | None = None
        self._assigned: set[TopicPartition] = set()
        self._pending: list[tuple[bool, list[TopicPartition]]] = []
        self.ready = threading.Event()
        self.metrics = metrics or StageMetrics(processor.name)
        self._last_loop = time.monotonic()
        #: Why the broker cannot be used right now (None while it can): set by a
        #: failed produce or commit, cleared by the next one that works.
        self.broker_problem: str | None = None
        self.broker_retries = 0
        #: messages per poll batch: the processor's own choice (the detector's
        #: per-batch work is cheaper per message in wider batches), else the
        #: ``kafka`` section's
        self.max_poll_records: int = (
            getattr(processor, "max_poll_records", None) or cfg.kafka.max_poll_records
        )
        #: polled records not yet handled (uncommitted; dropped on revocation)
        self._held = BalancedBatches(self.max_poll_records)

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = make_producer(self.cfg.kafka, self.processor.name)
        return self._producer

    def stop(self) -> None:
        self.stop_event.set()

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        # Long-lived objects (config, models, state arrays) are moved out of
        # the collector's sight, and the cyclic collector is paused while a
        # batch is handled: a decoded batch is tens of thousands of live
        # objects that reference counting frees at the end of the batch
        # anyway, and walking them cost ~45 % of the detector's time.
        gc.collect()
        gc.freeze()
        consumer = self._consumer = self._consumer_factory()
        consumer.subscribe([self.input_topic], listener=_Rebalance(self))
        log.info(
            "%s: consuming %s as group %s", self.processor.name, self.input_topic, self.group_id
        )
        try:
            while not self.stop_event.is_set():
                self._last_loop = time.monotonic()
                # Poll while there is room to hold more (without waiting if
                # anything is held), then hand out a batch balanced over
                # partitions; while fetches keep coming and some assigned
                # partition has nothing held, poll again first.
                polled = {}
                if not self._held.full:
                    polled = consumer.poll(
                        timeout_ms=0 if len(self._held) else self.cfg.kafka.poll_timeout_ms,
                        max_records=self.max_poll_records,
                    )
                while self._pending:
                    assigned, partitions = self._pending.pop(0)
                    if not assigned:
                        self._held.drop(partitions)
                    self._handle_rebalance(partitions, assigned)
                self._held.add(polled)
                if polled and self._held.wants_more(len(self._assigned)):
                    continue
                records = self._held.take(len(self._assigned))
                if records:
                    gc.disable()
                    try:
                        self._handle(records)
                    finally:
                        gc.enable()
                idle = list(self.processor.idle(time.time()))
                if idle:
                    self._produce(idle)
        except _StoppingError:
            log.warning("%s: stopped while the broker was unreachable", self.processor.name)
        finally:
            self._close()

    def _close(self) -> None:
        # Nothing handled is uncommitted here: every batch is committed before
        # the next poll. Records still held were never handled or committed:
        # the partitions' next owner reads them again.
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # pragma: no cover - best effort on shutdown
                log.exception("%s: error closing consumer", self.processor.name)
        if self._producer is not None and self._owns_producer:
            try:
                self._producer.flush(timeout=10)
                self._producer.close(timeout=10)
            except KafkaError as exc:  # stopped during an outage: nothing committed waits on it
                log.warning("%s: producer not flushed on stop: %s", self.processor.name, exc)

    def _decode(self, records: Sequence[Any]) -> tuple[list[Inbound[Any]], list[Output]]:
        good: list[Inbound[Any]] = []
        dead: list[Output] = []
        decode = self.processor.decode
        for r in records:
            try:
                value = decode(r.value)
            except Exception as exc:
                dead.append(self._dead(r, "invalid message", _describe(exc)))
                continue
            good.append(Inbound(r.topic, r.partition, r.offset, r.key, value, r.timestamp))
        return good, dead

    def _dead(self, r: Any, reason: str, error: str) -> Output:
        return dead_letter(
            self.processor.name,
            self.cfg.topics.dlq,
            reason,
            error,
            raw=r.value if isinstance(r.value, bytes) else bytes(r.value or b""),
            key=r.key,
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
        )

    def _handle(self, records: Sequence[Any]) -> None:
        started = time.perf_counter()
        good, outputs = self._decode(records)
        if outputs:
            self.stats.dead_lettered += len(outputs)
            log.warning(
                "%s: %d invalid message(s) sent to the DLQ", self.processor.name, len(outputs)
            )
        if good:
            outputs.extend(self._process(good))
        self._produce(outputs)
        self._commit(records)
        self.stats.batches += 1
        self.stats.consumed += len(records)
        self.stats.last_batch_seconds = time.perf_counter() - started
        m = self.metrics
        m.messages_in.inc(len(records))
        m.batch_size.observe(len(records))
        m.batch_seconds.observe(self.stats.last_batch_seconds)
        m.last_batch.set_to_current_time()
        self._record_lag()

    def _process(self, good: list[Inbound[Any]]) -> list[Output]:
        try:
            return list(self.processor.process(good))
        except Exception:
            if len(good) == 1:
                raise
            log.exception("%s: batch failed; retrying message by message", self.processor.name)
        outputs: list[Output] = []
        for item in good:
            try:
                outputs.extend(self.processor.process([item]))
            except PoisonMessageError as exc:
                outputs.append(self._dead_inbound(item, "poison message", str(exc)))
            except Exception as exc:
                log.exception(
                    "%s: message %s/%d failed", self.processor.name, item.topic, item.offset
                )
                outputs.append(self._dead_inbound(item, "processing error", _describe(exc)))
        return outputs

    def _dead_inbound(self, item: Inbound[Any], reason: str, error: str) -> Output:
        self.stats.dead_lettered += 1
        value: Any = item.value
        raw = encode(value) if isinstance(value, BaseModel) else repr(value).encode()
        return dead_letter(
            self.processor.name,
            self.cfg.topics.dlq,
            reason,
            error,
            raw=raw,
            key=item.key,
            topic=item.topic,
            partition=item.partition,
            offset=item.offset,
        )

    def _until_done(self, what: str, attempt: Callable[[], None]) -> None:
        """Run ``attempt`` until the broker takes it, backing off while it cannot.

        A broker outage must not kill the stage (a restart would only come
        back to the same outage) nor drop the batch in hand: its outputs are
        sent again, then its offsets committed, so at-least-once holds and
        the deterministic ids downstream absorb any copy. Meanwhile
        ``/readyz`` says why the stage is not ready. A stop request ends the
        wait without committing: the batch is read again after the restart.
        """
        backoff = BROKER_BACKOFF_SECONDS[0]
        while True:
            try:
                attempt()
            except KafkaError as exc:
                if isinstance(exc, CommitFailedError):
                    raise
                self.broker_problem = f"{what} failed: {type(exc).__name__}: {exc}"[:300]
                self.broker_retries += 1
                log.warning(
                    "%s: %s; retrying in %.1fs", self.processor.name, self.broker_problem, backoff
                )
                if self.stop_event.wait(backoff):
                    raise _StoppingError from exc
                backoff = min(backoff * 2, BROKER_BACKOFF_SECONDS[1])
                continue
            if self.broker_problem is not None:
                log.warning("%s: the broker is back (%s)", self.processor.name, what)
                self.broker_problem = None
            return

    def _produce(self, outputs: Sequence[Output]) -> None:
        if outputs:
            self._until_done("produce", lambda: self._produce_once(outputs))

    def _produce_once(self, outputs: Sequence[Output]) -> None:
        producer = self.producer
        futures = [
            producer.send(
                o.topic,
                value=o.value,
                key=o.key,
                headers=list(o.headers) or None,
                partition=o.partition,
            )
            for o in outputs
        ]
        producer.flush()
        for f in futures:
            f.get(timeout=30)  # raises: the batch is not committed, so it is re-read
        self.stats.produced += len(outputs)
        for o in outputs:
            if o.topic == self.cfg.topics.dlq:
                reason = dict(o.headers).get("meshwatch-reason", b"?").decode()
                self.metrics.dead_lettered(reason)
            else:
                self.metrics.produced(o.topic)

    def _commit(self, records: Sequence[Any]) -> None:
        consumer = self._consumer
        assert consumer is not None
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if r.offset >= last.get(tp, -1):
                last[tp] = r.offset
        offsets = {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in last.items()}
        try:
            self._until_done("commit", lambda: consumer.commit(offsets))
        except CommitFailedError as exc:
            # The group moved on (our session lapsed during an outage): the
            # partitions are someone else's, or ours again from the last
            # commit. The outputs are already acknowledged, so a re-read
            # only repeats them.
            log.warning("%s: offsets not committed: %s", self.processor.name, exc)

    def _handle_rebalance(self, partitions: Sequence[TopicPartition], assigned: bool) -> None:
        hook = self.processor.on_assign if assigned else self.processor.on_revoke
        outputs = list(hook(list(partitions)))
        self._produce(outputs)
        if assigned:
            self._assigned |= set(partitions)
        else:
            self._assigned -= set(partitions)
        self.stats.assigned = tuple(sorted(tp.partition for tp in self._assigned))
        self.metrics.assigned.set(len(self._assigned))
        # Ready once the group has given us our share (possibly none, with
        # more replicas than partitions) and its state is restored.
        self.ready.set()

    def _record_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in self._assigned:
            high = consumer.highwater(tp)
            if high is None:
                continue
            behind = max(high - consumer.position(tp), 0) + self._held.held(tp)
            self.metrics.lag.labels(self.processor.name, tp.topic, str(tp.partition)).set(behind)

    # -- probes ---------------------------------------------------------------

    def _coordinator_lost(self) -> bool:
        """An idle consumer raises nothing while the broker is away; its group
        coordinator going unknown is the sign (kafka-python keeps no public flag)."""
        consumer = self._consumer
        coordinator = getattr(consumer, "_coordinator", None)
        if coordinator is None or not self.ready.is_set():
            return False
        try:
            return bool(coordinator.coordinator_unknown())
        except Exception:  # pragma: no cover - private API changed: say nothing
            return False

    def live(self) -> tuple[bool, str]:
        """Alive while the loop keeps coming back to poll."""
        stalled = time.monotonic() - self._last_loop
        limit = max(60.0, 3 * self.cfg.kafka.session_timeout_ms / 1000)
        if stalled > limit:
            return False, f"loop stalled for {stalled:.0f}s"
        return True, "ok"

    def is_ready(self) -> tuple[bool, str]:
        if self.stop_event.is_set():
            return False, "stopping"
        if self.broker_problem is not None:
            return False, f"broker unreachable: {self.broker_problem}"
        if self._coordinator_lost():
            return False, "broker unreachable: no group coordinator"
        if not self.ready.is_set():
            return False, "waiting for partition assignment and state restore"
        return True, f"ready, partitions {list(self.stats.assigned)}"


class _StoppingError(Exception):
    """A stop request arrived while waiting for the broker."""


def _describe(exc: BaseException) -> str:
    from pydantic import ValidationError

    from pipeline.schema import describe_error

    if isinstance(exc, ValidationError):
        return describe_error(exc)
    return f"{type(exc).__name__}: {exc}"
