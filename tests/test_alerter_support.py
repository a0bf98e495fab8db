"""Builders shared by the alerter tests (no tests of its own).

The alerter is driven two ways: directly (``process`` / ``idle`` with a fake
clock, so timers of hours run in milliseconds and nothing sleeps) and as a
real stage (``StageRunner`` in a thread, or ``meshwatch alert`` in a
subprocess) when what matters is Kafka: commits, restarts, rebalances.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from pipeline.alert.stage import AlerterProcessor
from pipeline.config import MeshwatchConfig, WebhookSink, load_config
from pipeline.receivers.base import Received
from pipeline.schema import Finding
from pipeline.stage.loop import Inbound, StageRunner
from tests.test_sinks_factories import make_finding

T0 = 1_700_000_000.0
NID = "x-meshwatch-notification-id"


class FakeClock:
    """The alerter's clock and sleep: time moves only when the test (or a wait) says so."""

    def __init__(self, start: float = T0 + 10_000) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


def finding(
    route: str = "GET /a", workload: str = "web", namespace: str = "shop", **kw: Any
) -> Finding:
    kw.setdefault("window_end", T0 + 10)
    kw.setdefault("started_at", T0)
    return make_finding(
        route_key=f"{namespace}/deploy/{workload}/inbound/{route}",
        namespace=namespace,
        workload=workload,
        route=route,
        **kw,
    )


def resolved(route: str = "GET /a", **kw: Any) -> Finding:
    kw.setdefault("window_end", T0 + 20)
    return finding(route, status="resolved", observed=60.0, **kw)


def inbound(findings: Iterable[Finding], partition: int = 0) -> list[Inbound[Any]]:
    return [Inbound("findings", partition, i, None, f, 0) for i, f in enumerate(findings)]


def configure(
    base: MeshwatchConfig,
    sinks: Sequence[dict[str, Any]],
    **alerter: Any,
) -> MeshwatchConfig:
    """``base`` (the test's broker and topics) with these sinks and alerter settings.

    Retries are quick (backoff from 10 ms), so a test that exercises them
    waits for outcomes, not for policy.
    """
    data = base.model_dump(mode="json", by_alias=True)
    for secret in ("sasl_plain_password", "ssl_password"):
        data["kafka"].pop(secret, None)
    data["observe"] = {**data.get("observe", {}), "enabled": False}
    data["alerter"] = {
        "sinks": list(sinks),
        "retry": {
            "max_attempts": 2,
            "initial_backoff_seconds": 0.01,
            "max_backoff_seconds": 0.2,
            "timeout_seconds": 5,
        },
        **alerter,
    }
    return load_config(None, data)


def webhook(name: str, url: str) -> dict[str, Any]:
    return WebhookSink(name=name, url=url).model_dump(mode="json")


def ids(records: Iterable[Received]) -> list[str]:
    return [r.header(NID) or "" for r in records]


def counts(records: Iterable[Received]) -> Counter[str]:
    return Counter(ids(records))


def described_routes(record: Received) -> list[str]:
    """Routes of a grouped webhook notification, one alert each, in order ([] if single)."""
    alerts = record.payload["alerts"]
    return [a["labels"]["route"] for a in alerts] if len(alerts) > 1 else []


class RunningAlerter:
    """A real alerter stage in a thread; ``crash`` leaves it as a SIGKILL would."""

    def __init__(self, cfg: MeshwatchConfig, group: str = "alerter", **kw: Any) -> None:
        self.processor = AlerterProcessor(cfg, **kw)
        self.runner = StageRunner(cfg, self.processor, cfg.topics.findings, group)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:  # a simulated crash ends the thread here
            self.error = exc

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(20)
        self.processor.close()

    def wait_dead(self) -> None:
        self.thread.join(20)
        assert not self.thread.is_alive()
        p = self.processor
        if p._journal is not None:  # what was not acknowledged by now is lost, as in a crash
            p._journal.close(timeout=0)
            p._journal = None
        if p._silence_store is not None:
            p._silence_store.close()
        p._futures.clear()
