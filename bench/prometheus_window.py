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
- each query of the window alone, one after the other;
- ``--recorded`` (the default; ``--no-recorded`` for the raw mode alone):
  meshwatch's recording rules (``deploy/prometheus/``) are loaded once the
  mesh is scraped, and the same windows are also built from them
  (``prometheus.recorded: on``) next to the raw mode, in the live windows and
  in every quiet round. Their price is paid continuously instead: Prometheus'
  CPU per window interval with and without the rules (while scraping), the
  rule groups' own durations (``prometheus_rule_group_last_duration_seconds``)
  and missed iterations, and the rules' expressions run once as queries on
  the quiet Prometheus (CPU per interval).

Per window: query time (first query sent → last answer), fold time (rows →
batches here), Prometheus' own CPU seconds (from /proc). On a shared
machine the CPU seconds and the ratios say more than wall time.

    python bench/prometheus_window.py                            # ~10,000 routes
    python bench/prometheus_window.py --target-routes 16000      # ~16,000 routes
    python bench/prometheus_window.py --no-recorded              # raw mode only (as before)
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
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from common import machine_line, rss_mib  # noqa: E402

from pipeline.collect.prometheus_source import (  # noqa: E402
    PromCycleReport,
    PrometheusSource,
    rules_for,
)
from pipeline.collect.promql import (  # noqa: E402
    Window,
    family_queries,
    info_query,
    new_series_query,
    part_selector,
    sum_labels,
)
from pipeline.config import MeshwatchConfig, load_config  # noqa: E402
from pipeline.schema import GoldenBatch  # noqa: E402
from pipeline.simulate import SimulatedMesh, generate_mesh  # noqa: E402
from pipeline.simulate.prometheus import LocalPrometheus, find_prometheus  # noqa: E402

BUDGET = 2.0


class RulesPrometheus(LocalPrometheus):
    """The real Prometheus with ``rule_files`` (applied at start or on the next reload)."""

    rule_files: tuple[str, ...] = ()

    def _write(self) -> None:
        super()._write()
        if self.rule_files:
            import yaml

            cfg = yaml.safe_load(self.config_path.read_text())
            cfg["rule_files"] = list(self.rule_files)
            self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def reload(self, rule_files: tuple[str, ...], targets: object = None) -> None:
        self.rule_files = rule_files
        self.set_targets(self._targets if targets is None else targets)  # type: ignore[arg-type]


