"""What the demo shows while it runs, and the summary it ends with."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pipeline.receivers.base import Received

if TYPE_CHECKING:
    from pipeline.alert.stage import AlerterProcessor
    from pipeline.demo.run import FaultWindow, _MeshAndCollector
    from pipeline.detect.stage import DetectorProcessor
    from pipeline.receivers.threaded import ReceiverThread
    from pipeline.stage.loop import StageRunner

#: A fault counts as missed when it started this long before the end and
#: nothing about it reached the webhook.
MISS_AFTER_SECONDS = 60.0


def _alert_route(r: Received) -> tuple[str, str]:
    """(status, route_key) of an Alertmanager-v4 webhook request."""
    payload = r.payload if isinstance(r.payload, dict) else {}
    alerts = payload.get("alerts") or [{}]
    labels = alerts[0].get("labels", {})
    return str(payload.get("status", "?")), str(labels.get("route_key", "?"))


def fault_outcome(fault: FaultWindow, received: Iterable[Received]) -> dict[str, Any]:
    """First alert and first resolve on the fault's routes, relative to its start."""
    first_alert = first_resolve = None
    alerted_route = None
    for r in received:
        status, route = _alert_route(r)
        if route not in fault.route_keys or r.at < fault.start:
            continue
        if status == "firing" and first_alert is None:
            first_alert, alerted_route = r.at, route
        elif status == "resolved" and first_alert is not None and first_resolve is None:
            first_resolve = r.at
    return {
        "fault_id": fault.fault_id,
        "kind": fault.kind,
        "route_keys": fault.route_keys,
        "start": fault.start,
        "end": fault.end,
        "alerted_route": alerted_route,
        "seconds_to_alert": None if first_alert is None else round(first_alert - fault.start, 2),
        "seconds_to_resolve_after_end": (
            None if first_resolve is None else round(first_resolve - fault.end, 2)
        ),
    }


