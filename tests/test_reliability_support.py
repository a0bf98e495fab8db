"""Pieces shared by the reliability and fuzz tests and ``bench/reliability.py`` (no tests here).

- valid messages of every type, for the fuzzers to damage;
- a deterministic golden stream (steady routes, then a fault on some of
  them) whose findings are known in advance;
- ``meshwatch <stage>`` as a child process that can be SIGKILLed and
  restarted, with its ``/readyz`` readable from outside;
- :class:`DurableBroker`: Tansu on S3 storage served by a local moto
  server, so the broker can be stopped and started again on the same port
  without losing topics, records or committed offsets (the default
  in-memory Tansu forgets everything when it stops).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.kafka.embedded import BrokerError, free_port, tansu_binary, wait_for_port
from pipeline.schema import (
    LINKERD_LATENCY_BOUNDS_MS,
    DeadLetter,
    EvidencePoint,
    Finding,
    GoldenBatch,
    GoldenSample,
    Incident,
    PodSlice,
    finding_id,
    fingerprint,
)

T0 = 1_700_000_000.0

# -- valid messages -----------------------------------------------------------------


def valid_golden_batch() -> GoldenBatch:
    return golden_batch("shop", "web", 3, T0 + 10, 10.0, faulty=set(), rng_seed=1)


def valid_finding() -> Finding:
    rk = "shop/deploy/web/inbound/GET /api/users"
    return Finding(
        id=finding_id(rk, "latency", T0 + 10, "firing"),
        route_key=rk,
        namespace="shop",
        workload_kind="deploy",
        workload="web",
        direction="inbound",
        route="GET /api/users",
        kind="latency",
        status="firing",
        severity="critical",
        score=0.99,
        observed=812.0,
        expected_low=40.0,
        expected_high=95.0,
        unit="ms",
        window_end=T0 + 10,
        started_at=T0,
        evidence=(EvidencePoint(t=T0, value=50.0), EvidencePoint(t=T0 + 10, value=None)),
        suspect_pod="web-1",
        model="baseline",
        model_version="1",
        explanation="p99 far above its band",
    )


def valid_incident() -> Incident:
    f = valid_finding()
    return Incident(
        fingerprint=fingerprint(f.route_key, f.kind),
        route_key=f.route_key,
        kind=f.kind,
        status="firing",
        severity="critical",
        first_seen=T0,
        last_seen=T0 + 10,
        count=1,
        last_finding=f,
        finding_ids=(f.id,),
        notified={"hook": "firing"},
        sink_refs={"hook": {"ts": "1.2"}},
        notified_at={"hook": T0 + 11},
    )


def valid_dead_letter() -> DeadLetter:
    return DeadLetter(
        stage="detector",
        reason="invalid message",
        error="samples: field required",
        source_topic="golden",
        source_partition=0,
        source_offset=3,
        key="k",
        value="{}",
        failed_at=T0,
    )


# -- a golden stream with known findings ---------------------------------------------------

N_BUCKETS = len(LINKERD_LATENCY_BOUNDS_MS)


def golden_batch(
    namespace: str,
    workload: str,
    routes: int,
    window_end: float,
    window_seconds: float,
    *,
    faulty: set[int],
    rng_seed: int,
) -> GoldenBatch:
    """One workload's window: steady traffic, or 10× latency and 40 % errors on ``faulty``."""
    rng = np.random.default_rng(rng_seed)
    samples = []
    for r in range(routes):
        bad = r in faulty
        req = int(rng.poisson(400))
        fail = int(rng.binomial(req, 0.4 if bad else 0.002))
        centre = 15 if bad else 5  # bucket index: 1000 ms vs 10 ms
        buckets = np.zeros(N_BUCKETS, dtype=np.int64)
        idx = np.clip(rng.normal(centre, 0.7, req).round().astype(int), 0, N_BUCKETS - 1)
        np.add.at(buckets, idx, 1)
        bounds = np.asarray((*LINKERD_LATENCY_BOUNDS_MS[:-1], LINKERD_LATENCY_BOUNDS_MS[-2]))
        lat_sum = float((buckets * bounds).sum()) * 0.7
        samples.append(
            GoldenSample(
                window_end=window_end,
                window_seconds=window_seconds,
                namespace=namespace,
                workload_kind="deploy",
                workload=workload,
                direction="inbound",
                route=f"GET /r{r:03d}",
                requests=req,
                successes=req - fail,
                failures=fail,
                status_classes={"2xx": req - fail, "5xx": fail} if fail else {"2xx": req},
                latency_buckets=tuple(int(b) for b in buckets),
                latency_sum_ms=lat_sum,
                mean_ms=lat_sum / max(req, 1),
                mtls_requests=req,
                tcp_open=2,
                tcp_close=2,
                pods=(PodSlice(pod=f"{workload}-1", requests=req, failures=fail),),
            )
        )
    return GoldenBatch(
        workload_key=f"{namespace}/deploy/{workload}",
        window_end=window_end,
        window_seconds=window_seconds,
        pods_up=(f"{workload}-1",),
        samples=tuple(samples),
    )