def self_metrics(url: str) -> dict[str, float]:
    """Prometheus' own rule metrics: group durations summed, missed iterations, evaluations."""
    import httpx

    out = {"group_last_s": 0.0, "group_max_s": 0.0, "missed": 0.0, "eval_sum_s": 0.0, "evals": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if "meshwatch-window" not in line and not line.startswith("prometheus_rule_evaluation_d"):
            continue
        try:
            v = float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
        if line.startswith("prometheus_rule_group_last_duration_seconds{"):
            out["group_last_s"] += v
            out["group_max_s"] = max(out["group_max_s"], v)
        elif line.startswith("prometheus_rule_group_iterations_missed_total{"):
            out["missed"] += v
        elif line.startswith("prometheus_rule_evaluation_duration_seconds_sum"):
            out["eval_sum_s"] += v
        elif line.startswith("prometheus_rule_evaluation_duration_seconds_count"):
            out["evals"] += v
    return out


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
        if report.mode == "recorded":
            raw = (
                f"{report.recorded_rows:,} rows of rules; {report.raw_pods} pods raw, "
                f"families raw {report.raw_families}, {report.new_series} pods with new series; "
                f"waited {report.rules_wait_seconds:.2f}s for rule evaluations"
            )
            print(f"{'':>6} (recorded: {raw})")
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
            prom = RulesPrometheus(tmp, scrape_interval=args.scrape_interval)
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
                cfg = bench_config(args, prom.url, "off")
                source = PrometheusSource(cfg, name="bench", deadline_seconds=args.timeout)
                recorded: PrometheusSource | None = None
                if args.recorded:
                    rcfg = bench_config(args, prom.url, "on")
                    recorded = PrometheusSource(rcfg, name="bench", deadline_seconds=args.timeout)
                    await load_rules(args, prom, rcfg, Path(tmp), pid)
                print(f"\nwindow {args.window:g}s, {args.concurrency} queries in flight")
                print(HEADER)
                last = 0.0
                for _ in range(args.windows):
                    # The latest window whose scrapes have landed (and whose rules have run).
                    settle = (recorded or source).settle_seconds
                    now = time.time() - max(args.scrape_interval, settle)
                    last = math.floor(now / args.window) * args.window
                    await one_window("live", source, last, pid)
                    if recorded is not None:
                        await one_window("rec", recorded, last, pid)
                    await asyncio.sleep(max(0.0, last + 2 * args.window + settle - time.time()))
                slow = await asyncio.to_thread(
                    prom.query,
                    'max(max_over_time(scrape_duration_seconds{job="linkerd-proxy"}[5m]))',
                )
                if slow:
                    print(f"slowest scrape of the last 5 min: {float(slow[0]['value'][1]):.2f}s")
                if recorded is not None:
                    # The latest window every rule evaluated (a loaded machine misses some).
                    covered = await asyncio.to_thread(covered_end, recorded, 600.0)
                    print(f"latest window every rule covered: {covered} (last built: {last})")
                    if covered is not None:
                        last = covered
                # Quiet: no more scrapes (stored data stays), no more simulator work, and
                # no more rule evaluations (their stored results stay).
                await asyncio.to_thread(prom.reload, (), [])
                await mesh.close()
                await asyncio.sleep(2.0)
                await quiet_rounds(source, recorded, last, pid, args)
                await per_query(source, last, pid)
                if recorded is not None:
                    await recorded_queries(recorded, last, pid)
                    await rules_as_queries(recorded, last, pid)
                    await recorded.aclose()
                await source.aclose()
                print(f"# {load_line()}")
            finally:
                prom.stop()
    cur, peak = rss_mib()
    print(f"bench process RSS {cur:.0f} MiB (peak {peak:.0f})")
    return 0


def bench_config(args: argparse.Namespace, url: str, recorded: str) -> MeshwatchConfig:
    return load_config(
        None,
        {
            "window": {"seconds": args.window, "scrape_timeout_seconds": 1.0},
            "prometheus": {
                "url": url,
                "timeout_seconds": args.timeout,
                "concurrency": args.concurrency,
                "recorded": recorded,
            },
        },
    )


async def cpu_per_interval(pid: int | None, seconds: float, interval: float) -> float:
    cpu0 = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) * interval / seconds


async def load_rules(
    args: argparse.Namespace,
    prom: RulesPrometheus,
    cfg: MeshwatchConfig,
    tmp: Path,
    pid: int | None,
) -> None:
    """Prometheus' CPU per interval while scraping, then with the rules loaded as well."""
    import yaml

    n = args.cost_intervals
    span = n * args.window
    base = await cpu_per_interval(pid, span, args.window)
    print(f"prometheus CPU per {args.window:g}s, scraping only: {base:.2f} s ({load_line()})")
    rules = rules_for(cfg)
    path = tmp / "meshwatch-rules.yaml"
    path.write_text(yaml.safe_dump(rules.to_yaml_obj(), sort_keys=False))
    await asyncio.to_thread(prom.reload, (str(path),))
    # Two whole windows of evaluations before measuring (the first ones read a partial past).
    await asyncio.sleep(2 * args.window + rules.settle_seconds)
    m0 = await asyncio.to_thread(self_metrics, prom.url)
    with_rules = await cpu_per_interval(pid, span, args.window)
    m1 = await asyncio.to_thread(self_metrics, prom.url)
    evals = m1["evals"] - m0["evals"]
    per_eval = (m1["eval_sum_s"] - m0["eval_sum_s"]) / evals if evals else float("nan")
    print(
        f"prometheus CPU per {args.window:g}s, scraping + {len(rules.rules)} rule groups: "
        f"{with_rules:.2f} s -> rules ~{with_rules - base:.2f} CPU s per interval "
        f"({(with_rules - base) / args.window:.2f} of a core; {load_line()})"
    )
    print(
        f"rule groups: last durations sum {m1['group_last_s']:.2f} s (slowest group "
        f"{m1['group_max_s']:.2f} s) per {args.window:g}s interval; {evals:.0f} evaluations "
        f"measured, mean {per_eval:.3f} s; iterations missed so far: {m1['missed']:.0f}"
    )


