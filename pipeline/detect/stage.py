"""The detector as a stage: decode GoldenBatches, judge, emit Findings.

Besides judging, the stage owns what makes replicas interchangeable: the
admission gate in front of the engine (:mod:`pipeline.detect.admission`),
per-partition checkpoints of the detector's state and their restore on
assignment (:mod:`pipeline.detect.checkpoint`), ``target_down`` findings and
the per-route score metrics (:mod:`pipeline.detect.exporter`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from kafka import TopicPartition

from models.detector import KINDS, MODEL_NAME, MODEL_VERSION, RouteDetector, Verdicts
from pipeline.config import MeshwatchConfig
from pipeline.detect import checkpoint
from pipeline.detect.admission import Admission, AdmissionMetrics, batch_of
from pipeline.detect.engine import DetectionEngine
from pipeline.detect.exporter import LastVerdicts, RouteMetricsCollector
from pipeline.detect.target_down import TargetDownTracker, WorkloadTargets
from pipeline.observe.stage_metrics import StageMetrics
from pipeline.schema import Finding, encode
from pipeline.stage.loop import Inbound, Output

log = logging.getLogger(__name__)

#: replayed input is fed to the engine in slices of this many records
REPLAY_SLICE = 2000


def workload_of(route_key: str) -> str:
    """A route key's workload key (its first three parts; routes may hold '/')."""
    return "/".join(route_key.split("/", 3)[:3])


