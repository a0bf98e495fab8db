"""A real Prometheus Alertmanager on loopback, for the Alertmanager API sink's tests.

Debian's ``prometheus-alertmanager`` (``.ci/run`` installs it) is started on a
free port with clustering off (``--cluster.listen-address=``), storage in a
temporary folder and a configuration whose only receiver is our v4
``WebhookReceiver``; ``group_wait`` and ``group_interval`` are 1 s so its
notifications come within seconds. Readiness is read from its own log line,
then confirmed once on ``/-/ready``. Stopped by its PID.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipeline.receivers import ReceiverThread, WebhookReceiver
from tests.test_sinks_factories import unused_port

START_TIMEOUT = 20.0

CONFIG = """\
route:
  receiver: meshwatch-hook
  group_by: ['alertname', 'route_key']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: meshwatch-hook
    webhook_configs:
      - url: '{url}'
        send_resolved: true
        max_alerts: 0
"""


@dataclass
class RunningAlertmanager:
    url: str
    hook: ReceiverThread[WebhookReceiver]
    log: Path

    def alerts(self, **filters: str) -> list[dict[str, object]]:
        response = httpx.get(f"{self.url}/api/v2/alerts", params=filters, timeout=5)
        response.raise_for_status()
        data: list[dict[str, object]] = response.json()
        return data


def binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _wait_for_log(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Read the process's log until ``needle`` shows up (a reader thread feeds a queue)."""
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True, name="alertmanager-log").start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"alertmanager not listening after {timeout} s: {seen[-5:]}"
            ) from None
        if line is None:
            raise RuntimeError(f"alertmanager exited ({proc.poll()}): {''.join(seen[-10:])}")
        seen.append(line)
        if needle in line:
            return seen


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[RunningAlertmanager]:
    path = binary()
    if path is None:
        pytest.skip(
            "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)"
        )
    with ReceiverThread(WebhookReceiver()) as hook:
        config = tmp_path / "alertmanager.yml"
        config.write_text(CONFIG.format(url=hook.url))
        port = unused_port()
        log = tmp_path / "alertmanager.log"
        proc = subprocess.Popen(
            [
                path,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=info",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            seen = _wait_for_log(proc, "Listening on", START_TIMEOUT)
            log.write_text("".join(seen))
            url = f"http://127.0.0.1:{port}"
            ready = httpx.get(f"{url}/-/ready", timeout=5)
            assert ready.status_code == 200, ready.text
            yield RunningAlertmanager(url, hook, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
