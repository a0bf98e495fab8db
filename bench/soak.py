"""Soak: N routes per window for M minutes through the detector and alerter processes.

A feeder in this process produces the GoldenBatches of ``--routes`` routes
(``--routes-per-batch`` per workload message) every ``--window`` seconds of
wall-clock time onto an embedded broker, while ``meshwatch detect`` and
``meshwatch alert`` run as child processes exactly as deployed, the alerter
posting to a local webhook receiver. Every ``--sample-every`` seconds the
RSS of both children (and of the broker) is read from /proc, and the
detector's committed offsets are compared with what was produced, so a
detector that cannot keep up shows as growing lag rather than hiding it.

Generating 100,000 realistic route samples costs several seconds of numpy
and pydantic, so ``--distinct-windows`` windows are generated once and
cycled, with each window's end time rewritten in the encoded bytes. The
first half of the distinct windows is clean and the second half has
``--fault-share`` of the routes slow and failing, so findings fire and
resolve all through the soak and the alerter's incident state churns.

What is reported: start (after the first sample), peak and end RSS per
process, the least-squares slope of RSS over the second half of the run
(MiB per hour; the reference "flat" is the first-half slope of the same
run), produced versus processed windows, findings and notifications.

    python bench/soak.py                                   # 100k routes, 30 min
    python bench/soak.py --routes 20000 --minutes 3 --sample-every 10   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MeshShape, generate_records, machine_line
from kafka import KafkaAdminClient

from pipeline.config import MeshwatchConfig, load_config
from pipeline.kafka.clients import make_producer
from pipeline.kafka.embedded import EmbeddedBroker
from pipeline.kafka.topics import ensure_topics
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread

T0 = 1_700_000_000.0


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def slope_mib_per_hour(ts: list[float], kib: list[int]) -> float:
    if len(ts) < 3:
        return float("nan")
    k = np.polyfit(np.asarray(ts) / 3600.0, np.asarray(kib) / 1024.0, 1)
    return float(k[0])


@dataclass
class Series:
    name: str
    pid: int
    t: list[float] = field(default_factory=list)
    kib: list[int] = field(default_factory=list)

    def sample(self, now: float) -> None:
        v = rss_kib(self.pid)
        if v is not None:
            self.t.append(now)
            self.kib.append(v)

    def summary(self) -> dict[str, Any]:
        if not self.kib:
            return {"name": self.name}
        half = len(self.t) // 2
        return {
            "name": self.name,
            "start_mib": round(self.kib[0] / 1024, 1),
            "peak_mib": round(max(self.kib) / 1024, 1),
            "end_mib": round(self.kib[-1] / 1024, 1),
            "slope_first_half_mib_per_h": round(
                slope_mib_per_hour(self.t[: half + 1], self.kib[: half + 1]), 1
            ),
            "slope_second_half_mib_per_h": round(
                slope_mib_per_hour(self.t[half:], self.kib[half:]), 1
            ),
            "samples": len(self.kib),
        }


def stage_config(cfg: MeshwatchConfig, hook: str, path: Path, warmup: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": cfg.kafka.bootstrap_servers,
                    "session_timeout_ms": 6000,
                    "heartbeat_interval_ms": 1000,
                },
                "topics": {"prefix": cfg.topics.prefix},
                "observe": {"enabled": False},
                "log_level": "WARNING",
                "detector": {"warmup_windows": warmup},
                "alerter": {
                    "sinks": [{"type": "webhook", "name": "hook", "url": hook}],
                    "rate_limits": {"hook": {"per_second": 500, "burst": 100}},
                },
            }
        )
    )
    return path


def committed(admin: KafkaAdminClient, group: str, topic: str) -> int:
    """Records of ``topic`` the group has committed (counted, not end offsets)."""
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except Exception:  # a group that has not joined yet, or a broker hiccup
        return -1
    return sum(max(o.offset, 0) for tp, o in offsets.items() if tp.topic == topic)


def build_windows(args: argparse.Namespace) -> list[list[tuple[bytes, bytes]]]:
    shape = MeshShape(
        routes=args.routes,
        windows=args.distinct_windows,
        routes_per_batch=args.routes_per_batch,
        pods_per_workload=2,
        window_seconds=args.window,
        fault_share=args.fault_share,
        fault_from=args.distinct_windows // 2,
        seed=args.seed,
    )
    per_window = -(-args.routes // args.routes_per_batch)
    records = list(generate_records(shape))
    return [records[i : i + per_window] for i in range(0, len(records), per_window)]


def retime(window: list[tuple[bytes, bytes]], old: float, new: float) -> list[tuple[bytes, bytes]]:
    a = f'"window_end":{old!r}'.encode()
    b = f'"window_end":{new!r}'.encode()
    return [(k, v.replace(a, b)) for k, v in window]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--routes", type=int, default=100_000)
    p.add_argument("--routes-per-batch", type=int, default=100)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--sample-every", type=float, default=30.0)
    p.add_argument("--distinct-windows", type=int, default=6)
    p.add_argument("--fault-share", type=float, default=0.002)
    p.add_argument("--warmup-windows", type=int, default=6)
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--drain-seconds", type=float, default=300.0)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args()

    print(f"# soak: {machine_line()}", flush=True)
    started = time.monotonic()
    windows = build_windows(args)
    per_window = len(windows[0])
    print(
        f"generated {len(windows)} distinct windows of {args.routes:,} routes "
        f"({per_window} messages, {sum(len(v) for _, v in windows[0]) / 1e6:.1f} MB each) "
        f"in {time.monotonic() - started:.0f}s",
        flush=True,
    )
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"meshwatch-soak-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker() as broker, ReceiverThread(WebhookReceiver()) as rx:
        cfg = load_config(
            None,
            {
                "kafka": {"bootstrap_servers": [broker.bootstrap]},
                "topics": {"prefix": f"soak{uuid.uuid4().hex[:6]}."},
            },
        )
        ensure_topics(cfg)
        conf = stage_config(cfg, rx.url, work / "stage.yaml", args.warmup_windows)
        children: dict[str, subprocess.Popen[bytes]] = {}
        logs = {}
        for stage in ("detect", "alert"):
            logs[stage] = (work / f"{stage}.log").open("wb")
            children[stage] = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", stage, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=logs[stage],
            )
        assert broker._proc is not None
        series = [
            Series("detector", children["detect"].pid),
            Series("alerter", children["alert"].pid),
            Series("broker", broker._proc.pid),
        ]
        admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
        producer = make_producer(cfg.kafka, "soak-feeder")
        produced_msgs = 0
        produced_windows = 0
        late_windows = 0
        rows: list[dict[str, Any]] = []
        t_start = time.monotonic()
        t_end = t_start + args.minutes * 60
        next_window = t_start
        next_sample = t_start + args.sample_every  # t=0 would be the interpreter start-up
        last_done = 0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= t_end:
                    break
                if now >= next_sample:
                    elapsed = now - t_start
                    for s in series:
                        s.sample(elapsed)
                    done = committed(admin, "detector", cfg.topics.golden)
                    done = last_done = max(done, last_done)
                    row = {
                        "t_s": round(elapsed),
                        "windows_produced": produced_windows,
                        "windows_processed": round(done / per_window, 2),
                        "lag_windows": round((produced_msgs - done) / per_window, 2),
                        "notifications": len(rx.accepted()),
                        **{f"{s.name}_mib": round(s.kib[-1] / 1024, 1) for s in series if s.kib},
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    next_sample += args.sample_every
                if now >= next_window:
                    i = produced_windows
                    base = windows[i % len(windows)]
                    old = T0 + (i % len(windows) + 1) * args.window
                    new = T0 + (i + 1) * args.window
                    recs = retime(base, old, new)
                    futures = [producer.send(cfg.topics.golden, key=k, value=v) for k, v in recs]
                    producer.flush()
                    for f in futures:
                        f.get(timeout=60)
                    produced_msgs += len(recs)
                    produced_windows += 1
                    next_window += args.window
                    if time.monotonic() > next_window:
                        late_windows += 1
                for child in children.values():
                    if child.poll() is not None:
                        raise RuntimeError(f"a stage exited early with {child.returncode}")
                stop.wait(max(0.0, min(next_window, next_sample, t_end) - time.monotonic()))
            feed_seconds = time.monotonic() - t_start
            drain_started = time.monotonic()
            done = max(committed(admin, "detector", cfg.topics.golden), last_done)
            while done < produced_msgs and time.monotonic() - drain_started < args.drain_seconds:
                stop.wait(2.0)
                done = max(committed(admin, "detector", cfg.topics.golden), done)
            drain = time.monotonic() - drain_started
            for s in series:
                s.sample(time.monotonic() - t_start)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children.values():
                try:
                    child.wait(60)
                except subprocess.TimeoutExpired:
                    child.kill()
            producer.close()
            admin.close()
            for fh in logs.values():
                fh.close()
        result = {
            "routes": args.routes,
            "window_seconds": args.window,
            "minutes": args.minutes,
            "feed_seconds": round(feed_seconds),
            "windows_produced": produced_windows,
            "route_samples_produced": produced_windows * args.routes,
            "windows_fed_late": late_windows,
            "windows_processed_at_feed_end": rows[-1]["windows_processed"] if rows else 0,
            "windows_processed_after_drain": round(done / per_window, 2),
            "drain_seconds": round(drain, 1),
            "achieved_route_samples_per_s": round(done / per_window * args.routes / feed_seconds),
            "notifications": len(rx.accepted()),
            "rejected_notifications": len(rx.rejected()),
            "rss": [s.summary() for s in series],
            "samples": rows,
        }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    for stage in ("detect", "alert"):
        tail = (work / f"{stage}.log").read_text(errors="replace").splitlines()[-5:]
        if tail:
            print(f"--- {stage} log tail ---\n" + "\n".join(tail))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
