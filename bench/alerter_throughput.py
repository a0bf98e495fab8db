"""Alerter throughput: 1,000 findings/s sustained into dedup, grouping and rate limits.

A synthetic mesh of 2,000 routes in 200 workloads and 16 namespaces: routes
go anomalous for a while (a firing finding each time they come round, which
dedup folds into one incident), resolve, stay calm, and some re-fire within
the flap-damping time. The load generator holds a steady rate; ``meshwatch
alert`` runs as a child process with two sinks:

  hook   generic webhook (Alertmanager v4), every incident, 5/s burst 10
  slack  Slack incoming webhook, critical incidents only, the default 1/s burst 3

grouped by namespace. Every 5 s it samples the alerter's committed offsets
(against what was produced), its resident memory, and what the receivers
got; at the end it reports the consumed rate, the lag, RSS over time, and
the most sends any receiver saw in one second (the limit allows rate + burst
in a second that starts with a full bucket).

    python bench/alerter_throughput.py                   # 60 s at 1,000/s
    python bench/alerter_throughput.py --seconds 300 --rate 1500
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from alerter_common import T0, alerter_process, make_finding, pace, rss_of, write_config
from common import bench_broker, bench_config, machine_line

from pipeline.kafka.clients import make_admin, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.receivers import SlackReceiver, WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import encode

NAMESPACES = 16
WORKLOADS = 200
ROUTES_PER_WORKLOAD = 10
LIMITS = {"hook": (5.0, 10), "slack": (1.0, 3)}


@dataclass
class Route:
    namespace: str
    workload: str
    route: str
    severity: str
    firing_left: int = 0  # visits still firing
    calm_left: int = 0  # visits still calm
    started: float = 0.0
    window: int = 0


class Mesh:
    """Routes that fire, get re-reported (dedup), resolve and sometimes flap."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.routes = [
            Route(
                f"ns{w % NAMESPACES:02d}",
                f"svc-{w:03d}",
                f"GET /api/r{r}",
                "critical" if self.rng.random() < 0.2 else "warning",
                calm_left=self.rng.randint(0, 40),
            )
            for w in range(WORKLOADS)
            for r in range(ROUTES_PER_WORKLOAD)
        ]
        self.i = 0

    def next(self) -> tuple[bytes, bytes]:
        """The next finding some route emits (calm routes are passed over)."""
        while True:
            route = self.routes[self.i % len(self.routes)]
            self.i += 1
            route.window += 1
            end = T0 + route.window * 2.0
            if route.firing_left > 0:
                route.firing_left -= 1
                status = "firing"
            elif route.calm_left > 0:
                route.calm_left -= 1
                continue
            elif route.started:  # end of an incident: resolve, then calm (short gaps flap)
                status = "resolved"
                route.calm_left = self.rng.choice([2, 3, 20, 40, 60])
            else:
                route.started = end
                route.firing_left = self.rng.randint(10, 60)
                status = "firing"
            f = make_finding(
                route.namespace,
                route.workload,
                route.route,
                status=status,
                window_end=end,
                started_at=route.started,
                severity=route.severity,
            )
            if status == "resolved":
                route.started = 0.0
            return f.workload_key.encode(), encode(f)