class Dashboard:
    def __init__(
        self,
        *,
        started: float,
        broker: str,
        webhook: ReceiverThread[Any],
        slack: ReceiverThread[Any],
        mesh: _MeshAndCollector,
        detector: DetectorProcessor,
        detector_runner: StageRunner,
        alerter: AlerterProcessor,
        warmup: float,
        duration: float | None,
    ) -> None:
        self.started = started
        self.broker = broker
        self.webhook = webhook
        self.slack = slack
        self.mesh = mesh
        self.detector = detector
        self.detector_runner = detector_runner
        self.alerter = alerter
        self.warmup = warmup
        self.duration = duration
        self._printed: set[int] = set()

    # -- live view ----------------------------------------------------------

    def run(self, console: Console, *, live: bool) -> str:
        """Refresh until the duration is up; returns why it stopped."""
        tick = threading.Event()
        end = None if self.duration is None else self.started + self.duration
        if not live:
            return self._run_plain(console, end, tick)
        with Live(self.render(), console=console, refresh_per_second=4, transient=False) as view:
            while end is None or time.time() < end:
                if self.mesh.error is not None:
                    return "the mesh/collector failed"
                tick.wait(0.25)
                view.update(self.render())
        return "duration reached"

    def _run_plain(self, console: Console, end: float | None, tick: threading.Event) -> str:
        last = 0.0
        while end is None or time.time() < end:
            if self.mesh.error is not None:
                return "the mesh/collector failed"
            tick.wait(0.25)
            for r in self.webhook.accepted():
                if r.seq not in self._printed:
                    self._printed.add(r.seq)
                    status, route = _alert_route(r)
                    console.print(f"[{self._t(r.at)}] webhook received {status}: {route}")
            if time.time() - last >= 5:
                last = time.time()
                console.print(f"[{self._t(time.time())}] {self._phase()} | {self._counts()}")
        return "duration reached"

    def _t(self, at: float) -> str:
        return f"{at - self.started:6.1f}s"

    def _phase(self) -> str:
        now = time.time()
        elapsed = now - self.started
        if elapsed < self.warmup:
            return f"learning baselines ({elapsed:.0f}/{self.warmup:.0f} s)"
        for f in self.mesh.faults():
            if now < f.start:
                return f"fault '{f.fault_id}' ({f.kind}) starts in {f.start - now:.0f} s"
            if now < f.end:
                return f"fault '{f.fault_id}' ({f.kind}) ACTIVE for {now - f.start:.0f} s"
        return "faults over: watching the resolve"

    def _counts(self) -> str:
        c = self.mesh.collector
        windows = c.stats.cycles if c else 0
        samples = c.stats.samples if c else 0
        return (
            f"windows {windows}, samples {samples}, judged {self.detector.engine.samples_seen}, "
            f"findings {self.detector.fired} firing / {self.detector.resolved} resolved, "
            f"webhook {len(self.webhook.accepted())}, slack {len(self.slack.accepted())}"
        )

    def render(self) -> Group:
        now = time.time()
        c = self.mesh.collector
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        head.add_row("broker", f"Tansu at {self.broker}")
        mesh = self.mesh.mesh
        if mesh is not None:
            head.add_row(
                "mesh",
                f"{len(mesh.spec.workloads)} workloads, {len(mesh.targets)} proxies, "
                f"Linkerd {mesh.spec.proxy_version} exposition",
            )
        if c is not None and c.stats.last is not None:
            last = c.stats.last
            head.add_row(
                "collector",
                f"{c.stats.cycles} windows, {c.stats.samples} route samples "
                f"(last: {last.up}/{last.targets} proxies up, {last.seconds * 1000:.0f} ms)",
            )
        head.add_row(
            "detector",
            f"{self.detector.engine.samples_seen} samples judged, "
            f"{len(self.detector.engine.detector.keys)} routes, "
            f"{self.detector.fired} firing / {self.detector.resolved} resolved findings",
        )
        head.add_row("phase", self._phase())
        if self.duration:
            bar = ProgressBar(total=self.duration, completed=min(now - self.started, self.duration))
            head.add_row("time", bar)

        alerts = Table(title="alerts as received by the local webhook", expand=True)
        alerts.add_column("t", justify="right")
        alerts.add_column("status")
        alerts.add_column("route")
        alerts.add_column("what")
        for r in list(self.webhook.accepted())[-8:]:
            status, route = _alert_route(r)
            payload = r.payload if isinstance(r.payload, dict) else {}
            ann = (payload.get("alerts") or [{}])[0].get("annotations", {})
            colour = "red" if status == "firing" else "green"
            alerts.add_row(
                self._t(r.at), Text(status, style=colour), route, str(ann.get("summary", ""))
            )
        return Group(Panel(head, title="meshwatch demo", subtitle="Ctrl-C to stop"), alerts)

    # -- summary ------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        c = self.mesh.collector
        received = list(self.webhook.accepted())
        statuses = [_alert_route(r)[0] for r in received]
        faults = [fault_outcome(f, received) for f in self.mesh.faults()]
        now = time.time()
        missed = [
            f
            for f in faults
            if f["seconds_to_alert"] is None and f["start"] <= now - MISS_AFTER_SECONDS
        ]
        return {
            "seconds": round(now - self.started, 1),
            "windows": c.stats.cycles if c else 0,
            "route_samples": c.stats.samples if c else 0,
            "golden_batches": c.stats.batches if c else 0,
            "samples_judged": self.detector.engine.samples_seen,
            "routes": len(self.detector.engine.detector.keys),
            "findings_firing": self.detector.fired,
            "findings_resolved": self.detector.resolved,
            "webhook_firing": statuses.count("firing"),
            "webhook_resolved": statuses.count("resolved"),
            "webhook_rejected": len(self.webhook.rejected()),
            "slack_messages": len(self.slack.accepted()),
            "dead_lettered": self.detector_runner.stats.dead_lettered,
            "faults": faults,
            "missed": bool(missed),
        }


def summary_table(report: dict[str, Any], stop_reason: str) -> Table:
    t = Table(title=f"meshwatch demo summary ({stop_reason}, {report['seconds']} s)")
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [
        ("windows collected", report["windows"]),
        ("route samples produced", report["route_samples"]),
        ("route samples judged by the detector", report["samples_judged"]),
        ("routes tracked", report["routes"]),
        (
            "findings (firing / resolved)",
            f"{report['findings_firing']} / {report['findings_resolved']}",
        ),
        (
            "webhook alerts (firing / resolved)",
            f"{report['webhook_firing']} / {report['webhook_resolved']}",
        ),
        ("webhook requests rejected as malformed", report["webhook_rejected"]),
        ("slack messages", report["slack_messages"]),
    ]
    for name, value in rows:
        t.add_row(name, str(value))
    for f in report["faults"]:
        alert = f["seconds_to_alert"]
        resolve = f["seconds_to_resolve_after_end"]
        t.add_row(
            f"fault '{f['fault_id']}' ({f['kind']}): fault start → alert",
            "not alerted" if alert is None else f"{alert:.1f} s",
        )
        t.add_row(
            f"fault '{f['fault_id']}': fault end → resolve",
            "not resolved" if resolve is None else f"{resolve:.1f} s",
        )
    return t


def _pair(report: dict[str, Any], prefix: str) -> str:
    return f"{report[prefix + '_firing']} / {report[prefix + '_resolved']}"
