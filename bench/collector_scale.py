"""Collector scale: one collector against a simulated mesh of ~1,000 proxies, 10 s windows.

The simulated mesh runs in a separate process (``multiprocessing``, spawn)
with one loopback listener per proxy, so everything measured here is the
collector's own cost: its process plus its parser worker processes (read
from ``/proc``), never the mesh's.

Windows alternate between two kinds of work, on the same HTTP client, the
same targets and the same mesh load:

  (a) collector   ``Collector.cycle``: scrape every proxy, parse, deltas,
                  merge into GoldenBatches (not produced unless --bootstrap);
  (b) reference   the same scrapes with nothing done to the bodies
                  (``scrape_all``): what fetching alone costs.

Reported per window: wall time, CPU seconds (collector process + its
workers), targets up, GoldenSamples, the longest event-loop stall (a 10 ms
ticker's worst lateness), and peak RSS. A collector cycle passes when it
finishes inside its window; (a)/(b) is the number that carries to other
machines.

    python bench/collector_scale.py                       # 1,000 proxies, 5 cycles
    python bench/collector_scale.py --parse-workers 0     # parse on the event loop
    python bench/collector_scale.py --workloads 100 --cycles 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from pipeline.collect.collector import Collector, next_boundary  # noqa: E402
from pipeline.collect.parsing import decode_body, resolve_workers  # noqa: E402
from pipeline.collect.scrape import make_scrape_client, scrape_all  # noqa: E402
from pipeline.collect.targets import Target  # noqa: E402
from pipeline.config import load_config  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the mesh, in its own process ---------------------------------------------------------


def _mesh_main(conn: Connection, workloads: int, routes: int, replicas: int, seed: int) -> None:
    """Build and serve the mesh; send its targets; serve until told to stop."""
    from pipeline.simulate import SimulatedMesh, generate_mesh

    async def serve() -> None:
        spec = generate_mesh(workloads, routes, seed=seed, replicas=(replicas, replicas))
        async with SimulatedMesh(spec, seed=seed, tick_seconds=0.25) as mesh:
            conn.send([tuple(t[:5]) for t in mesh.targets])
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_reader(conn.fileno(), stop.set)
            await stop.wait()

    asyncio.run(serve())


# -- measuring ----------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / CLK_TCK if f else 0.0


def peak_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(root: int, exclude: int) -> set[int]:
    """Every process under ``root`` except the ``exclude`` subtree (the mesh)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f:
                parent[int(entry)] = int(f[1])
    out: set[int] = set()
    for pid in parent:
        p, chain = pid, []
        while p in parent and p not in (root, exclude, 0, 1):
            chain.append(p)
            p = parent[p]
        if p == root and exclude not in chain:
            out.update(chain)
    return out


class CollectorCpu:
    """CPU seconds of this process plus its workers, the mesh excluded."""

    def __init__(self, mesh_pid: int) -> None:
        self.me = os.getpid()
        self.mesh = mesh_pid

    def workers(self) -> set[int]:
        return descendants(self.me, self.mesh)

    def sample(self) -> tuple[float, float]:
        """(this process, workers)."""
        return cpu_seconds(self.me), sum(cpu_seconds(p) for p in self.workers())

    def peak_rss(self) -> tuple[float, float]:
        return peak_rss_mib(self.me), sum(peak_rss_mib(p) for p in self.workers())