def golden_stream(
    workloads: int,
    routes: int,
    windows: int,
    *,
    fault_from: int,
    fault_until: int,
    faulty_routes: int,
    window_seconds: float = 10.0,
) -> list[GoldenBatch]:
    """Window by window, every workload; the first ``faulty_routes`` routes of each go bad."""
    out = []
    for w in range(windows):
        end = T0 + (w + 1) * window_seconds
        bad = set(range(faulty_routes)) if fault_from <= w < fault_until else set()
        for k in range(workloads):
            out.append(
                golden_batch(
                    "shop", f"svc{k:02d}", routes, end, window_seconds, faulty=bad,
                    rng_seed=w * 1000 + k,
                )
            )  # fmt: skip
    return out


# -- child stages -----------------------------------------------------------------------


def write_stage_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def kafka_section(bootstrap: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "poll_timeout_ms": 100,
        "linger_ms": 0,
        **extra,
    }


class StageProcess:
    """``meshwatch <stage> -c CONFIG`` as a child, killed and restarted on demand."""

    def __init__(
        self,
        stage: str,
        config: Path,
        log: Path,
        *,
        metrics_port: int | None = None,
        group: str | None = None,
    ):
        self.stage = stage
        self.group = group
        self.config = config
        self.log = log
        self.metrics_port = metrics_port
        self.kills: list[float] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StageProcess:
        cmd = [sys.executable, "-m", "pipeline.cli", self.stage, "-c", str(self.config)]
        if self.metrics_port is not None:
            cmd += ["--metrics-address", f"127.0.0.1:{self.metrics_port}"]
        if self.group is not None:  # a group of its own: nothing left from other tests joins
            cmd += ["--group", self.group]
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.kills.append(time.time())
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def probe(self, path: str = "/readyz") -> tuple[int, str]:
        """(HTTP status, body) of the stage's probe; (0, why) when it does not answer."""
        assert self.metrics_port is not None
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def fresh_group(stage: str) -> str:
    return f"{stage}-{uuid.uuid4().hex[:8]}"


def poll_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    """Wait for a condition in another process (nothing to subscribe to there)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        pause.wait(step)


# -- a broker that survives its own restart -------------------------------------------------


class DurableBroker:
    """Tansu with ``s3://`` storage on a local moto server (a child process).

    ``stop()`` ends only Tansu; ``start()`` brings it back on the same port
    over the same bucket, so clients see an outage, not a new cluster.
    """

    BUCKET = "tansu"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.s3_port = free_port(host)
        self._s3: subprocess.Popen[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-s3-", suffix=".log")  # noqa: SIM115
        self.restarts = 0

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AWS_ENDPOINT": f"http://{self.host}:{self.s3_port}",
            "AWS_ACCESS_KEY_ID": "meshwatch",
            "AWS_SECRET_ACCESS_KEY": "meshwatch",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "RUST_LOG": os.environ.get("TANSU_LOG", "warn"),
        }

    def _start_s3(self) -> None:
        self._s3 = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.s3_port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.host, self.s3_port, 30, self._s3)
        req = urllib.request.Request(
            f"http://{self.host}:{self.s3_port}/{self.BUCKET}", method="PUT", data=b""
        )
        with urllib.request.urlopen(req, timeout=10):
            pass

    def start(self) -> DurableBroker:
        if self._s3 is None:
            self._start_s3()
        if self._proc is not None and self._proc.poll() is None:
            return self
        url = f"tcp://{self.host}:{self.port}"
        self._proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                f"s3://{self.BUCKET}/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )
        try:
            wait_for_port(self.host, self.port, 30, self._proc)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Tansu only (the stored data stays on the S3 server)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def restart_after(self, outage: float) -> None:
        self.stop()
        pause = threading.Event()
        pause.wait(outage)  # the outage itself is what is being tested
        self.restarts += 1
        self.start()

    def refuses_connections(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) != 0

    def close(self) -> None:
        self.stop()
        s3, self._s3 = self._s3, None
        if s3 is not None and s3.poll() is None:
            s3.send_signal(signal.SIGTERM)
            try:
                s3.wait(10)
            except subprocess.TimeoutExpired:
                s3.kill()
                s3.wait(5)
        self._log.close()

    def __enter__(self) -> DurableBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def durable_broker() -> Iterator[DurableBroker]:
    with DurableBroker() as b:
        yield b


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