class TimingClient:
    """Wraps a query client: each query's time and rows (the window's queries overlap)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[tuple[str, float, int]] = []

    def query(self, expr: str, at: float, timeout: float) -> Any:
        t = time.perf_counter()
        rows = self.inner.query(expr, at, timeout)
        self.seen.append((expr, time.perf_counter() - t, len(rows)))
        return rows

    def close(self) -> None:
        self.inner.close()


async def recorded_queries(source: PrometheusSource, end: float, pid: int | None) -> None:
    """The recorded window once more, its queries timed (they run concurrently)."""
    inner = source.client
    timing = TimingClient(inner)
    source.client = timing
    cpu0 = cpu_seconds(pid)
    report, _ = await source.build_window(end)
    cpu = cpu_seconds(pid) - cpu0
    source.client = inner
    print(
        f"\nthe recorded window's queries (quiet, {source.pcfg.concurrency} in flight; "
        f"query {report.query_seconds:.3f}s, {cpu:.2f} Prometheus CPU s; "
        f"{report.new_series} pods with new series):"
    )
    for expr, dt, n in sorted(timing.seen, key=lambda x: -x[1]):
        print(f"  {dt:8.3f}s {n:>8,} rows  {expr[:110]}")


def covered_end(source: PrometheusSource, span: float) -> float | None:
    """The latest window end whose evaluation every rule wrote (from the sentinels)."""
    assert source.rules is not None
    rows = source.client.query(source.rules.sentinel_query(span), time.time(), 600.0)
    ends: dict[str, set[float]] = {}
    for row in rows:
        name = row["metric"].get("__name__", "")
        ends.setdefault(name, set()).update(float(v) for _, v in row.get("values", ()))
    if len(ends) < len(source.rules.rules):
        return None
    common = set.intersection(*ends.values())
    return max(common) if common else None


async def rules_as_queries(source: PrometheusSource, end: float, pid: int | None) -> None:
    """Each rule's expression once, as a query at the instant it covered ``end`` (quiet)."""
    assert source.rules is not None
    at = end + source.rules.settle_seconds + 0.5
    print("\nthe rules' expressions as queries (quiet, sequential: one interval's evaluation):")
    total = cpu_total = 0.0
    for rule in source.rules.rules:
        cpu0, t = cpu_seconds(pid), time.perf_counter()
        rows = await asyncio.to_thread(source.client.query, rule.expr, at, 600.0)
        dt, cpu = time.perf_counter() - t, cpu_seconds(pid) - cpu0
        total += dt
        cpu_total += cpu
        print(f"  {rule.record:<52} {dt:8.3f}s {cpu:6.2f} cpu s {len(rows):>8,} rows")
    print(f"  {'sum (one evaluation of every rule)':<52} {total:8.3f}s {cpu_total:6.2f} cpu s")


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
    source: PrometheusSource,
    recorded: PrometheusSource | None,
    end: float,
    pid: int | None,
    args: argparse.Namespace,
) -> None:
    """The window (raw, and recorded) and both references, interleaved round by round.

    References over the very same series at the same concurrency: the *floor*
    (``count()`` of each part's series: selecting them and reading one sample
    each, nothing cheaper reads them all) and *Linkerd's own shape*
    (``sum by (...) (increase(x[2w]))``, as ``linkerd viz`` asks; extrapolated,
    not exact). Ratios are medians over the rounds.
    """
    print(f"\nquiet rounds (scraping stopped; window, then references; {args.rounds} rounds):")
    print(
        f"  {'round':>5} {'window q s':>10} {'cpu':>6} {'fold s':>7} {'floor s':>8} {'cpu':>6} "
        f"{'linkerd s':>9} {'cpu':>6} {'rows':>8} {'routes':>7} {'rec q s':>8} {'cpu':>6} "
        f"{'rec fold':>8} {'rec rows':>8} {'of rules':>8} {'raw pods':>8} {'load':>5}"
    )
    runs: list[tuple[float, ...]] = []
    skipped: list[str] = []  # why a round's recorded window was not built
    nan = float("nan")
    with ThreadPoolExecutor(args.concurrency) as pool:
        for i in range(args.rounds):
            rq = rc = rf = nan
            rrows = rrules = rpods = 0
            if recorded is not None:
                cpu0 = cpu_seconds(pid)
                rrep, rbatches = await recorded.build_window(end)
                rc = cpu_seconds(pid) - cpu0
                if rrep.skipped or rrep.mode != "recorded":
                    print(f"  {i:>5} recorded: {rrep.skipped or rrep.recorded_note}")
                    skipped.append(str(rrep.skipped or rrep.recorded_note)[:120])
                else:
                    rq, rf, rrows = rrep.query_seconds, rrep.fold_seconds, rrep.rows
                    rrules, rpods = rrep.recorded_rows, rrep.raw_pods
            cpu0 = cpu_seconds(pid)
            report, batches = await source.build_window(end)
            cpu = cpu_seconds(pid) - cpu0
            if report.skipped:
                print(f"  {i:>5} skipped: {report.skipped}")
                continue
            if recorded is not None and rrows and not _same(rbatches, batches):
                print(f"  {i:>5} recorded and raw batches differ: {_differ(rbatches, batches)}")
            fw, fc, _, _ = await reference(source, end, pid, "floor", pool)
            lw, lc, _, _ = await reference(source, end, pid, "linkerd", pool)
            load = os.getloadavg()[0]
            runs.append(
                (
                    report.query_seconds,
                    cpu,
                    report.fold_seconds,
                    fw,
                    fc,
                    lw,
                    lc,
                    rq,
                    rc,
                    rf,
                    report.samples,
                )
            )
            print(
                f"  {i:>5} {report.query_seconds:>10.3f} {cpu:>6.2f} {report.fold_seconds:>7.3f} "
                f"{fw:>8.3f} {fc:>6.2f} {lw:>9.3f} {lc:>6.2f} {report.rows:>8,} "
                f"{report.samples:>7,} {rq:>8.3f} {rc:>6.2f} {rf:>8.3f} {rrows:>8,} {rrules:>8,} "
                f"{rpods:>8} {load:>5.1f}"
            )
    if not runs:
        summary(runs, recorded is not None, skipped)
        return
    med = [statistics.median(col) for col in zip(*runs, strict=True)]
    q, cpu, fold_s, fw, fc, lw, lc, rq, rc, rf, _ = med
    print(
        f"  median: window {q:.3f}s query ({cpu:.2f} Prometheus CPU s), fold {fold_s:.3f}s; "
        f"floor {fw:.3f}s ({fc:.2f}); Linkerd shape {lw:.3f}s ({lc:.2f})"
    )
    print(
        f"  window / floor: {q / fw:.2f}x wall, {cpu / fc:.2f}x Prometheus CPU; "
        f"window / Linkerd shape: {q / lw:.2f}x wall, {cpu / lc:.2f}x CPU; "
        f"window / 2 s budget: {q / BUDGET:.2f}x"
    )
    if recorded is not None:
        print(
            f"  recorded: window {rq:.3f}s query ({rc:.2f} Prometheus CPU s), fold {rf:.3f}s; "
            f"recorded / raw {rq / q:.2f}x wall, {rc / cpu:.2f}x CPU; recorded / floor "
            f"{rq / fw:.2f}x wall, {rc / fc:.2f}x CPU; recorded / 2 s budget {rq / BUDGET:.2f}x"
        )
    summary(runs, recorded is not None, skipped)


