"""Reading the golden topic's history with several processes, one set of partitions each.

Every route lives on one partition (batches are keyed by workload), so the
partitions split the routes into independent sets: a worker process reads
its partitions, judges their windows with a detector of its own and keeps a
reservoir of its own. The reservoir keys are a hash of (seed, route, window)
(:func:`pipeline.train.dataset.row_keys`), so merging the workers'
reservoirs (:func:`pipeline.train.dataset.merge`) gives exactly the rows one
process reading everything would have kept: the model's inputs do not
depend on the number of workers.

Workers are started with ``spawn`` (no inherited broker connections or
threads) and talk to the parent over a pipe each: progress counts while they
run, then their :class:`~pipeline.train.dataset.Part` or their error. A
worker that dies (killed, out of memory) or fails fails the whole read with
:class:`WorkerError`: a model trained on some of the partitions would look
fine and miss routes.

Memory is bounded per worker (one detector's state for its routes, its
reservoir of at most ``max_rows`` rows, one chunk of records) and in the
parent (``workers`` × ``max_rows`` rows while merging).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import signal
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from pipeline.config import MeshwatchConfig
from pipeline.train.dataset import DatasetBuilder, Part
from pipeline.train.history import Segment, segment_chunks

Progress = Callable[[int], None]


class WorkerError(RuntimeError):
    """A history worker failed or died; the read is incomplete."""


@dataclass(frozen=True)
class ReadTask:
    """What one worker reads: its partitions, every segment of them."""

    cfg: MeshwatchConfig
    partitions: tuple[int, ...]
    segments: tuple[Segment, ...]
    since: float
    until: float
    max_rows: int = 300_000
    seed: int = 0
    workload_share: float = 1.0
    name: str = "worker"


@dataclass
class _Reporter:
    conn: Connection | None = None
    pending: int = 0
    parent: int = field(default_factory=os.getppid)

    def __call__(self, n: int) -> None:
        if self.conn is None:
            return
        if os.getppid() != self.parent:  # the job is gone (killed): stop reading for nobody
            os._exit(1)
        self.pending += n
        if self.pending >= 5000:
            self.conn.send(("progress", self.pending))
            self.pending = 0


def read_partitions(task: ReadTask, progress: Progress | None = None) -> Part:
    """Judge every segment of the task's partitions; the reservoir and totals.

    Each segment starts a fresh detector (the segments are hours apart) whose
    warm-up windows are judged but not sampled.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    builder = DatasetBuilder(task.cfg.detector, max_rows=task.max_rows, seed=task.seed)
    stats: dict[str, int] = {}
    for segment in task.segments:
        builder.start_segment(segment.keep_from if not segment.whole else float("-inf"))
        chunks = segment_chunks(
            task.cfg,
            task.partitions,
            segment,
            task.since,
            task.until,
            stats=stats,
            workload_share=task.workload_share,
        )
        for decoded in chunks:
            stats["refused"] = stats.get("refused", 0) + builder.add_decoded(decoded)
            if progress is not None:
                progress(sum(len(d.samples) for d in decoded))
    part = builder.part()
    part.stats = stats
    usage = resource.getrusage(resource.RUSAGE_SELF)
    part.peak_rss_mib = usage.ru_maxrss / 1024
    part.cpu_seconds = usage.ru_utime + usage.ru_stime - cpu0
    return part


Reader = Callable[[ReadTask, Progress | None], Part]


def _entry(reader: Reader, task: ReadTask, conn: Connection) -> None:
    """A worker process: run the reader, send progress, then the part or the error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    report = _Reporter(conn)
    try:
        part = reader(task, report)
        if report.pending:
            conn.send(("progress", report.pending))
        conn.send(("part", part))
    except BaseException as exc:  # everything goes back to the parent
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        conn.send(("error", f"{text}\n{traceback.format_exc(limit=-3)}"))
    finally:
        conn.close()


def split_partitions(
    partitions: Sequence[int], workers: int, sizes: dict[int, int] | None = None
) -> list[tuple[int, ...]]:
    """Partitions dealt to at most ``workers`` non-empty groups: by ``sizes`` (records),
    the largest first to the group with the fewest so far, so the slowest worker
    (which sets the pace) has as little as can be; round-robin without sizes."""
    n = max(1, min(workers, len(partitions)))
    if not sizes:
        return [tuple(partitions[i::n]) for i in range(n)]
    groups: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for p in sorted(partitions, key=lambda p: (-sizes.get(p, 0), p)):
        i = min(range(n), key=lambda i: (load[i], i))
        groups[i].append(p)
        load[i] += sizes.get(p, 0)
    return [tuple(sorted(g)) for g in groups if g]


def _died(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code} without a result"


def read_parallel(
    tasks: Sequence[ReadTask],
    *,
    progress: Progress | None = None,
    reader: Reader = read_partitions,
) -> list[Part]:
    """Run each task in a process of its own; their parts, or :class:`WorkerError`.

    One task runs in this process (no start-up cost). ``reader`` must be a
    module-level function (spawn pickles it by name).
    """
    if len(tasks) == 1:
        try:
            return [reader(tasks[0], progress)]
        except Exception as exc:
            raise WorkerError(f"history reader failed: {type(exc).__name__}: {exc}") from exc
    ctx = mp.get_context("spawn")
    procs: dict[Connection, tuple[Any, ReadTask]] = {}
    parts: list[Part] = []
    try:
        for task in tasks:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_entry, args=(reader, task, child), name=f"meshwatch-train-{task.name}"
            )
            proc.start()
            child.close()
            procs[parent] = (proc, task)
        open_conns = list(procs)
        while open_conns:
            for conn in wait(open_conns):
                assert isinstance(conn, Connection)
                proc, task = procs[conn]
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    proc.join(10)
                    raise WorkerError(
                        f"history {task.name} (partitions {_parts(task)}) {_died(proc.exitcode)}"
                    ) from None
                if kind == "progress":
                    if progress is not None:
                        progress(int(payload))
                elif kind == "error":
                    raise WorkerError(
                        f"history {task.name} (partitions {_parts(task)}) failed: {payload}"
                    )
                else:
                    parts.append(payload)
                    open_conns.remove(conn)
                    conn.close()
                    proc.join(30)
    finally:
        for proc, _ in procs.values():
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
        for conn in procs:
            conn.close()
    return parts


def _parts(task: ReadTask) -> str:
    return ", ".join(map(str, task.partitions))


def default_workers() -> int:
    """One worker per CPU this process may use: its CPU affinity, and in a
    container its cgroup's CPU quota (a pod limited to 2 CPUs on a 64-CPU node
    sees 64 in its affinity; 64 workers would each hold a reservoir)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(n, quota) if quota else n)


def _cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """CPUs allowed by a cgroup v2 quota ("max 100000": none), rounded up."""
    try:
        with open(path) as fh:
            quota, period = fh.read().split()[:2]
        if quota == "max":
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


__all__ = [
    "ReadTask",
    "Reader",
    "WorkerError",
    "default_workers",
    "read_parallel",
    "read_partitions",
    "split_partitions",
]
