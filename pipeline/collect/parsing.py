"""From one scraped body to that pod's deltas for the window, in or out of the event loop.

Decompressing, parsing, extracting and differencing a proxy's ``/metrics``
is the CPU-heavy part of a cycle: a few milliseconds per proxy of ~500
series, so seconds of one core per window for a mesh of 1,000 proxies
(``bench/collector_scale.py`` measures it). Done on the event loop it would
stall every scrape still in flight, the Kubernetes watch and every other
coroutine for that long.

So each body is handed over as soon as it arrives, still gzipped, to one of
two processors with the same face:

- :class:`InlineProcessor` works on the calling thread (tests, small meshes,
  ``collector.parse_workers: 0``);
- :class:`WorkerProcessor` shards pods over worker processes by a hash of
  the pod's key. Each worker keeps the :class:`DeltaTracker` of its own pods,
  so only compressed bytes go out and only the pod's *deltas* come back
  (a few kilobytes: no per-series state), and the collector process holds
  neither the bodies nor the cumulative counters of 1,000 proxies.

A worker that dies takes its pods' previous counters with it: those pods
fail for the window in flight, their next scrape is a baseline, and they
count again from the one after. Nothing is ever counted twice.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import multiprocessing
import os
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pipeline.collect.deltas import DeltaTracker
from pipeline.collect.exposition import parse
from pipeline.collect.extract import PodCounters, extract

log = logging.getLogger(__name__)

#: How many worker processes "auto" means: one core is left to the event
#: loop (HTTP, merging, producing); more than four rarely pays, because the
#: loop's own share then becomes the limit.
MAX_AUTO_WORKERS = 4


class BodyError(ValueError):
    """A body that cannot be used at all (too large once inflated, broken gzip)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one body yielded.

    ``ok`` is False when nothing usable came out (``error`` says why: only
    unparseable lines, a broken or oversized body); the pod then counts as
    down. ``deltas`` is None for a baseline-only scrape (the first sight of a
    pod older than the collector). An empty body is a proxy with no traffic
    yet, not a failure.
    """

    ok: bool
    deltas: PodCounters | None = None
    errors: int = 0
    first_error: str | None = None
    cpu_seconds: float = 0.0
    error: str | None = None


def decode_body(raw: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body as the proxy wrote it: gunzipped, and never more than ``max_bytes``."""
    if encoding in ("", "identity"):
        body = raw
    elif encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(raw, max_bytes + 1)
        except zlib.error as exc:
            raise BodyError(f"broken gzip body: {exc}") from None
        if len(body) <= max_bytes and not inflater.eof:
            raise BodyError("truncated gzip body")
    else:
        raise BodyError(f"unsupported Content-Encoding {encoding!r}")
    if len(body) > max_bytes:
        raise BodyError(f"body larger than {max_bytes} bytes")
    return body


def parse_body(
    body: bytes, exclude_ports: Iterable[int]
) -> tuple[PodCounters | None, int, str | None]:
    """Parse and extract: (cumulative counters or None if nothing parsed, errors, first error)."""
    exposition = parse(body)
    errors = exposition.errors
    first = f"line {errors[0].line_no}: {errors[0].message}" if errors else None
    if errors and not exposition.samples:
        return None, len(errors), first
    return extract(exposition.samples, exclude_ports), len(errors), first


class PodState:
    """Decode → parse → deltas against this pod's last scrape; one instance per tracker.

    With ``collect_every`` set (worker processes only), the cyclic garbage
    collector is switched off and run by hand once per that many windows:
    what a body leaves behind is freed by reference counting (no cycles), and
    the automatic passes over the tracker's long-lived counters cost a fifth
    of a worker's time (``bench/collector_scale.py``).
    """

    def __init__(
        self,
        exclude_ports: Iterable[int],
        max_bytes: int,
        forget_after: float,
        *,
        collect_every: int | None = None,
    ) -> None:
        self.exclude_ports = tuple(exclude_ports)
        self.max_bytes = max_bytes
        self.tracker = DeltaTracker(forget_after_seconds=forget_after)
        self._window: float | None = None
        self._windows = 0
        self.collect_every = collect_every
        if collect_every is not None:
            gc.disable()

    def process(self, key: str, raw: bytes, encoding: str, window_end: float) -> Parsed:
        started = time.process_time()
        if self._window is None or window_end > self._window:
            self._window = window_end
            self.tracker.forget_stale(window_end)
            self._windows += 1
            if self.collect_every is not None and self._windows % self.collect_every == 0:
                gc.collect()
        try:
            body = decode_body(raw, encoding, self.max_bytes)
        except BodyError as exc:
            return Parsed(False, error=str(exc), cpu_seconds=time.process_time() - started)
        counters, errors, first = parse_body(body, self.exclude_ports)
        if counters is None:
            return Parsed(
                False,
                errors=errors,
                first_error=first,
                error="no parseable samples",
                cpu_seconds=time.process_time() - started,
            )
        deltas = self.tracker.update(key, counters, window_end)
        return Parsed(True, deltas, errors, first, time.process_time() - started)