def summary(runs: list[tuple[float, ...]], recorded: bool, skipped: list[str]) -> None:
    """One line to compare quiet re-runs by: the recorded window against the budget and the floor.

    Medians over the quiet rounds whose recorded window was built; when none
    was (the rules never covered a window every rule evaluated), says so.
    """
    routes = statistics.median(r[-1] for r in runs) if runs else 0
    q = statistics.median(r[0] for r in runs) if runs else math.nan
    fw = statistics.median(r[3] for r in runs) if runs else math.nan
    rec = [r for r in runs if not math.isnan(r[7])]
    if not recorded or not rec:
        why = "not asked (--no-recorded)" if not recorded else f"never built ({'; '.join(skipped)})"
        print(
            f"SUMMARY routes={routes:,.0f} recorded window {why}; raw_window_query_s={q:.3f} "
            f"-> {q / BUDGET:.2f}x the {BUDGET:g} s budget; floor_s={fw:.3f}; {load_line()}"
        )
        return
    rq = statistics.median(r[7] for r in rec)
    rc = statistics.median(r[8] for r in rec)
    rfw = statistics.median(r[3] for r in rec)
    verdict = "MET" if rq < BUDGET else "NOT MET"
    print(
        f"SUMMARY routes={routes:,.0f} recorded_window_query_s={rq:.3f} (best "
        f"{min(r[7] for r in rec):.3f}; {rc:.2f} Prometheus CPU s) vs budget {BUDGET:g} s: "
        f"{rq / BUDGET:.2f}x, {verdict}; same-run floor_s={rfw:.3f}: recorded/floor "
        f"{rq / rfw:.2f}x; raw_window_query_s={q:.3f}; medians of {len(rec)} quiet rounds "
        f"({len(runs) - len(rec)} without a recorded window); {load_line()}"
    )


