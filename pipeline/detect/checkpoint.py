"""Detector state on the compacted ``detector-state`` topic, one partition at a time.

What a checkpoint is
    The state of every route of one input partition, as of one input offset
    ``offset`` (the state has seen every record of that partition before it
    and none after). It is split into chunks of whole routes, each small
    enough for one Kafka message, written as ``np.savez`` archives (numpy's
    own format, no pickle): the detector's per-route arrays, the route keys
    and a small JSON header.

Keys and compaction
    ``p{partition}/s{slot}/c{chunk}``. A writer alternates between two slots,
    so compaction (which keeps the latest record per key) always keeps one
    complete checkpoint while the next is being written; a crash half-way
    through a checkpoint falls back to the previous one. Every chunk names
    its *generation* and the number of chunks in it, so stale chunks of an
    older or larger checkpoint under the same slot are recognised and left
    out.

Consistency with committed offsets
    The stage loop commits a batch's offsets after producing its outputs,
    and checkpoints are produced from ``idle`` after that commit, so a
    checkpoint's offset is never ahead of the committed one. On assignment
    the new owner loads the newest complete checkpoint (offset ``C``), reads
    the group's committed offset ``O`` and replays ``[C, O)`` of the input
    partition into the detector with its findings discarded: the previous
    owner produced those findings before it committed ``O``. Records from
    ``O`` on arrive through the normal loop. So no finding is lost, none is
    produced twice for the same event, and no route warms up again. Replay
    is bounded (``detector.state.max_replay_records``); the stage
    re-delivers the batch of a crash between produce and commit, whose
    findings then repeat with the same deterministic ids (at-least-once).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from kafka import KafkaConsumer, TopicPartition

from pipeline.config import KafkaConfig
from pipeline.kafka.clients import make_consumer

log = logging.getLogger(__name__)

FORMAT = 1
_META = "__meta__"
_KEYS = "__keys__"
_ARRAY = "a."


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    """The header of one chunk: which checkpoint it belongs to and where."""

    partition: int
    slot: int
    chunk: int
    chunks: int
    offset: int
    generation: str
    written_at: float
    routes: int
    #: per-workload state that is not per route (target-down tracking), chunk 0 only
    workloads: dict[str, list[float]] | None = None
    format: int = FORMAT


@dataclass(frozen=True, slots=True)
class Chunk:
    meta: ChunkMeta
    keys: list[str]
    arrays: dict[str, npt.NDArray[Any]]


def chunk_key(partition: int, slot: int, chunk: int) -> bytes:
    return f"p{partition}/s{slot}/c{chunk}".encode()


def encode_chunk(
    meta: ChunkMeta, keys: Sequence[str], arrays: dict[str, npt.NDArray[Any]]
) -> bytes:
    buf = io.BytesIO()
    payload: dict[str, npt.NDArray[Any]] = {
        _META: np.frombuffer(json.dumps(asdict(meta)).encode(), dtype=np.uint8),
        _KEYS: np.frombuffer(json.dumps(list(keys)).encode(), dtype=np.uint8),
    }
    payload.update({_ARRAY + name: a for name, a in arrays.items()})
    np.savez(buf, allow_pickle=False, **payload)
    return buf.getvalue()


def _meta_of(npz: Any) -> ChunkMeta:
    raw = json.loads(bytes(npz[_META]).decode())
    if raw.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {raw.get('format')!r}, this version reads {FORMAT}")
    return ChunkMeta(**raw)


def decode_meta(value: bytes) -> ChunkMeta:
    """Only the header (an archive member is read only when asked for)."""
    with np.load(io.BytesIO(value), allow_pickle=False) as npz:
        return _meta_of(npz)


def decode_chunk(value: bytes) -> Chunk:
    with np.load(io.BytesIO(value), allow_pickle=False) as npz:
        meta = _meta_of(npz)
        keys = json.loads(bytes(npz[_KEYS]).decode())
        arrays = {n[len(_ARRAY) :]: npz[n] for n in npz.files if n.startswith(_ARRAY)}
    if len(keys) != meta.routes:
        raise ValueError(f"chunk names {len(keys)} routes, header says {meta.routes}")
    return Chunk(meta, keys, arrays)


def bytes_per_route(arrays: dict[str, npt.NDArray[Any]]) -> int:
    return int(sum(a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays.values()))


def build_chunks(
    keys: Sequence[str],
    arrays: dict[str, npt.NDArray[Any]],
    *,
    partition: int,
    offset: int,
    slot: int,
    generation: str,
    max_bytes: int,
    workloads: dict[str, list[float]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """One partition's state as (key, value) records, whole routes per chunk."""
    per_route = bytes_per_route(arrays) + 2 + (max(map(len, keys)) if keys else 0)
    step = max(1, max_bytes // max(per_route, 1))
    starts = list(range(0, len(keys), step)) or [0]
    now = time.time()
    out = []
    for i, lo in enumerate(starts):
        hi = lo + step
        meta = ChunkMeta(
            partition=partition,
            slot=slot,
            chunk=i,
            chunks=len(starts),
            offset=offset,
            generation=generation,
            written_at=now,
            routes=len(keys[lo:hi]),
            workloads=workloads if i == 0 else None,
        )
        part = {name: a[lo:hi] for name, a in arrays.items()}
        out.append((chunk_key(partition, slot, i), encode_chunk(meta, keys[lo:hi], part)))
    return out


def select(records: Iterable[tuple[bytes | None, bytes | None]], partition: int) -> list[bytes]:
    """The chunks of the newest complete checkpoint of ``partition`` (empty: none).

    ``records`` in log order; the latest record per key wins, as after
    compaction. Among generations with every chunk present, the one with
    the highest input offset wins (a stale writer's late checkpoint never
    hides a newer one).
    """
    prefix = f"p{partition}/".encode()
    latest: dict[bytes, bytes] = {}
    for key, value in records:
        if key is None or not key.startswith(prefix):
            continue
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    by_generation: dict[str, dict[int, tuple[ChunkMeta, bytes]]] = {}
    for key, value in latest.items():
        try:
            meta = decode_meta(value)
        except Exception as exc:  # one unreadable record must not block a restore
            log.error("detector: skipping unreadable checkpoint record %r: %s", key, exc)
            continue
        if meta.partition != partition:
            continue
        by_generation.setdefault(meta.generation, {})[meta.chunk] = (meta, value)
    complete = [
        parts
        for parts in by_generation.values()
        if all(i in parts for i in range(next(iter(parts.values()))[0].chunks))
    ]
    if not complete:
        return []
    best = max(complete, key=lambda parts: (parts[0][0].offset, parts[0][0].written_at))
    return [best[i][1] for i in range(len(best))]


def read_state(
    cfg: KafkaConfig, topic: str, partitions: Sequence[int], *, timeout_s: float = 60.0
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the state topic's ``partitions`` (key, value), in log order."""
    from pipeline.kafka.replay import read_to_end

    return [
        (r.key, r.value)
        for r in read_to_end(cfg, topic, sorted(set(partitions)), timeout_s=timeout_s)
    ]


def committed_offsets(
    cfg: KafkaConfig, group_id: str, topic: str, partitions: Sequence[int]
) -> dict[int, int | None]:
    """The group's committed offsets, read without joining the group."""
    consumer = make_consumer(cfg, "detector-restore", group_id=group_id)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close(autocommit=False)


def read_range(
    cfg: KafkaConfig, topic: str, partition: int, start: int, stop: int, *, timeout_s: float = 60.0
) -> Iterator[Any]:
    """Records ``[start, stop)`` of one partition (stop is a committed offset: they exist)."""
    if stop <= start:
        return
    consumer: KafkaConsumer = make_consumer(cfg, "detector-replay", group_id=None)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200, max_records=5000).values():
                for r in records:
                    if r.offset >= stop:
                        return
                    yield r
                    if r.offset == stop - 1:
                        return
        raise TimeoutError(f"could not replay {topic}[{partition}] {start}..{stop}")
    finally:
        consumer.close(autocommit=False)