class LoopStalls:
    """The event loop's worst lateness: a 10 ms ticker that records how late it wakes."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - due)

    def reset(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())


@dataclass
class Row:
    kind: str
    window_end: float
    wall: float
    scrape: float  # until the last body was in (and parsed)
    lag: float
    cpu_main: float
    cpu_workers: float
    up: int
    targets: int
    samples: int
    stall: float
    rss_main: float  # peak so far, MiB
    rss_workers: float

    @property
    def cpu(self) -> float:
        return self.cpu_main + self.cpu_workers


# -- the run ------------------------------------------------------------------------------


async def run(args: argparse.Namespace, targets: list[Target], mesh_pid: int) -> list[Row]:
    cfg = load_config(
        None,
        {
            "cluster": "bench",
            "window": {"seconds": args.window, "scrape_timeout_seconds": args.timeout},
            "collector": {
                "concurrency": args.concurrency,
                "parse_workers": args.parse_workers,
                "metrics_address": None,
            },
            **(
                {"kafka": {"bootstrap_servers": [args.bootstrap]}, "topics": {"prefix": "bench."}}
                if args.bootstrap
                else {}
            ),
        },
    )
    producer = None
    if args.bootstrap:
        from pipeline.kafka.clients import make_producer
        from pipeline.kafka.topics import ensure_topics

        ensure_topics(cfg)
        producer = make_producer(cfg.kafka, "bench-collector")
    collector = Collector(cfg, lambda: targets, producer)
    cpu = CollectorCpu(mesh_pid)
    stalls = LoopStalls()
    rows: list[Row] = []
    await collector.start()
    stalls.start()
    try:
        async with make_scrape_client(args.concurrency, True) as client:
            # window 0: the collector's baseline; then collector and reference alternate
            for i in range(2 * args.cycles + 1):
                boundary = next_boundary(time.time(), args.window)
                await asyncio.sleep(max(boundary - time.time(), 0.0))
                stalls.reset()
                main0, workers0 = cpu.sample()
                started = time.perf_counter()
                if i % 2 == 0:
                    report = await collector.cycle(client, boundary)
                    kind = "baseline" if i == 0 else "collector"
                    up, samples, scrape = report.up, report.samples, report.scrape_seconds
                else:
                    results = await scrape_all(
                        client,
                        targets,
                        timeout=args.timeout,
                        concurrency=args.concurrency,
                        max_bytes=cfg.collector.max_body_bytes,
                    )
                    kind, up, samples = "reference", sum(r.ok for r in results), 0
                wall = time.perf_counter() - started
                if kind == "reference":
                    scrape = wall
                lag = time.time() - boundary
                main1, workers1 = cpu.sample()
                rss_main, rss_workers = cpu.peak_rss()
                row = Row(
                    kind,
                    boundary,
                    wall,
                    scrape,
                    lag,
                    main1 - main0,
                    workers1 - workers0,
                    up,
                    len(targets),
                    samples,
                    stalls.reset(),
                    rss_main,
                    rss_workers,
                )
                rows.append(row)
                print(fmt_row(row, args.window), flush=True)
            # not measured: how big the bodies were by the end
            results = await scrape_all(
                client, targets, timeout=30.0, concurrency=args.concurrency, max_bytes=1 << 28
            )
            series = [
                sum(
                    1
                    for line in decode_body(r.body, r.encoding, 1 << 28).split(b"\n")
                    if line and not line.startswith(b"#")
                )
                for r in results
                if r.body is not None
            ]
            if series:
                print(
                    f"series per proxy by the end: mean {statistics.mean(series):.0f}, "
                    f"min {min(series)}, max {max(series)}"
                )
    finally:
        await collector.close()
        if producer is not None:
            producer.close(timeout=10)
    return rows


def fmt_row(r: Row, window: float) -> str:
    verdict = ""
    if r.kind != "reference":
        verdict = (
            "ok" if r.lag < window and r.up == r.targets else "LATE" if r.lag >= window else "DOWN"
        )
    return (
        f"{r.kind:<10} {r.wall:7.2f} {r.scrape:8.2f} {r.lag:7.2f} {r.cpu_main:8.2f} "
        f"{r.cpu_workers:8.2f} {r.cpu:8.2f} {r.up:>5}/{r.targets:<5} {r.samples:>7} "
        f"{r.stall * 1000:8.0f} {r.rss_main:6.0f}+{r.rss_workers:<5.0f} {verdict}"
    )


HEADER = (
    f"{'window':<10} {'wall s':>7} {'scrape s':>8} {'lag s':>7} {'cpu main':>8} {'cpu wrk':>8} "
    f"{'cpu all':>8} {'up/targets':>11} {'samples':>7} {'stall ms':>8} {'RSS MiB':>12}"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", type=int, default=500)
    ap.add_argument("--routes", type=int, default=5, help="inbound routes per workload")
    ap.add_argument("--replicas", type=int, default=2, help="pods per workload")
    ap.add_argument("--cycles", type=int, default=5, help="collector cycles measured")
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=5.0, help="scrape timeout (shared deadline)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--parse-workers", default="auto", help="auto, or a number (0: on the loop)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bootstrap", default=None, help="also produce to this Kafka broker")
    args = ap.parse_args()
    if args.parse_workers != "auto":
        args.parse_workers = int(args.parse_workers)

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    mesh = ctx.Process(
        target=_mesh_main,
        args=(theirs, args.workloads, args.routes, args.replicas, args.seed),
        name="simulated-mesh",
    )
    t0 = time.perf_counter()
    mesh.start()
    # readiness of the other process: it answers once every listener is up
    if not ours.poll(600):
        mesh.kill()
        raise SystemExit("the simulated mesh did not come up in 600 s")
    targets = [Target(*t) for t in ours.recv()]
    assert mesh.pid is not None
    load = os.getloadavg()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"Python {platform.python_version()}, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )
    print(
        f"mesh: {len(targets)} proxies ({args.workloads} workloads x {args.replicas}, "
        f"{args.routes} routes each), up in {time.perf_counter() - t0:.0f} s, pid {mesh.pid}"
    )
    workers = resolve_workers(args.parse_workers)
    print(
        f"collector: window {args.window:g} s, scrape deadline {args.timeout:g} s, "
        f"concurrency {args.concurrency}, parse workers {workers} "
        f"({'on the event loop' if workers == 0 else 'processes'})"
    )
    print(HEADER)
    mesh_cpu0 = cpu_seconds(mesh.pid)
    t_run = time.perf_counter()
    try:
        rows = asyncio.run(run(args, targets, mesh.pid))
        mesh_cpu = cpu_seconds(mesh.pid) - mesh_cpu0
        elapsed = time.perf_counter() - t_run
    finally:
        ours.send("stop")
        mesh.join(30)
        if mesh.is_alive():
            mesh.kill()

    summarize(rows, args, mesh_cpu / elapsed)
    measured = [r for r in rows if r.kind == "collector"]
    return 0 if all(r.lag < args.window and r.up == r.targets for r in measured) else 1


def summarize(rows: list[Row], args: argparse.Namespace, mesh_share: float) -> None:
    coll = [r for r in rows if r.kind == "collector"]
    ref = [r for r in rows if r.kind == "reference"]

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    c_wall, r_wall = med([r.wall for r in coll]), med([r.wall for r in ref])
    c_cpu, r_cpu = med([r.cpu for r in coll]), med([r.cpu for r in ref])
    n = coll[0].targets if coll else 0
    print()
    per_proxy = 1000 * c_cpu / max(n, 1)
    print(
        f"median collector cycle: {c_wall:.2f} s wall, {c_cpu:.2f} s CPU ({per_proxy:.2f} ms/proxy)"
    )
    print(f"median reference fetch: {r_wall:.2f} s wall, {r_cpu:.2f} s CPU")
    print(f"collector / reference:  {c_wall / r_wall:.2f}x wall, {c_cpu / r_cpu:.2f}x CPU")
    print(f"worst loop stall in a collector cycle: {1000 * max(r.stall for r in coll):.0f} ms")
    print(
        f"peak RSS: collector {rows[-1].rss_main:.0f} MiB + workers {rows[-1].rss_workers:.0f} MiB"
    )
    print(f"the mesh process used {mesh_share:.2f} CPU(s) on average meanwhile")
    in_time = sum(r.lag < args.window and r.up == r.targets for r in coll)
    worst = max(r.lag for r in coll)
    print(
        f"{'PASS' if in_time == len(coll) else 'FAIL'}: {in_time} of {len(coll)} cycle(s) "
        f"complete, every target up, inside the {args.window:g} s window "
        f"(the latest finished {worst:.2f} s after its window's end)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
