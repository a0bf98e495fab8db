"""Prometheus source: time to build one window for a ~10,000-route mesh.

Builds a simulated mesh with ``generate_mesh`` (``--target-routes``, default
10,000 golden routes: about 345 workloads × 16 ServiceProfile routes, 1–2
replicas, some 500,000 proxy series, two thirds of them route latency
buckets), serves every proxy's ``/metrics`` over loopback HTTP, starts the
real Prometheus (Debian package ``prometheus``) scraping them every
``--scrape-interval`` seconds with linkerd-viz's labels, lets it scrape a few
intervals, then builds windows with the Prometheus source exactly as the
collector does and prints:

- **live**: windows built while Prometheus keeps ingesting the mesh;
- **quiet rounds**: the last window built again after scraping stopped
  (targets removed; stored data does not change), so that the query cost is
  not mixed with ingestion and the simulator's rendering, interleaved with
  two references over the very same series at the same concurrency, so that
  the numbers carry to other machines: the *floor* (``count()`` of each
  part's series: selecting them and reading one sample each) and *Linkerd's
  own shape* (``sum by (...) (increase(x[2w]))``, as ``linkerd viz`` asks,
  extrapolated and not exact); medians and ratios at the end;
- each query of the window alone, one after the other.

Per window: query time (first query sent → last answer), fold time (rows →
batches here), Prometheus' own CPU seconds (from /proc). On a shared
machine the CPU seconds and the ratios say more than wall time.

    python bench/prometheus_window.py                            # ~10,000 routes
    python bench/prometheus_window.py --target-routes 16000      # ~16,000 routes
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from common import machine_line, rss_mib  # noqa: E402

from pipeline.collect.prometheus_source import PromCycleReport, PrometheusSource  # noqa: E402
from pipeline.collect.promql import (  # noqa: E402
    Window,
    family_queries,
    info_query,
    new_series_query,
    part_selector,
    sum_labels,
)
from pipeline.config import load_config  # noqa: E402
from pipeline.simulate import SimulatedMesh, generate_mesh  # noqa: E402
from pipeline.simulate.prometheus import LocalPrometheus, find_prometheus  # noqa: E402

BUDGET = 2.0


def head_series(url: str) -> int | None:
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("prometheus_tsdb_head_series "):
            return int(float(line.split()[1]))
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process, from /proc (NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return float("nan")


def load_line() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return ""


HEADER = (
    f"{'':>6} {'window end':>11} {'routes':>7} {'batches':>7} {'rows':>7} {'queries':>7} "
    f"{'query s':>8} {'fold s':>7} {'total s':>8} {'prom cpu s':>10} {'query/2s':>8}"
)


async def one_window(
    label: str, source: PrometheusSource, end: float, pid: int | None
) -> PromCycleReport:
    cpu0 = cpu_seconds(pid)
    report, _ = await source.build_window(end)
    cpu = cpu_seconds(pid) - cpu0
    if report.skipped:
        print(f"{label:>6} {end % 1e5:>11.0f} skipped: {report.skipped}")
    else:
        print(
            f"{label:>6} {end % 1e5:>11.0f} {report.samples:>7,} {report.batches:>7} "
            f"{report.rows:>7,} {report.queries:>7} {report.query_seconds:>8.3f} "
            f"{report.fold_seconds:>7.3f} {report.seconds:>8.3f} {cpu:>10.2f} "
            f"{report.query_seconds / BUDGET:>8.2f}"
        )
    return report


async def run(args: argparse.Namespace) -> int:
    if find_prometheus() is None:
        print("no prometheus binary: apt-get install prometheus", file=sys.stderr)
        return 2
    t = time.perf_counter()
    spec = generate_mesh(
        args.workloads, args.routes, args.seed, replicas=(args.min_replicas, args.max_replicas)
    )
    mesh = SimulatedMesh(spec, seed=args.seed)
    print(f"# {machine_line()}; {load_line()}")
    async with mesh:
        targets = mesh.targets
        print(
            f"mesh: {len(spec.workloads)} workloads, {len(targets)} proxies "
            f"(built in {time.perf_counter() - t:.1f}s)"
        )
        with tempfile.TemporaryDirectory(prefix="mw-prom-bench-") as tmp:
            prom = LocalPrometheus(tmp, scrape_interval=args.scrape_interval)
            prom.set_targets(targets)
            await asyncio.to_thread(prom.start, 60.0)
            pid = prom.pid
            try:
                print(f"prometheus {prom.url}: scraping every {args.scrape_interval:g}s ...")
                if not await warm_up(args, prom, len(targets)):
                    print(f"targets never all up:\n{prom.log_tail()}", file=sys.stderr)
                    return 1
                series = await asyncio.to_thread(head_series, prom.url)
                print(f"prometheus head series: {series:,}" if series else "head series: ?")
                cfg = load_config(
                    None,
                    {
                        "window": {"seconds": args.window, "scrape_timeout_seconds": 1.0},
                        "prometheus": {
                            "url": prom.url,
                            "timeout_seconds": args.timeout,
                            "concurrency": args.concurrency,
                        },
                    },
                )
                source = PrometheusSource(cfg, name="bench", deadline_seconds=args.timeout)
                print(f"\nwindow {args.window:g}s, {args.concurrency} queries in flight")
                print(HEADER)
                last = 0.0
                for _ in range(args.windows):
                    # The latest window whose scrapes have landed.
                    now = time.time() - args.scrape_interval
                    last = math.floor(now / args.window) * args.window
                    await one_window("live", source, last, pid)
                    await asyncio.sleep(max(0.0, last + 2 * args.window - time.time()))
                # Quiet: no more scrapes (stored data stays), no more simulator work.
                await asyncio.to_thread(prom.set_targets, [])
                await mesh.close()
                await asyncio.sleep(2.0)
                await quiet_rounds(source, last, pid, args)
                await per_query(source, last, pid)
                await source.aclose()
                print(f"# {load_line()}")
            finally:
                prom.stop()
    cur, peak = rss_mib()
    print(f"bench process RSS {cur:.0f} MiB (peak {peak:.0f})")
    return 0


async def warm_up(args: argparse.Namespace, prom: LocalPrometheus, n: int) -> bool:
    """Until every target is up, then a window and two scrape intervals more."""
    started = time.time()
    all_up: float | None = None
    while time.time() < started + 600:
        await asyncio.sleep(args.scrape_interval / 2)
        if all_up is None:
            rows = await asyncio.to_thread(prom.query, 'count(up{job="linkerd-proxy"} == 1)')
            if rows and int(float(rows[0]["value"][1])) == n:
                all_up = time.time()
                print(f"  every proxy scraped after {all_up - started:.0f}s")
        elif time.time() > all_up + args.window + 2 * args.scrape_interval:
            return True
    return False


async def per_query(source: PrometheusSource, end: float, pid: int | None) -> None:
    w = source.window(end)
    print("\neach query alone (quiet, sequential):")
    queries = [("info", info_query(w)), ("new_series", new_series_query(w))] + [
        (f"{f.name}[{i}]", q) for f in source.families for i, q in enumerate(family_queries(w, f))
    ]
    total = cpu_total = 0.0
    for name, expr in queries:
        cpu0, t = cpu_seconds(pid), time.perf_counter()
        rows = await asyncio.to_thread(source.client.query, expr, end, 600.0)
        dt, cpu = time.perf_counter() - t, cpu_seconds(pid) - cpu0
        total += dt
        cpu_total += cpu
        print(f"  {name:<36} {dt:8.3f}s {cpu:6.2f} cpu s {len(rows):>8,} rows")
    print(f"  {'sum':<36} {total:8.3f}s {cpu_total:6.2f} cpu s")


def reference_queries(source: PrometheusSource, w: Window, kind: str) -> list[str]:
    out = []
    rng = f"{round(2 * w.seconds * 1000)}ms"
    for fam in source.families:
        for part in fam.parts:
            if kind == "floor":
                out.append(f"count({part_selector(w, part)})")
                continue
            by = sum_labels(w, part, fam.level == "pod")
            for metric in part.metrics:  # increase() drops the name: one metric at a time
                sel = part_selector(w, dataclasses.replace(part, metrics=(metric,)))
                out.append(f"sum by ({by}) (increase({sel}[{rng}]))")
    return out


async def reference(
    source: PrometheusSource, end: float, pid: int | None, kind: str, pool: Executor
) -> tuple[float, float, int, int]:
    """(wall s, Prometheus CPU s, queries, rows) of one reference, all queries at once."""
    loop = asyncio.get_running_loop()
    queries = reference_queries(source, source.window(end), kind)
    cpu0, t = cpu_seconds(pid), time.perf_counter()
    results = await asyncio.gather(
        *(loop.run_in_executor(pool, source.client.query, q, end, 600.0) for q in queries)
    )
    wall, cpu = time.perf_counter() - t, cpu_seconds(pid) - cpu0
    return wall, cpu, len(queries), sum(len(r) for r in results)


async def quiet_rounds(
    source: PrometheusSource, end: float, pid: int | None, args: argparse.Namespace
) -> None:
    """The window and both references, interleaved round by round (the load drifts).

    References over the very same series at the same concurrency: the *floor*
    (``count()`` of each part's series: selecting them and reading one sample
    each, nothing cheaper reads them all) and *Linkerd's own shape*
    (``sum by (...) (increase(x[2w]))``, as ``linkerd viz`` asks; extrapolated,
    not exact). Ratios are medians over the rounds.
    """
    print(f"\nquiet rounds (scraping stopped; window, then references; {args.rounds} rounds):")
    print(
        f"  {'round':>5} {'window q s':>10} {'cpu':>6} {'fold s':>7} {'floor s':>8} {'cpu':>6} "
        f"{'linkerd s':>9} {'cpu':>6} {'rows':>8} {'routes':>7}"
    )
    runs: list[tuple[float, ...]] = []
    with ThreadPoolExecutor(args.concurrency) as pool:
        for i in range(args.rounds):
            cpu0 = cpu_seconds(pid)
            report, _ = await source.build_window(end)
            cpu = cpu_seconds(pid) - cpu0
            if report.skipped:
                print(f"  {i:>5} skipped: {report.skipped}")
                continue
            fw, fc, _, _ = await reference(source, end, pid, "floor", pool)
            lw, lc, _, _ = await reference(source, end, pid, "linkerd", pool)
            runs.append((report.query_seconds, cpu, report.fold_seconds, fw, fc, lw, lc))
            print(
                f"  {i:>5} {report.query_seconds:>10.3f} {cpu:>6.2f} {report.fold_seconds:>7.3f} "
                f"{fw:>8.3f} {fc:>6.2f} {lw:>9.3f} {lc:>6.2f} {report.rows:>8,} "
                f"{report.samples:>7,}"
            )
    if not runs:
        return
    med = [statistics.median(col) for col in zip(*runs, strict=True)]
    q, cpu, fold_s, fw, fc, lw, lc = med
    print(
        f"  median: window {q:.3f}s query ({cpu:.2f} Prometheus CPU s), fold {fold_s:.3f}s; "
        f"floor {fw:.3f}s ({fc:.2f}); Linkerd shape {lw:.3f}s ({lc:.2f})"
    )
    print(
        f"  window / floor: {q / fw:.2f}x wall, {cpu / fc:.2f}x Prometheus CPU; "
        f"window / Linkerd shape: {q / lw:.2f}x wall, {cpu / lc:.2f}x CPU; "
        f"window / 2 s budget: {q / BUDGET:.2f}x"
    )


#: Golden routes per workload of ``generate_mesh`` (seed 1, 16 routes, 1-2 replicas):
#: 365 workloads gave 10,606 routes and 500 gave 16,098 (calls add outbound routes).
ROUTES_PER_WORKLOAD = 29.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--target-routes",
        type=int,
        default=10_000,
        help="golden routes to aim for (16,000 for the larger mesh); the run prints the real count",
    )
    p.add_argument("--workloads", type=int, default=0, help="instead of --target-routes")
    p.add_argument("--rounds", type=int, default=3, help="quiet rounds (window + references)")
    p.add_argument("--routes", type=int, default=16, help="ServiceProfile routes per workload")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scrape-interval", type=float, default=10.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300.0, help="per window (bench only)")
    args = p.parse_args(argv)
    if args.workloads <= 0:
        args.workloads = max(1, round(args.target_routes / ROUTES_PER_WORKLOAD))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
