"""Pieces the alerter benchmarks share: findings, the alerter as a child process, memory.

The alerter runs as ``meshwatch alert`` in its own process, as it is
deployed, so the load generator and the receivers in the benchmark process
do not share its interpreter lock; both sides stamp times with the same
wall clock (``time.time``), so latencies across the two processes are exact.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from common import _REPO  # noqa: F401  (puts the repository on sys.path)

from pipeline.config import MeshwatchConfig
from pipeline.schema import Finding, finding_id

T0 = 1_700_000_000.0


def make_finding(
    namespace: str,
    workload: str,
    route: str,
    *,
    status: str = "firing",
    window_end: float,
    started_at: float,
    severity: str = "warning",
    kind: str = "latency",
) -> Finding:
    route_key = f"{namespace}/deploy/{workload}/inbound/{route}"
    return Finding(
        id=finding_id(route_key, kind, window_end, status),
        route_key=route_key,
        namespace=namespace,
        workload_kind="deploy",
        workload=workload,
        direction="inbound",
        route=route,
        kind=kind,
        status=status,
        severity=severity,
        score=0.99,
        observed=812.0 if status == "firing" else 60.0,
        expected_low=40.0,
        expected_high=95.0,
        unit="ms",
        window_end=window_end,
        started_at=started_at,
        model="bench",
        model_version="1",
        explanation="synthetic finding for the alerter benchmark",
    )


def write_config(path: Path, cfg: MeshwatchConfig, alerter: dict[str, Any]) -> Path:
    """The child's config: the benchmark's broker and topics, defaults otherwise."""
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": cfg.kafka.bootstrap_servers,
                    "session_timeout_ms": cfg.kafka.session_timeout_ms,
                    "heartbeat_interval_ms": cfg.kafka.heartbeat_interval_ms,
                    "poll_timeout_ms": cfg.kafka.poll_timeout_ms,
                    "extra": dict(cfg.kafka.extra),
                },
                "topics": {"prefix": cfg.topics.prefix},
                "observe": {"enabled": False},
                "log_level": "INFO",
                "alerter": alerter,
            }
        )
    )
    return path


@contextlib.contextmanager
def alerter_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "alert", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def rss_of(pid: int) -> float:
    """Resident memory of a process in MiB (nan if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def pace(start: float, sent: int, rate: float) -> None:
    """Hold the load generator to ``rate`` messages per second."""
    ahead = start + sent / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
