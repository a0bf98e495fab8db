"""The Alertmanager API v2 sink against a real Alertmanager, and its payload rules.

Alertmanager forwards what it receives to our v4 ``WebhookReceiver``, so one
test covers both directions: our alerts are valid input for Alertmanager and
Alertmanager's notifications are valid for our receiver.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from pipeline.alert.delivery import deliver
from pipeline.alert.sinks import AlertmanagerApiSink, RefreshableSink
from pipeline.alert.sinks.alertmanager import ENDS_AFTER_INTERVALS, build_alerts
from pipeline.receivers import Received, validate_alerts
from tests.alertmanager_fixture import RunningAlertmanager, alertmanager  # noqa: F401
from tests.sink_targets import RETRY, RecordingSleep, with_refs
from tests.test_sinks_factories import STARTED, WINDOW_END, make_notification

pytestmark = pytest.mark.integration


def post(sink: AlertmanagerApiSink, *notifications: Any) -> list[Any]:
    async def main() -> list[Any]:
        async with httpx.AsyncClient(timeout=5) as client:
            return [
                await deliver(sink, n, client, RETRY, sleep=RecordingSleep()) for n in notifications
            ]

    return asyncio.run(main())


def ours(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"].get("alertname") == "MeshwatchLatency"]


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def statuses(records: tuple[Received, ...]) -> list[str]:
    return [r.payload["status"] for r in records if r.accepted]


def test_alert_appears_is_forwarded_and_a_resolve_ends_it(
    alertmanager: RunningAlertmanager,  # noqa: F811
) -> None:
    am = alertmanager
    sink = AlertmanagerApiSink("am", am.url)
    n = make_notification(links={"grafana": "https://grafana.example.com/d/x"})
    (outcome,) = post(sink, n)
    assert outcome.delivered, outcome.error
    (alert,) = ours(am.alerts())
    assert alert["status"]["state"] == "active"
    assert alert["labels"]["route_key"] == n.finding.route_key
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"].endswith("(8.5× the upper bound)")
    assert alert["generatorURL"] == "https://grafana.example.com/d/x"
    assert stamp(alert["startsAt"]) == STARTED
    assert stamp(alert["endsAt"]) > time.time() + 60  # alive until the next refreshes

    # Alertmanager groups and forwards it to the webhook receiver (group_wait 1 s).
    (firing,) = am.hook.wait_for_count(1, timeout=15)
    assert firing.valid, firing.reason
    assert firing.payload["status"] == "firing"
    assert firing.payload["alerts"][0]["labels"] == alert["labels"]
    assert firing.header("User-Agent") is not None

    (resolved,) = post(sink, make_notification("resolved"))
    assert resolved.delivered, resolved.error
    assert ours(am.alerts()) == []  # the API lists active alerts only
    records = am.hook.wait_for(lambda rs: "resolved" in statuses(tuple(rs)), timeout=15)
    notice = next(r for r in records if r.accepted and r.payload["status"] == "resolved")
    (gone,) = notice.payload["alerts"]
    assert gone["fingerprint"] == firing.payload["alerts"][0]["fingerprint"]
    assert stamp(gone["endsAt"]) == WINDOW_END
    assert am.hook.rejected() == ()


def test_an_escalation_replaces_the_alert_instead_of_adding_one(
    alertmanager: RunningAlertmanager,  # noqa: F811
) -> None:
    am = alertmanager
    sink = AlertmanagerApiSink("am", am.url)
    (first,) = post(sink, make_notification(severity="warning"))
    assert first.refs == {"severity": "warning"}
    assert [a["labels"]["severity"] for a in ours(am.alerts())] == ["warning"]
    update = with_refs(make_notification("update", severity="critical"), "am", first.refs)
    (second,) = post(sink, update)
    assert second.refs == {"severity": "critical"}
    assert [a["labels"]["severity"] for a in ours(am.alerts())] == ["critical"]


def test_refresh_pushes_ends_at_forward(alertmanager: RunningAlertmanager) -> None:  # noqa: F811
    am = alertmanager
    now = [time.time()]
    sink = AlertmanagerApiSink("am", am.url, resend_interval_seconds=30, clock=lambda: now[0])
    assert isinstance(sink, RefreshableSink)
    post(sink, make_notification())
    (alert,) = ours(am.alerts())
    first_end = stamp(alert["endsAt"])
    assert first_end == pytest.approx(now[0] + ENDS_AFTER_INTERVALS * 30, abs=0.01)

    now[0] += 45

    async def refresh() -> Any:
        async with httpx.AsyncClient(timeout=5) as client:
            return await sink.refresh(
                [make_notification(), make_notification("resolved", route="GET /other")], client
            )

    response = asyncio.run(refresh())
    assert response.detail == "1 alert(s)"  # the resolved one is not re-posted
    (alert,) = ours(am.alerts())
    assert stamp(alert["endsAt"]) == pytest.approx(first_end + 45, abs=0.01)
    assert stamp(alert["startsAt"]) == STARTED


def test_build_alerts_rules() -> None:
    now = 1_800_000_000.0
    (firing,) = build_alerts(make_notification(), now=now, resend_interval=60)
    assert validate_alerts([firing]) == []
    assert "generatorURL" not in firing  # no link: left out rather than empty
    assert stamp(firing["endsAt"]) == now + 240
    resolved = build_alerts(make_notification("resolved"), now=now, resend_interval=60)
    assert validate_alerts(resolved) == []
    assert stamp(resolved[0]["endsAt"]) == WINDOW_END
    # A resolve whose window lies in the future (clock skew) still ends now.
    skewed = build_alerts(make_notification("resolved"), now=WINDOW_END - 5, resend_interval=60)
    assert stamp(skewed[0]["endsAt"]) == WINDOW_END - 5
    escalated = with_refs(
        make_notification("update", severity="critical"), "am", {"severity": "warning"}
    )
    current, stale = build_alerts(escalated, now=now, resend_interval=60, sink_name="am")
    assert (current["labels"]["severity"], stale["labels"]["severity"]) == ("critical", "warning")
    assert stamp(stale["endsAt"]) < now < stamp(current["endsAt"])
    # Nothing posted with another severity: nothing else to end.
    assert len(build_alerts(make_notification("update"), now=now, resend_interval=60)) == 1