def _differ(rec: list[GoldenBatch], raw: list[GoldenBatch]) -> str:
    """How: routes whose samples differ, the fields that differ, requests on each side."""
    a = {(b.workload_key, s.direction, s.route): s for b in rec for s in b.samples}
    b = {(b.workload_key, s.direction, s.route): s for b in raw for s in b.samples}
    fields: dict[str, int] = {}
    first = ""
    ra = rb = n = 0
    for k in sorted(a.keys() | b.keys()):
        x, y = a.get(k), b.get(k)
        dx = {} if x is None else x.model_dump(mode="json")
        dy = {} if y is None else y.model_dump(mode="json")
        diff = [
            f
            for f in dx.keys() | dy.keys()
            if f not in ("latency_sum_ms", "mean_ms") and dx.get(f) != dy.get(f)
        ]
        if not diff:
            continue
        n += 1
        ra += dx.get("requests", 0)
        rb += dy.get("requests", 0)
        for f in diff:
            fields[f] = fields.get(f, 0) + 1
        if not first:
            f = sorted(diff)[0]
            first = f"; e.g. {k} {f}: {str(dx.get(f))[:160]} vs {str(dy.get(f))[:160]}"
    return f"{n} of {len(b)} routes ({fields}), requests there {ra} recorded vs {rb} raw{first}"


def _same(a: list[GoldenBatch], b: list[GoldenBatch]) -> bool:
    """Whether two windows' samples are equal field by field (float sums aside)."""
    return _differ(a, b).startswith("0 of ")


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
    p.add_argument(
        "--recorded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also load meshwatch's recording rules and build the windows from them",
    )
    p.add_argument(
        "--cost-intervals",
        type=int,
        default=3,
        help="window intervals over which Prometheus' CPU is measured with and without rules",
    )
    args = p.parse_args(argv)
    if args.workloads <= 0:
        args.workloads = max(1, round(args.target_routes / ROUTES_PER_WORKLOAD))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
