"""The stage loop with produce acknowledgement overlapped with the next batch.

:class:`~pipeline.stage.loop.StageRunner` blocks after every batch until the
broker has acknowledged each output (``flush`` and every future), then
commits synchronously. On the detector that wait was a third of a batch's
wall time: the main thread idles while kafka-python's sender thread and the
broker do their share. Here a batch's outputs are sent without waiting; its
offsets are committed once all of them are acknowledged, checked before each
later batch, so acknowledging one batch overlaps handling the next.

The guarantee is unchanged — at least once: offsets are committed only for
batches whose every output the broker acknowledged, in order; a failed send
raises (as in the base loop) and nothing from that batch on is committed, so
a restart re-reads it. What changes is how much may be re-read after a crash:
up to ``max_in_flight`` batches instead of one (outputs carry deterministic
ids, so the next stage drops the repeats). Before partitions are revoked or
the runner closes, everything in flight is flushed and committed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from pipeline.stage.loop import Output, StageRunner

log = logging.getLogger(__name__)


class PipelinedStageRunner(StageRunner):
    """StageRunner whose batches do not wait for their outputs' acknowledgements."""

    #: batches whose outputs may be unacknowledged at once before the loop waits
    max_in_flight = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_batch = False
        self._broken = False
        self._sent: list[Any] = []  # futures of the batch being handled
        self._inflight: deque[tuple[list[Any], dict[TopicPartition, int]]] = deque()

    def _handle(self, records: Sequence[Any]) -> None:
        self._in_batch = True
        try:
            super()._handle(records)
        finally:
            self._in_batch = False

    def _produce(self, outputs: Sequence[Output]) -> None:
        if not self._in_batch:
            # timers and rebalances: their outputs must be durable on return
            self._drain()
            super()._produce(outputs)
            return
        if not outputs:
            return
        producer = self.producer
        dlq = self.cfg.topics.dlq
        for o in outputs:
            self._sent.append(
                producer.send(
                    o.topic,
                    value=o.value,
                    key=o.key,
                    headers=list(o.headers) or None,
                    partition=o.partition,
                )
            )
            if o.topic == dlq:
                reason = dict(o.headers).get("meshwatch-reason", b"?").decode()
                self.metrics.dead_lettered(reason)
            else:
                self.metrics.produced(o.topic)
        self.stats.produced += len(outputs)

    def _commit(self, records: Sequence[Any]) -> None:
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if r.offset >= last.get(tp, -1):
                last[tp] = r.offset
        self._inflight.append((self._sent, last))
        self._sent = []
        if len(self._inflight) > self.max_in_flight:
            self.producer.flush()
        self._settle()

    def _settle(self) -> None:
        """Commit, in one request, every leading batch whose outputs are all acknowledged."""
        merged: dict[TopicPartition, int] = {}
        while self._inflight and all(f.is_done for f in self._inflight[0][0]):
            futures, last = self._inflight[0]
            for f in futures:
                if f.failed():
                    # Neither this batch nor any later one is committed: a
                    # restart re-reads from here, as after a crash.
                    self._broken = True
                    raise f.exception
            self._inflight.popleft()
            for tp, off in last.items():
                merged[tp] = max(off, merged.get(tp, -1))
        if merged and self._consumer is not None:
            self._consumer.commit(
                {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in merged.items()}
            )

    def _drain(self) -> None:
        """Wait for everything in flight and commit it."""
        if self._inflight and not self._broken:
            self.producer.flush()
            self._settle()

    def _handle_rebalance(self, partitions: Sequence[TopicPartition], assigned: bool) -> None:
        if not assigned:
            self._drain()  # commit our share before the partitions move
        super()._handle_rebalance(partitions, assigned)

    def _close(self) -> None:
        try:
            self._drain()
        except Exception:
            log.exception(
                "%s: in-flight outputs not acknowledged; not committed", self.processor.name
            )
        super()._close()