class DetectorProcessor:
    name = "detector"
    #: messages per poll batch (read by the stage loop)
    max_poll_records: int

    def __init__(
        self,
        cfg: MeshwatchConfig,
        *,
        group_id: str = "detector",
        clock: Callable[[], float] = time.time,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.max_poll_records = cfg.detector.max_poll_records
        self.engine = DetectionEngine(cfg.detector)
        self.findings: list[Finding] = []  # recent, for the demo's display
        self.fired = 0
        self.resolved = 0
        self.group_id = group_id
        #: the stage's metrics: hand them to the StageRunner so /metrics serves them
        self.metrics = metrics or StageMetrics(self.name)
        self.admission = Admission(
            cfg.detector.admission,
            dlq_topic=cfg.topics.dlq,
            stage=self.name,
            clock=clock,
            metrics=AdmissionMetrics(self.metrics.registry),
        )
        self.targets = TargetDownTracker(
            cfg.detector.target_down_windows, cfg.detector.resolve_after
        )
        # partition bookkeeping: which workloads (hence routes) each partition holds
        self._partition_of: dict[str, int] = {}
        self._rows_of: dict[str, list[int]] = {}
        self._indexed = 0  # rows of det.keys already placed in _rows_of
        self._next_offset: dict[int, int] = {}
        self._owned: set[int] = set()
        self._dirty: set[int] = set()
        self._released: dict[int, int] = {}  # revoked partition -> offset our state is at
        self._slot: dict[int, int] = {}
        self._generation = uuid.uuid4().hex[:12]
        self._checkpoints = 0
        self._last_checkpoint = time.monotonic()
        self._replaying = False
        #: the /metrics thread reads the bookkeeping below while batches change it
        self._lock = threading.Lock()
        self.finding_counts: Counter[tuple[str, str]] = Counter()
        self.restored: dict[int, dict[str, Any]] = {}  # per partition: what the restore did
        self.last_verdicts = LastVerdicts()
        self._watch(self.engine.detector)
        self.metrics.registry.register(
            RouteMetricsCollector(
                cfg.detector.metrics,
                lambda: self.engine.detector,
                self.last_verdicts,
                self.owned_rows,
                self._finding_snapshot,
            )
        )
        self._model_info: dict[str, str] = {}
        self._update_model_info()

    def decode(self, raw: bytes) -> Any:
        # msgspec into plain structs; pydantic for what that does not accept
        # (and for the precise error of an invalid message).
        return self.engine.decode(raw)

    def process(self, batch: Sequence[Inbound[Any]]) -> Iterable[Output]:
        batch, admitted_out = self.admit(batch)  # admission, target_down (stage-owned)
        findings, rejected = self.engine.process_decoded([item.value for item in batch])
        topic = self.cfg.topics.findings
        self.findings = (self.findings + findings)[-100:]
        self.fired += sum(f.status == "firing" for f in findings)
        self.resolved += sum(f.status == "resolved" for f in findings)
        out = [Output(topic, f.workload_key.encode(), encode(f)) for f in findings]
        out += admitted_out
        return out + self.engine.dead_letters(self.name, self.cfg.topics.dlq, batch, rejected)

    # -- admission and partition bookkeeping (before the engine) -------------

    def admit(self, batch: Sequence[Inbound[Any]]) -> tuple[list[Inbound[Any]], list[Output]]:
        """The part of ``batch`` the engine should judge, and what the gate itself
        produces: DLQ records for refused windows and ``target_down`` findings."""
        for item in batch:
            p = item.partition
            if item.offset >= self._next_offset.get(p, 0):
                self._next_offset[p] = item.offset + 1
            self._dirty.add(p)
        gate = self.admission.admit(batch)
        out = gate.rejected
        topic = self.cfg.topics.findings
        partition_of = self._partition_of
        with self._lock:
            for item in gate.batch:
                b = batch_of(item.value)
                partition_of[b.workload_key] = item.partition
                if b.pods_down or b.workload_key in self.targets.workloads:
                    f = self.targets.step(b.workload_key, b.window_end, b.pods_up, b.pods_down)
                    if f is not None:
                        out.append(Output(topic, f.workload_key.encode(), encode(f)))
                        if not self._replaying:
                            self.finding_counts[(f.kind, f.status)] += 1
        return gate.batch, out

    def _finding_snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.finding_counts)

    def _watch(self, det: RouteDetector) -> None:
        """Record each judged round for the metrics, and count findings by kind."""
        inner = det.process
        last = self.last_verdicts

        def process(obs: Any) -> Verdicts:
            verdicts = inner(obs)
            last.record(obs.rows, verdicts)
            if not self._replaying:
                self._count(verdicts)
            return verdicts

        setattr(det, "process", process)  # noqa: B010 - an instance hook, not a patch of the class

    def _count(self, verdicts: Verdicts) -> None:
        counts = self.finding_counts
        with self._lock:
            for kind in KINDS:
                v = verdicts.kinds.get(kind)
                if v is not None and (v.fired.any() or v.resolved.any()):
                    counts[(kind, "firing")] += int(v.fired.sum())
                    counts[(kind, "resolved")] += int(v.resolved.sum())

    def _index_rows(self) -> None:
        keys = self.engine.detector.keys
        for row in range(self._indexed, len(keys)):
            self._rows_of.setdefault(workload_of(keys[row]), []).append(row)
        self._indexed = len(keys)

    def rows_of_partition(self, partition: int) -> npt.NDArray[np.int64]:
        with self._lock:
            self._index_rows()
            rows = [
                r
                for wk, p in self._partition_of.items()
                if p == partition
                for r in self._rows_of.get(wk, ())
            ]
        return np.asarray(sorted(rows), dtype=np.int64)

    def owned_rows(self, n: int) -> npt.NDArray[np.bool_]:
        """Mask of route rows whose partition this replica holds now."""
        mask = np.zeros(n, dtype=np.bool_)
        with self._lock:
            self._index_rows()
            owned = set(self._owned)
            for wk, p in self._partition_of.items():
                if p in owned:
                    rows = self._rows_of.get(wk)
                    if rows:
                        mask[[r for r in rows if r < n]] = True
        return mask

    # -- checkpoints ------------------------------------------------------------

    def checkpoint(self, partitions: Iterable[int]) -> list[Output]:
        """Records holding the state of ``partitions`` as of their last processed offset."""
        det = self.engine.detector
        topic = self.cfg.topics.detector_state
        n_state = self.cfg.topics.specs["detector-state"].partitions
        out: list[Output] = []
        for p in sorted(partitions):
            if p not in self._next_offset:
                continue
            rows = self.rows_of_partition(p)
            keys = [det.keys[r] for r in rows.tolist()]
            workloads = {
                wk: [self.admission.last_window.get(wk, -np.inf), *self._targets_of(wk)]
                for wk, q in self._partition_of.items()
                if q == p
            }
            slot = self._slot[p] = 1 - self._slot.get(p, 1)
            self._checkpoints += 1
            for key, value in checkpoint.build_chunks(
                keys,
                det.export_state(rows),
                partition=p,
                offset=self._next_offset[p],
                slot=slot,
                generation=f"{self._generation}-{self._checkpoints}",
                max_bytes=self.cfg.detector.state.chunk_bytes,
                workloads=workloads,
            ):
                out.append(Output(topic, key, value, partition=p % n_state))
        return out

    def _targets_of(self, wk: str) -> list[float]:
        st = self.targets.workloads.get(wk)
        return (st or WorkloadTargets()).dump()

    def restore(self, partitions: Sequence[int]) -> None:
        """Load the newest complete checkpoint of each partition, then replay the
        input between it and the group's committed offset (findings discarded)."""
        kafka = self.cfg.kafka
        topics = self.cfg.topics
        n_state = topics.specs["detector-state"].partitions
        committed = checkpoint.committed_offsets(kafka, self.group_id, topics.golden, partitions)
        fresh = [p for p in partitions if self._released.get(p, -1) != committed.get(p)]
        for p in set(partitions) - set(fresh):
            self.restored[p] = {"kept": True, "offset": committed[p], "replayed": 0}
        if not fresh:
            return
        started = time.perf_counter()
        records = checkpoint.read_state(kafka, topics.detector_state, [p % n_state for p in fresh])
        for p in fresh:
            info: dict[str, Any] = {"kept": False, "routes": 0, "offset": None, "replayed": 0}
            self.restored[p] = info
            offset = self._load(p, checkpoint.select(records, p), info)
            target = committed.get(p)
            if offset is None or target is None or target <= offset:
                continue
            if target - offset > self.cfg.detector.state.max_replay_records:
                log.warning(
                    "detector: partition %d is %d records past its checkpoint; not replaying",
                    p,
                    target - offset,
                )
                continue
            info["replayed"] = self._replay(p, offset, target)
        info_all = {p: self.restored[p] for p in fresh}
        log.info(
            "detector: restored partitions %s in %.2f s: %s",
            fresh,
            time.perf_counter() - started,
            info_all,
        )

    def _load(self, p: int, values: list[bytes], info: dict[str, Any]) -> int | None:
        if not values:
            return None
        det = self.engine.detector
        try:
            chunks = [checkpoint.decode_chunk(v) for v in values]
            for c in chunks:
                det.load_state(c.keys, c.arrays)
        except ValueError as exc:
            log.error("detector: checkpoint of partition %d unusable (%s); starting cold", p, exc)
            return None
        meta = chunks[0].meta
        with self._lock:
            for wk, v in (meta.workloads or {}).items():
                self._partition_of[wk] = p
                if np.isfinite(v[0]):
                    self.admission.last_window[wk] = float(v[0])
                targets = WorkloadTargets.load(v[1:])
                if targets.down_streak or targets.firing:
                    self.targets.workloads[wk] = targets
            for c in chunks:
                for key in c.keys:
                    self._partition_of.setdefault(workload_of(key), p)
        self._next_offset[p] = meta.offset
        self.admission.seen_through[p] = meta.offset - 1  # the state is at this offset
        info["routes"] = sum(len(c.keys) for c in chunks)
        info["offset"] = meta.offset
        return meta.offset

    def _replay(self, p: int, start: int, stop: int) -> int:
        """Feed ``[start, stop)`` of the input partition through the engine; the
        previous owner already produced (and committed) everything it made."""
        topic = self.cfg.topics.golden
        seen = self.engine.samples_seen
        n = 0
        items: list[Inbound[Any]] = []
        self._replaying = True
        try:
            for r in checkpoint.read_range(self.cfg.kafka, topic, p, start, stop):
                n += 1
                try:
                    value = self.decode(r.value)
                except Exception:
                    continue  # dead-lettered when it first arrived
                items.append(Inbound(r.topic, r.partition, r.offset, r.key, value, r.timestamp))
                if len(items) >= REPLAY_SLICE:
                    self._replay_slice(items)
                    items = []
            self._replay_slice(items)
        finally:
            self._replaying = False
            self.engine.samples_seen = seen
        return n

    def _replay_slice(self, items: list[Inbound[Any]]) -> None:
        if items:
            admitted, _ = self.admit(items)
            self.engine.process_decoded([item.value for item in admitted])

    # -- the loop's hooks -------------------------------------------------------

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]:
        mine = sorted(tp.partition for tp in partitions)
        if self.cfg.detector.state.enabled and mine:
            self.restore(mine)
        self._owned |= set(mine)
        for p in mine:
            self._released.pop(p, None)
        return ()

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> Iterable[Output]:
        gone = {tp.partition for tp in partitions} & self._owned
        out = self.checkpoint(gone & self._dirty) if self.cfg.detector.state.enabled else []
        for p in gone:
            self._released[p] = self._next_offset.get(p, -1)
            self._dirty.discard(p)
        self._owned -= gone
        return out

    def idle(self, now: float) -> Iterable[Output]:
        self._update_model_info()
        state = self.cfg.detector.state
        tick = time.monotonic()
        if not state.enabled or tick - self._last_checkpoint < state.checkpoint_interval_seconds:
            return ()
        self._last_checkpoint = tick
        due = self._dirty & self._owned
        self._dirty -= due
        return self.checkpoint(due)

    # -- model version (hook for the model registry) ------------------------------

    def model_info(self) -> dict[str, str]:
        """The labels of ``meshwatch_model_info``: the baseline model and, once the
        engine carries a trained model from the registry, its version
        (``engine.scoring.version``, read on every poll so a model promoted in
        the registry shows up without a restart)."""
        info = {"name": MODEL_NAME, "version": MODEL_VERSION}
        learned = getattr(getattr(self.engine, "scoring", None), "version", None)
        if learned:
            info["learned_version"] = str(learned)
        return info

    def _update_model_info(self) -> None:
        info = self.model_info()
        if info != self._model_info:
            self._model_info = info
            self.metrics.model.labels(stage=self.name).info(info)
