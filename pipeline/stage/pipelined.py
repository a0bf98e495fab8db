"""The stage loop with produce acknowledgement overlapped with the next batch.

:class:`~pipeline.stage.loop.StageRunner` blocks after every batch until the
broker has acknowledged each output (``flush`` and every future), then
commits synchronously. On the detector that wait was a third of a batch's
wall time: the main thread idles while kafka-python's sender thread and the
broker do their share. Here a batch's outputs are sent without waiting; its
offsets are committed once all of them are acknowledged, checked before each
later batch, so acknowledging one batch overlaps handling the next.

The guarantee is unchanged — at least once: offsets are committed only for
batches whose every output the broker acknowledged, in order; a batch with a
failed send has its outputs sent again with the base loop's retries (a broker
outage waits, it does not kill the stage) before it or anything after it is
committed. What changes is how much may be re-read after a crash:
up to ``max_in_flight`` batches instead of one (outputs carry deterministic
ids, so the next stage drops the repeats). Before partitions are revoked or
the runner closes, everything in flight is flushed and committed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Any

from kafka import TopicPartition
from kafka.errors import CommitFailedError
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
        self._sent: list[Any] = []  # futures of the batch being handled
        self._outputs: list[Output] = []  # and its outputs, to send again if need be
        self._inflight: deque[tuple[list[Any], list[Output], dict[TopicPartition, int]]] = deque()

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
        self._outputs.extend(outputs)
        self.stats.produced += len(outputs)

    def _commit(self, records: Sequence[Any]) -> None:
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if r.offset >= last.get(tp, -1):
                last[tp] = r.offset
        self._inflight.append((self._sent, self._outputs, last))
        self._sent, self._outputs = [], []
        if len(self._inflight) > self.max_in_flight:
            self.producer.flush()
        self._settle()

    def _settle(self) -> None:
        """Commit, in one request, every leading batch whose outputs are all acknowledged.

        A batch with a failed send has its outputs sent again, blocking, with
        the base loop's retries while the broker is away; only then are it
        and the batches after it committed, in order.
        """
        merged: dict[TopicPartition, int] = {}
        while self._inflight and all(f.is_done for f in self._inflight[0][0]):
            futures, outputs, last = self._inflight[0]
            if any(f.failed() for f in futures):
                self._until_done("produce", partial(self._send_and_wait, outputs))
            self._inflight.popleft()
            for tp, off in last.items():
                merged[tp] = max(off, merged.get(tp, -1))
        consumer = self._consumer
        if merged and consumer is not None:
            offsets = {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in merged.items()}
            try:
                self._until_done("commit", lambda: consumer.commit(offsets))
            except CommitFailedError as exc:
                # as in the base loop: the outputs are acknowledged, a re-read only repeats them
                log.warning("%s: offsets not committed: %s", self.processor.name, exc)

    def _send_and_wait(self, outputs: Sequence[Output]) -> None:
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
            f.get(timeout=30)

    def _drain(self) -> None:
        """Wait for everything in flight and commit it."""
        if self._inflight:
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
