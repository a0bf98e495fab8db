"""A real Prometheus server scraping a simulated mesh, for tests and benchmarks.

Runs the ``prometheus`` binary (Debian package ``prometheus``) on a loopback
port with its own storage folder and a generated configuration: one job,
``linkerd-proxy``, with a static target per proxy carrying the labels
linkerd-viz's relabeling gives every proxy series (``namespace``, ``pod``
and the workload kind: ``deployment="web"``). Stopping and starting it again
keeps the storage, like a restarted Prometheus pod with a volume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml

from .mesh import ScrapeTarget

JOB = "linkerd-proxy"


def find_prometheus() -> str | None:
    """The Prometheus binary on PATH or where Debian puts it, or None."""
    found = shutil.which("prometheus")
    if found:
        return found
    return "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def scrape_config(
    targets: Iterable[ScrapeTarget], *, interval: float, job: str = JOB
) -> dict[str, object]:
    """A Prometheus configuration scraping every target with linkerd-viz's labels."""
    groups = []
    for t in targets:
        host = t.url.split("//", 1)[1].split("/", 1)[0]
        labels = {"namespace": t.namespace, "pod": t.pod, t.kind: t.workload}
        groups.append({"targets": [host], "labels": labels})
    ms = max(1, round(interval * 1000))
    return {
        "global": {"scrape_interval": f"{ms}ms", "scrape_timeout": f"{ms}ms"},
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": groups}],
    }


class PrometheusError(RuntimeError):
    pass


class LocalPrometheus:
    """One Prometheus process; ``start``/``stop`` may alternate (storage is kept)."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        binary: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        scrape_interval: float = 1.0,
    ) -> None:
        found = binary or find_prometheus()
        if found is None:
            raise PrometheusError("no prometheus binary (Debian package 'prometheus')")
        self.binary = found
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.scrape_interval = scrape_interval
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.storage = self.workdir / "data"
        self._targets: list[ScrapeTarget] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._write()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write(self) -> None:
        cfg = scrape_config(self._targets, interval=self.scrape_interval)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp.replace(self.config_path)

    def set_targets(self, targets: Sequence[ScrapeTarget], timeout: float = 30.0) -> None:
        """Scrape exactly ``targets`` from now on (configuration reload)."""
        self._targets = list(targets)
        self._write()
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)
            self.wait_targets(len(self._targets), timeout)

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address={self.host}:{self.port}",
            "--storage.tsdb.retention.time=2h",
            "--log.level=warn",
        ]
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Poll ``/-/ready`` (an external process: polling is the only way to know)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise PrometheusError(f"prometheus exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/-/ready").status_code == 200:
                        return
                time.sleep(0.05)
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log_tail()}")

    def wait_targets(self, n: int, timeout: float) -> None:
        """Until the active targets number ``n`` (a reload is applied asynchronously)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    r = client.get(f"{self.url}/api/v1/targets", params={"state": "active"})
                    if len(r.json()["data"]["activeTargets"]) == n:
                        return
                time.sleep(0.1)
        raise PrometheusError(f"prometheus did not take {n} targets in {timeout}s")

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10.0)
        r.raise_for_status()
        result = r.json()["data"]["result"]
        assert isinstance(result, list)
        return result

    def oldest_last_scrape(self, at: float | None = None) -> float | None:
        """The oldest of every target's latest scrape time (``up`` sample) at ``at``."""
        rows = self.query(f'min(timestamp(up{{job="{JOB}"}}))', at)
        if not rows:
            return None
        return float(rows[0]["value"][1])

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
