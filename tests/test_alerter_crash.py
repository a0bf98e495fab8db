"""``meshwatch alert`` killed with SIGKILL at random moments while findings flow.

The receiver counts notifications per notification id. What must hold:

- nothing is lost: every notice the findings call for arrives;
- nothing arrives twice, except a notice the receiver had answered in the
  last instant before a kill (the HTTP 200 was on its way back, or its
  outbox tombstone was): that window cannot be closed from our side of an
  HTTP call, and the copy carries the same id for targets that deduplicate.
  So every duplicate must have its first copy shortly before some kill, and
  there can be at most one per kill (one notice in flight per destination).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.config import MeshwatchConfig
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import Finding, encode, fingerprint
from tests.kafka_helpers import produce
from tests.test_alerter_support import NID, T0, finding, resolved

pytestmark = pytest.mark.integration

ROUTES = [f"GET /r{i:03d}" for i in range(60)]
#: How long before a kill the first copy of a duplicate may have arrived.
IN_FLIGHT_WINDOW = 1.0


def expected_ids(action: str) -> set[str]:
    out = set()
    for r in ROUTES:
        fp = fingerprint(finding(r).route_key, "latency")
        out.add(f"{fp}:{action}:{T0:.3f}")
    return out


class Alerter:
    """``meshwatch alert`` as a child process, killed and restarted on demand."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        # A group of its own: the session's broker is shared by every test, and
        # members left in a common group by earlier tests delay the join.
        self.group = f"alerter-{uuid.uuid4().hex[:8]}"
        self.kills: list[float] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline.cli",
                    "alert",
                    "-c",
                    str(self.config),
                    "--group",
                    self.group,
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.kills.append(time.time())
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def stream(
    cfg: MeshwatchConfig, findings: list[Finding], alerter: Alerter, rng: random.Random, kills: int
) -> None:
    """Produce the findings a few at a time, killing and restarting the alerter between."""
    kill_after = set(rng.sample(range(2, len(findings) - 1), kills))
    pace = threading.Event()  # never set: a pause between sends, not a wait for an event
    for i, f in enumerate(findings):
        produce(cfg, cfg.topics.findings, [(f.workload_key.encode(), encode(f))])
        pace.wait(rng.uniform(0.0, 0.08))
        if i in kill_after:
            alerter.kill()
            alerter.start()


def test_sigkill_at_random_points_loses_nothing_and_duplicates_only_in_flight(
    kafka_cfg: MeshwatchConfig, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("MESHWATCH_CRASH_SEED", "20261127")))
    with ReceiverThread(WebhookReceiver()) as rx:
        config = tmp_path / "alerter.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "kafka": {
                        "bootstrap_servers": kafka_cfg.kafka.bootstrap_servers,
                        "session_timeout_ms": 2000,
                        "heartbeat_interval_ms": 500,
                        "poll_timeout_ms": 100,
                        "linger_ms": 0,
                    },
                    "topics": {"prefix": kafka_cfg.topics.prefix},
                    "observe": {"enabled": False},
                    "log_level": "WARNING",
                    "alerter": {
                        "sinks": [{"type": "webhook", "name": "hook", "url": rx.url}],
                        "grouping": {
                            "group_by": ["..."],
                            "group_wait_seconds": 0,
                            "group_interval_seconds": 0,
                        },
                        "flap_damping_seconds": 0,
                        "rate_limits": {"hook": {"per_second": 200, "burst": 20}},
                        "retry": {"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5},
                    },
                }
            )
        )
        alerter = Alerter(config, tmp_path / "alerter.log")
        alerter.start()
        try:
            firing_ids, resolved_ids = expected_ids("firing"), expected_ids("resolved")

            def seen(want: set[str]) -> bool:
                got = {r.header(NID) for r in rx.accepted()}
                return want <= got

            # phase 1: every route fires; phase 2 (once all were told): every route resolves
            stream(kafka_cfg, [finding(r) for r in ROUTES], alerter, rng, kills=3)
            rx.wait_for(lambda _: seen(firing_ids), timeout=120)
            stream(kafka_cfg, [resolved(r) for r in ROUTES], alerter, rng, kills=3)
            rx.wait_for(lambda _: seen(firing_ids | resolved_ids), timeout=120)
        finally:
            alerter.stop()
        log_tail = (tmp_path / "alerter.log").read_text()[-3000:]

        accepted = rx.accepted()
        got = Counter(r.header(NID) or "" for r in accepted)
        assert set(got) == firing_ids | resolved_ids, log_tail  # none lost, none invented
        dups = {nid: n for nid, n in got.items() if n > 1}
        assert len(dups) <= len(alerter.kills), (dups, alerter.kills)
        for nid in dups:
            first = min(r.at for r in accepted if r.header(NID) == nid)
            assert dups[nid] == 2, (nid, dups[nid])
            assert any(0 <= k - first <= IN_FLIGHT_WINDOW for k in alerter.kills), (
                f"{nid} was sent twice, first at {first}, not just before a kill {alerter.kills}"
            )
        print(
            f"\n{len(alerter.kills)} kills, {len(accepted)} notices for "
            f"{len(got)} ids, {len(dups)} duplicate(s) in flight at a kill"
        )