class PodProcessor(Protocol):
    """Turns one pod's raw body into its deltas; implementations differ in where that runs."""

    async def process(self, key: str, raw: bytes, encoding: str, window_end: float) -> Parsed: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class InlineProcessor:
    """On the caller's thread: no processes, and no overlap with the scrapes either."""

    def __init__(self, exclude_ports: Iterable[int], max_bytes: int, forget_after: float) -> None:
        self.state = PodState(exclude_ports, max_bytes, forget_after)

    def process_now(self, key: str, raw: bytes, encoding: str, window_end: float) -> Parsed:
        return self.state.process(key, raw, encoding, window_end)

    async def process(self, key: str, raw: bytes, encoding: str, window_end: float) -> Parsed:
        return self.state.process(key, raw, encoding, window_end)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


# -- worker processes ---------------------------------------------------------------------

_WORKER: PodState | None = None


#: Windows between the full garbage collections a worker runs by hand.
WORKER_GC_WINDOWS = 6


def _init_worker(exclude_ports: tuple[int, ...], max_bytes: int, forget_after: float) -> None:
    global _WORKER
    _WORKER = PodState(exclude_ports, max_bytes, forget_after, collect_every=WORKER_GC_WINDOWS)


def _in_worker(key: str, raw: bytes, encoding: str, window_end: float) -> Parsed:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.process(key, raw, encoding, window_end)


def _pid() -> int:
    return os.getpid()


def shard_of(key: str, shards: int) -> int:
    """The worker a pod belongs to: stable for the collector's life, spread evenly."""
    return zlib.crc32(key.encode()) % shards


class WorkerProcessor:
    """Pods sharded over single-process pools, each keeping its pods' previous counters.

    Worker processes come from a forkserver (safe with the threads the
    collector process runs) that has imported the parser already, so a
    replacement worker starts in milliseconds.
    """

    def __init__(
        self, workers: int, exclude_ports: Iterable[int], max_bytes: int, forget_after: float
    ) -> None:
        if workers < 1:
            raise ValueError("a worker processor needs at least one worker")
        self.workers = workers
        self._args = (tuple(exclude_ports), max_bytes, forget_after)
        self._pools: list[Executor | None] = [None] * workers
        self.pids: list[int] = []

    def _new_pool(self) -> Executor:
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["pipeline.collect.parsing"])
        return ProcessPoolExecutor(
            max_workers=1, mp_context=ctx, initializer=_init_worker, initargs=self._args
        )

    def _pool(self, shard: int) -> Executor:
        pool = self._pools[shard]
        if pool is None:
            pool = self._pools[shard] = self._new_pool()
        return pool

    async def start(self) -> None:
        """Start every worker now, so the first window does not pay for it."""
        loop = asyncio.get_running_loop()
        self.pids = list(
            await asyncio.gather(
                *(loop.run_in_executor(self._pool(i), _pid) for i in range(self.workers))
            )
        )

    async def process(self, key: str, raw: bytes, encoding: str, window_end: float) -> Parsed:
        shard = shard_of(key, self.workers)
        pool = self._pool(shard)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, _in_worker, key, raw, encoding, window_end)
        except BrokenProcessPool:
            if self._pools[shard] is pool:
                log.error("parser worker %d died; its pods start again from a baseline", shard)
                self._pools[shard] = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise

    async def close(self) -> None:
        pools, self._pools = self._pools, [None] * self.workers
        for pool in pools:
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU limit in cores (cgroup v2 ``cpu.max`` or v1 CFS quota), if any."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100_000)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a container CPU limit."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return n


def resolve_workers(setting: int | Literal["auto"], cpus: int | None = None) -> int:
    """``parse_workers`` as a number: ``auto`` leaves one core to the loop, at most four.

    Cores are counted as the container sees them (a Kubernetes CPU limit of 2
    means two, whatever the node has).
    """
    if setting != "auto":
        return setting
    n = cpus if cpus is not None else available_cpus()
    return max(1, min(MAX_AUTO_WORKERS, n - 1))


def make_processor(
    setting: int | Literal["auto"],
    exclude_ports: Iterable[int],
    max_bytes: int,
    forget_after: float,
) -> InlineProcessor | WorkerProcessor:
    workers = resolve_workers(setting)
    if workers == 0:
        return InlineProcessor(exclude_ports, max_bytes, forget_after)
    return WorkerProcessor(workers, exclude_ports, max_bytes, forget_after)
