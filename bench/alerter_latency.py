"""Alerter latency: a firing finding produced → the webhook receiving its notification.

Runs the embedded broker, a local webhook receiver (Alertmanager v4 format,
validated) and ``meshwatch alert`` as a child process with group_wait 0 and
one group per incident, so every finding is told at once. Findings of
distinct routes are produced at a steady rate; each one's send time is
matched to its notification's arrival by notification id.

The same run first measures the reference: the same findings, produced the
same way, read back by a plain kafka-python group consumer (no decoding);
that is the floor any Kafka consumer pays.

The embedded broker (Tansu) does not answer a waiting fetch when data
arrives: a consumer waits out ``fetch_max_wait_ms`` (kafka-python's default
is 500 ms), which then dominates both numbers. ``--fetch-max-wait-ms`` sets
it for the reference and the alerter alike (``kafka.extra`` in the config);
a production Kafka answers the fetch as soon as a record lands.

    python bench/alerter_latency.py                  # 10,000 findings at 100/s
    python bench/alerter_latency.py --findings 2000 --rate 100
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

from alerter_common import (
    T0,
    alerter_process,
    make_finding,
    ms,
    pace,
    percentile,
    rss_of,
    write_config,
)
from common import bench_broker, bench_config, machine_line

from pipeline.config import MeshwatchConfig
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.receivers import Received, WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import encode

NID = "x-meshwatch-notification-id"


def findings(n: int, tag: str) -> list[tuple[str, bytes, bytes]]:
    """(notification id, key, value) for n firing findings of distinct routes."""
    out = []
    for i in range(n):
        f = make_finding(
            f"ns{i % 16:02d}",
            f"svc-{tag}-{i // 20:04d}",
            f"GET /r{i % 20:02d}",
            window_end=T0 + 10,
            started_at=T0,
        )
        nid = f"{f.fingerprint}:firing:{f.started_at:.3f}"
        out.append((nid, f.workload_key.encode(), encode(f)))
    return out


def reference(cfg: MeshwatchConfig, n: int, rate: float) -> list[float]:
    """Produce n findings to a scratch topic; latency until a group consumer has each."""
    topic = cfg.topics.golden  # unused by this benchmark otherwise
    consumer = make_consumer(cfg.kafka, "bench-ref", f"ref-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(timeout_ms=100)
    sent: dict[bytes, float] = {}
    got: list[float] = []
    producer = make_producer(cfg.kafka, "bench-load")
    records = findings(n, "ref")
    done = threading.Event()

    def consume() -> None:
        while len(got) < n:
            for batch in consumer.poll(timeout_ms=100).values():
                now = time.time()
                got.extend(now - sent[r.key] for r in batch if r.key in sent)
        done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    start = time.monotonic()
    for i, (_, key, value) in enumerate(records):
        pace(start, i, rate)
        sent[key] = time.time()
        producer.send(topic, key=key, value=value)
    producer.flush()
    done.wait(120)
    producer.close()
    consumer.close()
    return sorted(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--findings", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=100.0, help="findings per second")
    ap.add_argument("--bootstrap", default=None, help="an existing broker instead of Tansu")
    ap.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=20,
        help="consumer fetch wait, both runs (kafka-python default: 500)",
    )
    args = ap.parse_args()
    print(
        f"alerter latency: {args.findings:,} findings at {args.rate:.0f}/s, "
        f"fetch_max_wait_ms {args.fetch_max_wait_ms}; {machine_line()}"
    )

    arrivals: dict[str, float] = {}
    lock = threading.Lock()

    def on_request(r: Received) -> None:
        nid = r.header(NID)
        if nid and r.accepted:
            with lock:
                arrivals.setdefault(nid, r.at)

    with (
        bench_broker(args.bootstrap) as bootstrap,
        ReceiverThread(WebhookReceiver(on_request=on_request)) as rx,
        tempfile.TemporaryDirectory() as tmp,
    ):
        cfg = bench_config(bootstrap)
        # the load generator sends each finding at once (no linger), for both runs
        kafka = {"linger_ms": 0, "extra": {"fetch_max_wait_ms": args.fetch_max_wait_ms}}
        cfg = cfg.model_copy(update={"kafka": cfg.kafka.model_copy(update=kafka)})
        ensure_topics(cfg)

        ref = reference(cfg, min(args.findings, 5_000), args.rate)
        print(f"\n(a) reference, produce → plain group consumer ({len(ref):,} messages)")
        print("      p50 ms   p95 ms   p99 ms   max ms")
        print(f"    {ms(percentile(ref, 50))} {ms(percentile(ref, 95))} "
              f"{ms(percentile(ref, 99))} {ms(ref[-1])}")  # fmt: skip

        config = write_config(
            Path(tmp) / "alerter.yaml",
            cfg,
            {
                "sinks": [{"type": "webhook", "name": "hook", "url": rx.url}],
                "grouping": {"group_by": ["..."], "group_wait_seconds": 0},
                "flap_damping_seconds": 0,
                # measuring latency, not the limiter: far above the offered load
                "rate_limits": {"hook": {"per_second": 10_000, "burst": 1_000}},
            },
        )
        producer = make_producer(cfg.kafka, "bench-load")
        with alerter_process(config, Path(tmp) / "alerter.log") as proc:
            # warm up: the group join and the first restore are not latency
            warm = findings(1, "warm")[0]
            producer.send(cfg.topics.findings, key=warm[1], value=warm[2])
            producer.flush()
            rx.wait_for(lambda _: warm[0] in arrivals, timeout=120)
            records = findings(args.findings, "run")
            sent: dict[str, float] = {}
            start = time.monotonic()
            rss = [rss_of(proc.pid)]
            for i, (nid, key, value) in enumerate(records):
                pace(start, i, args.rate)
                sent[nid] = time.time()
                producer.send(cfg.topics.findings, key=key, value=value)
                if i % 2000 == 0:
                    rss.append(rss_of(proc.pid))
            producer.flush()
            want = set(sent)
            rx.wait_for(lambda _: want <= arrivals.keys(), timeout=300)
            rss.append(rss_of(proc.pid))
        producer.close()
        lat = sorted(arrivals[n] - sent[n] for n in sent)
        print(f"\n(b) alerter, produce → webhook received ({len(lat):,} notifications)")
        print("      p50 ms   p95 ms   p99 ms   max ms")
        print(f"    {ms(percentile(lat, 50))} {ms(percentile(lat, 95))} "
              f"{ms(percentile(lat, 99))} {ms(lat[-1])}")  # fmt: skip
        p99 = percentile(lat, 99)
        print(f"\np99 {p99 * 1000:.1f} ms (target ≤ 200 ms): {'OK' if p99 <= 0.2 else 'MISSED'}")
        print(
            f"p99 (b) − p99 (a): {(p99 - percentile(ref, 99)) * 1000:.1f} ms added by the alerter"
        )
        print("alerter RSS MiB over the run: " + " ".join(f"{x:.0f}" for x in rss))
        print(f"receiver: {len(rx.accepted()):,} accepted, {len(rx.rejected())} rejected")
        log = (Path(tmp) / "alerter.log").read_text()
        assigned = log.count("assigned;")
        print(f"alerter: partitions assigned {assigned} time(s) (1 = no rebalance during the run)")
        for line in log.splitlines():
            if " WARNING " in line or " ERROR " in line:
                print("  alerter log:", line[:200])


if __name__ == "__main__":
    main()
