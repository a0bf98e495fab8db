"""``meshwatch demo``: the whole pipeline on one machine, with one command.

Everything is real except the mesh: a Tansu broker speaking the Kafka
protocol, a simulated Linkerd data plane serving proxy ``/metrics`` over
HTTP, the collector scraping it, the detector and alerter as consumer-group
stages on their own threads, and local HTTP receivers that check each alert
against the Alertmanager-webhook and Slack formats. Windows are short (1 s)
so the baselines warm in under half a minute.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.alert.stage import AlerterProcessor
from pipeline.collect.collector import Collector
from pipeline.collect.targets import Target
from pipeline.config import MeshwatchConfig, SlackSink, WebhookSink, load_config
from pipeline.demo.display import Dashboard, summary_table
from pipeline.detect.stage import DetectorProcessor
from pipeline.kafka.clients import make_producer
from pipeline.kafka.embedded import EmbeddedBroker
from pipeline.kafka.topics import ensure_topics
from pipeline.receivers import SlackReceiver, WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.simulate import MeshSpec, SimulatedMesh, default_demo_mesh
from pipeline.stage.loop import StageRunner

#: Windows the detector learns before it judges, in the demo.
DEMO_WARMUP_WINDOWS = 20
#: Exit code when the injected fault was never alerted although it had time.
EXIT_MISSED = 3


@dataclass
class FaultWindow:
    fault_id: str
    kind: str
    start: float
    end: float
    route_keys: list[str] = field(default_factory=list)


def demo_config(bootstrap: str, window: float, webhook_url: str, slack_url: str) -> MeshwatchConfig:
    return load_config(
        None,
        {
            "cluster": "demo",
            "kafka": {
                "bootstrap_servers": [bootstrap],
                # Tansu joins a group in about half the session timeout.
                "session_timeout_ms": 3000,
                "heartbeat_interval_ms": 1000,
                "poll_timeout_ms": 200,
                "linger_ms": 5,
            },
            "window": {"seconds": window, "scrape_timeout_seconds": 0.8 * window},
            "detector": {"warmup_windows": DEMO_WARMUP_WINDOWS},
            "alerter": {
                "sinks": [
                    WebhookSink(name="webhook", url=webhook_url).model_dump(),
                    SlackSink(name="slack", webhook_url=slack_url).model_dump(),
                ],
                "retry": {"max_attempts": 3, "initial_backoff_seconds": 0.2},
                "links": {
                    "linkerd-viz": "http://localhost:50750/namespaces/{namespace}/"
                    "deployments/{workload}",
                },
            },
        },
    )


def demo_mesh(traffic_factor: float = 5.0) -> MeshSpec:
    """The default demo mesh, busier: 1 s windows need more requests per route."""
    spec = default_demo_mesh()
    workloads = [
        w.model_copy(update={"base_rps": w.base_rps * traffic_factor}) for w in spec.workloads
    ]
    return spec.model_copy(update={"workloads": workloads})


class _MeshAndCollector:
    """The simulated mesh and the collector, sharing one asyncio loop thread."""

    def __init__(
        self, cfg: MeshwatchConfig, scenario: Path | str, labels: Path, warmup: float
    ) -> None:
        self.cfg = cfg
        self.scenario = scenario
        self.labels = labels
        self.warmup = warmup
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.mesh: SimulatedMesh | None = None
        self.collector: Collector | None = None
        self._stop: asyncio.Event | None = None
        self._producer = make_producer(cfg.kafka, "collector")
        self.thread = threading.Thread(target=self._run, name="mesh+collector", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced by the dashboard and the exit code
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        mesh = SimulatedMesh(
            demo_mesh(),
            scenario=self.scenario,
            labels_path=self.labels,
            warmup_seconds=self.warmup,
            day_seconds=900.0,
            seed=int(time.time()) % 10_000,
        )
        async with mesh:
            self.mesh = mesh
            targets = [Target(t.url, t.namespace, t.workload, t.kind, t.pod) for t in mesh.targets]
            self.collector = Collector(self.cfg, lambda: targets, self._producer)
            self.ready.set()
            await self.collector.run(self._stop)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=15)
        self._producer.flush(timeout=5)
        self._producer.close(timeout=5)

    def faults(self) -> list[FaultWindow]:
        if self.mesh is None:
            return []
        return [
            FaultWindow(s.fault_id, s.spec.kind, s.start, s.end, s.effect.route_keys())
            for s in self.mesh.schedule.items
        ]


def _stage(
    cfg: MeshwatchConfig, processor: Any, topic: str, group: str
) -> tuple[StageRunner, threading.Thread]:
    runner = StageRunner(cfg, processor, topic, group)
    thread = threading.Thread(target=runner.run, name=group, daemon=True)
    return runner, thread


def run_demo(
    *,
    duration: float | None,
    scenario: Path | None,
    window_seconds: float,
    out_dir: Path,
    live: bool,
    console: Console | None = None,
) -> int:
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = out_dir / "ground-truth.jsonl"
    labels.unlink(missing_ok=True)
    warmup = DEMO_WARMUP_WINDOWS * window_seconds + 5 * window_seconds
    started = time.time()
    stop_reason = "duration reached"
    with (
        EmbeddedBroker() as broker,
        ReceiverThread(WebhookReceiver()) as webhook,
        ReceiverThread(SlackReceiver()) as slack,
    ):
        cfg = demo_config(broker.bootstrap, window_seconds, webhook.url, slack.url)
        ensure_topics(cfg)
        detector = DetectorProcessor(cfg)
        alerter = AlerterProcessor(cfg)
        det_runner, det_thread = _stage(cfg, detector, cfg.topics.golden, "detector")
        al_runner, al_thread = _stage(cfg, alerter, cfg.topics.findings, "alerter")
        mc = _MeshAndCollector(cfg, scenario or "demo", labels, warmup)
        det_thread.start()
        al_thread.start()
        mc.start()
        mc.ready.wait(timeout=60)
        dash = Dashboard(
            started=started,
            broker=broker.bootstrap,
            webhook=webhook,
            slack=slack,
            mesh=mc,
            detector=detector,
            detector_runner=det_runner,
            alerter=alerter,
            warmup=warmup,
            duration=duration,
        )
        try:
            stop_reason = dash.run(console, live=live)
        except KeyboardInterrupt:
            stop_reason = "interrupted (Ctrl-C)"
        finally:
            mc.stop()
            det_runner.stop()
            al_runner.stop()
            det_thread.join(timeout=15)
            al_thread.join(timeout=15)
            alerter.close()
        report = dash.report()
        (out_dir / "alerts.jsonl").write_text(
            "".join(json.dumps(r.payload) + "\n" for r in webhook.accepted())
        )
        (out_dir / "summary.json").write_text(json.dumps(report, indent=2))
    console.print(summary_table(report, stop_reason))
    console.print(f"outputs in {out_dir}/ (ground truth, alerts as received, summary)")
    if mc.error is not None:
        console.print(f"[red]the simulated mesh or collector failed: {mc.error!r}")
        return 1
    return EXIT_MISSED if report["missed"] else 0
