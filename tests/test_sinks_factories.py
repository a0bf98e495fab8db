"""Builders shared by the sink, receiver and delivery tests (no tests of its own).

Values are the ones the reference examples use (p99 812 ms against a
40–95 ms band), so an assertion reads like the message a person would see.
"""

from __future__ import annotations

import socket
from typing import Any

from pipeline.alert.message import Action, Notification
from pipeline.schema import Finding, Incident, finding_id, fingerprint

ROUTE_KEY = "shop/deploy/web/inbound/GET /api/users"
STARTED = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
WINDOW_END = STARTED + 600.0


def make_finding(**overrides: Any) -> Finding:
    fields: dict[str, Any] = {
        "route_key": ROUTE_KEY,
        "namespace": "shop",
        "workload_kind": "deploy",
        "workload": "web",
        "direction": "inbound",
        "route": "GET /api/users",
        "kind": "latency",
        "status": "firing",
        "severity": "critical",
        "score": 0.99,
        "observed": 812.0,
        "expected_low": 40.0,
        "expected_high": 95.0,
        "unit": "ms",
        "window_end": WINDOW_END,
        "started_at": STARTED,
        "model": "baseline",
        "model_version": "3",
        "explanation": "p99 has been far above its usual band for 10 minutes.",
        "suspect_pod": "web-7d9f-abc",
    }
    fields.update(overrides)
    fields.setdefault(
        "id",
        finding_id(fields["route_key"], fields["kind"], fields["window_end"], fields["status"]),
    )
    return Finding(**fields)


def make_notification(
    action: Action = "firing",
    *,
    test: bool = False,
    links: dict[str, str] | None = None,
    **finding_overrides: Any,
) -> Notification:
    if action == "resolved":
        finding_overrides.setdefault("status", "resolved")
        finding_overrides.setdefault("observed", 60.0)
    finding = make_finding(**finding_overrides)
    incident = Incident(
        fingerprint=fingerprint(finding.route_key, finding.kind),
        route_key=finding.route_key,
        kind=finding.kind,
        status="resolved" if action == "resolved" else "firing",
        severity=finding.severity,
        first_seen=STARTED,
        last_seen=finding.window_end,
        count=3,
        last_finding=finding,
    )
    return Notification(incident, finding, action, test=test, links=dict(links or {}))


def unused_port() -> int:
    """A port nothing listens on (bound, read, closed), for connection-refused cases."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
