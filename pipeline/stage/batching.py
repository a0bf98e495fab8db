"""Polled records waiting to be handled, handed out in batches balanced over partitions.

Why: the detector judges a batch in rounds, one window of a route per round,
so a batch is only as wide as the routes it holds. When a consumer catches up
on a backlog, kafka-python returns whatever fetches have completed, often
most of one partition at once (every window of a sixth of the routes, in a
six-partition topic): a round is then a sixth as wide and the batch takes
several times as many rounds, each paying the same fixed numpy overhead.
Holding back a partition's surplus for the next batch, while the other
partitions' fetches arrive, keeps batches wide. In a live stream (every
partition delivers about one window per poll) nothing is held back.

Order within a partition is kept (a batch takes a prefix of what is held),
and nothing held is committed: a record left here when the partition is
revoked or the stage stops is read again by whoever owns it next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kafka import TopicPartition


class BalancedBatches:
    """Per-partition queues of polled records; :meth:`take` builds the next batch.

    ``limit`` is the batch size in records (the stage's ``max_poll_records``);
    up to ``hold`` batches' worth is held while other partitions' records are
    on their way.
    A partition gives at most its fair share of ``limit`` (over the partitions
    assigned, or holding records if more), so one long queue cannot fill a
    batch on its own; a stage assigned one partition still fills it.
    """

    def __init__(self, limit: int, hold: int = 3) -> None:
        self.limit = max(int(limit), 1)
        #: most records held, in batches: room to wait for the partitions not seen yet
        self.capacity = self.limit * max(int(hold), 1)
        self._queues: dict[TopicPartition, list[Any]] = {}
        self._held = 0

    def __len__(self) -> int:
        return self._held

    @property
    def full(self) -> bool:
        """As much is held as may be: the stage hands out batches before polling again."""
        return self._held >= self.capacity

    def wants_more(self, assigned: int) -> bool:
        """Worth polling again before the next batch: some assigned partition has
        nothing held yet and there is room (the caller asks only while polls
        still bring records, so a partition without data never stalls a batch)."""
        return self._held < self.capacity and len(self._queues) < assigned

    def held(self, tp: TopicPartition) -> int:
        """Records of one partition polled but not handled yet (part of its lag)."""
        return len(self._queues.get(tp, ()))

    def add(self, polled: Mapping[TopicPartition, Sequence[Any]]) -> None:
        for tp, records in polled.items():
            if records:
                self._queues.setdefault(tp, []).extend(records)
                self._held += len(records)

    def drop(self, partitions: Iterable[TopicPartition]) -> int:
        """Forget what is held for these partitions (revoked: their next owner,
        or we again from the committed offset, reads it anew). Returns how many."""
        dropped = 0
        for tp in partitions:
            dropped += len(self._queues.pop(tp, ()))
        self._held -= dropped
        return dropped

    def take(self, assigned: int = 1) -> list[Any]:
        """The next batch, partition by partition (each in offset order).

        ``assigned``: how many partitions the stage is assigned; a partition's fair
        share of a batch is ``limit`` over that many (or over those holding
        records, if more).
        """
        if not self._held:
            return []
        cap = max(self.limit // max(len(self._queues), assigned, 1), 1)
        budget = self.limit
        batch: list[Any] = []
        for tp in sorted(self._queues):  # (topic, partition) order
            if budget <= 0:
                break
            queue = self._queues[tp]
            n = min(len(queue), cap, budget)
            batch.extend(queue[:n])
            if n == len(queue):
                del self._queues[tp]
            else:
                del queue[:n]
            budget -= n
        self._held -= len(batch)
        return batch