def most_in_one_second(times: list[float]) -> int:
    """The largest number of arrivals in any window of one second."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="findings per second")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    print(
        f"alerter throughput: {args.rate:,.0f} findings/s for {args.seconds:.0f} s over "
        f"{WORKLOADS * ROUTES_PER_WORKLOAD:,} routes; {machine_line()}"
    )
    with (
        bench_broker(args.bootstrap) as bootstrap,
        ReceiverThread(WebhookReceiver()) as hook,
        ReceiverThread(SlackReceiver()) as slack,
        tempfile.TemporaryDirectory() as tmp,
    ):
        cfg = bench_config(bootstrap)
        ensure_topics(cfg)
        config = write_config(
            Path(tmp) / "alerter.yaml",
            cfg,
            {
                "sinks": [
                    {"type": "webhook", "name": "hook", "url": hook.url},
                    {"type": "slack", "name": "slack", "webhook_url": slack.url},
                ],
                "routes": [
                    {
                        "name": "critical-to-chat",
                        "match": ["severity=critical"],
                        "sinks": ["slack"],
                        "continue": True,
                        "group_interval_seconds": 60,
                    },
                    {"name": "everything", "sinks": ["hook"]},
                ],
                "grouping": {
                    "group_by": ["namespace"],
                    "group_wait_seconds": 2,
                    "group_interval_seconds": 20,
                },
                "flap_damping_seconds": 10,
                "rate_limits": {"hook": {"per_second": LIMITS["hook"][0], "burst": 10}},
            },
        )
        mesh = Mesh(args.seed)
        producer = make_producer(cfg.kafka, "bench-load")
        produced: Counter[int] = Counter()
        plock = threading.Lock()

        def count(meta: object) -> None:
            with plock:
                produced[meta.partition] = max(produced[meta.partition], meta.offset + 1)  # type: ignore[attr-defined]

        admin = make_admin(cfg.kafka)

        def committed() -> int:
            offsets = admin.list_group_offsets("alerter").get("alerter", {})
            return sum(
                o.offset
                for tp, o in offsets.items()
                if tp.topic == cfg.topics.findings and o.offset > 0
            )

        samples: list[tuple[float, int, int, float, int, int]] = []
        with alerter_process(config, Path(tmp) / "alerter.log") as proc:
            # wait until the alerter has joined its group and committed something
            key, value = mesh.next()
            producer.send(cfg.topics.findings, key=key, value=value).add_callback(count)
            producer.flush()
            deadline = time.monotonic() + 120
            while committed() < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            print(f"alerter ready; RSS {rss_of(proc.pid):.0f} MiB\n")
            print("   t s   produced  committed    lag   RSS MiB   hook  slack")
            start = time.monotonic()
            sent, next_sample = 0, start
            while (now := time.monotonic()) - start < args.seconds:
                key, value = mesh.next()
                producer.send(cfg.topics.findings, key=key, value=value).add_callback(count)
                sent += 1
                if now >= next_sample:
                    next_sample += 5
                    with plock:
                        total = sum(produced.values())
                    done = committed()
                    row = (
                        now - start,
                        total,
                        done,
                        rss_of(proc.pid),
                        len(hook.accepted()),
                        len(slack.accepted()),
                    )
                    samples.append(row)
                    print(
                        f"{row[0]:6.0f} {row[1]:10,} {row[2]:10,} {row[1] - row[2]:6,} "
                        f"{row[3]:9.1f} {row[4]:6} {row[5]:6}"
                    )
                pace(start, sent, args.rate)
            producer.flush()
            ran = time.monotonic() - start
            with plock:
                total = sum(produced.values())
            catch_up = time.monotonic()
            while committed() < total and time.monotonic() - catch_up < 120:
                time.sleep(0.2)
            behind = time.monotonic() - catch_up
            done = committed()
            rss_end = rss_of(proc.pid)
            time.sleep(1)  # let in-flight HTTP finish before reading the receivers
        producer.close()
        admin.close()

        print(f"\nproduced {total:,} findings in {ran:.1f} s = {total / ran:,.0f}/s")
        print(
            f"alerter committed {done:,} ({'all' if done >= total else 'NOT all'}); "
            f"caught up {behind:.1f} s after the load stopped"
        )
        lags = [s[1] - s[2] for s in samples]
        print(f"lag while loading: max {max(lags):,} findings, last {lags[-1]:,}")
        rss = [s[3] for s in samples] + [rss_end]
        print(
            "alerter RSS MiB: "
            + " ".join(f"{x:.0f}" for x in rss)
            + f"  (first {rss[0]:.0f}, max {max(rss):.0f}, end {rss[-1]:.0f})"
        )
        for name, rx in (("hook", hook), ("slack", slack)):
            got = sorted(r.at for r in rx.accepted())
            per_second = Counter(int(t) for t in got)
            rate, burst = LIMITS[name]
            worst = most_in_one_second(got)
            print(
                f"{name:5}: {len(got):4} notices ({total / max(len(got), 1):,.0f} findings each), "
                f"most in any 1 s: {worst} (limit {rate:.0f}/s burst {burst}: "
                f"{'OK' if worst <= rate + burst else 'EXCEEDED'}), "
                f"most in a calendar second: {max(per_second.values(), default=0)}, "
                f"rejected {len(rx.rejected())}"
            )


if __name__ == "__main__":
    main()
