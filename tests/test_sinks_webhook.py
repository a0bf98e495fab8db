"""The Alertmanager-v4 webhook sink, checked by the v4 receiver over a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from pipeline.alert.message import Notification
from pipeline.alert.sinks import AlertmanagerWebhookSink, PermanentDeliveryError, build_sink
from pipeline.alert.sinks.webhook import ZERO_TIME, build_payload, rfc3339
from pipeline.config import WebhookSink
from pipeline.receivers import Received, WebhookReceiver, parse_rfc3339, validate_v4
from tests.test_sinks_factories import STARTED, WINDOW_END, make_notification


def post_all(*notifications: Notification, token: str | None = None) -> list[Received]:
    async def main() -> list[Received]:
        async with WebhookReceiver() as rx, httpx.AsyncClient(timeout=5) as client:
            sink = AlertmanagerWebhookSink("team-hook", rx.url, bearer_token=token)
            for n in notifications:
                await sink.send(n, client)
            return list(await rx.wait_for_count(len(notifications)))

    return asyncio.run(main())


def only_alert(payload: dict[str, Any]) -> dict[str, Any]:
    assert len(payload["alerts"]) == 1
    alert: dict[str, Any] = payload["alerts"][0]
    return alert


def test_firing_payload_is_valid_v4_with_route_labels() -> None:
    n = make_notification(links={"grafana": "https://grafana/x", "runbook": "https://wiki/rb"})
    (req,) = post_all(n)
    assert req.accepted, req.reason
    body = req.payload
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "team-hook"
    assert body["truncatedAlerts"] == 0
    alert = only_alert(body)
    assert alert["labels"] == {
        "alertname": "MeshwatchLatency",
        "namespace": "shop",
        "workload": "web",
        "workload_kind": "deploy",
        "direction": "inbound",
        "route": "GET /api/users",
        "kind": "latency",
        "severity": "critical",
        "route_key": "shop/deploy/web/inbound/GET /api/users",
    }
    assert body["commonLabels"] == alert["labels"]
    assert body["groupLabels"] == {
        "alertname": "MeshwatchLatency",
        "route_key": "shop/deploy/web/inbound/GET /api/users",
    }
    assert body["groupKey"] == (
        '{}:{alertname="MeshwatchLatency", route_key="shop/deploy/web/inbound/GET /api/users"}'
    )
    ann = alert["annotations"]
    assert ann["summary"].endswith("p99 812 ms, expected 40–95 ms (8.5× the upper bound)")
    assert ann["observed"] == "812.0"
    assert (ann["expected_low"], ann["expected_high"]) == ("40.0", "95.0")
    assert ann["explanation"] == n.finding.explanation
    assert ann["suspect_pod"] == "web-7d9f-abc"
    assert (ann["grafana_url"], ann["runbook_url"]) == ("https://grafana/x", "https://wiki/rb")
    assert "since 2023-11-14 22:13 UTC (10 min)" in ann["description"]
    assert alert["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert alert["endsAt"] == ZERO_TIME
    assert alert["generatorURL"] == "https://grafana/x"
    assert alert["fingerprint"] == n.fingerprint[:16]


def test_headers_carry_notification_id_and_bearer_token() -> None:
    n = make_notification()
    (req,) = post_all(n, token="s3cret-token")
    assert req.header("Authorization") == "Bearer s3cret-token"
    assert req.header("X-Meshwatch-Notification-Id") == n.notification_id
    assert req.header("Content-Type") == "application/json"
    assert (req.header("User-Agent") or "").startswith("meshwatch/")


def test_resolve_keeps_fingerprint_and_start_and_sets_end() -> None:
    firing, resolved = post_all(make_notification(), make_notification("resolved"))
    assert resolved.accepted, resolved.reason
    a, b = only_alert(firing.payload), only_alert(resolved.payload)
    assert resolved.payload["status"] == b["status"] == "resolved"
    assert a["fingerprint"] == b["fingerprint"]
    assert a["labels"] == b["labels"]
    assert a["startsAt"] == b["startsAt"] == rfc3339(STARTED)
    assert b["endsAt"] == rfc3339(WINDOW_END) == "2023-11-14T22:23:20.000Z"
    ends = parse_rfc3339(b["endsAt"])
    starts = parse_rfc3339(b["startsAt"])
    assert ends is not None
    assert starts is not None
    assert ends > starts
    assert firing.header("X-Meshwatch-Notification-Id") != resolved.header(
        "X-Meshwatch-Notification-Id"
    )


def test_update_is_still_firing() -> None:
    (req,) = post_all(make_notification("update"))
    assert req.accepted, req.reason
    assert req.payload["status"] == "firing"
    assert only_alert(req.payload)["endsAt"] == ZERO_TIME


def test_test_notification_is_marked_and_never_merges_with_the_real_alert() -> None:
    real = build_payload(make_notification(), receiver="r")
    test = build_payload(make_notification(test=True), receiver="r")
    assert validate_v4(test) == []
    assert only_alert(test)["labels"]["test"] == "true"
    assert only_alert(test)["annotations"]["summary"].startswith("[TEST] ")
    assert only_alert(test)["fingerprint"] != only_alert(real)["fingerprint"]
    assert test["groupKey"] != real["groupKey"]


def test_odd_link_names_become_valid_annotation_names() -> None:
    payload = build_payload(
        make_notification(links={"Grafana dash": "https://g", "9lives": "https://n"}),
        receiver="r",
    )
    assert validate_v4(payload) == []
    ann = only_alert(payload)["annotations"]
    assert ann["Grafana_dash_url"] == "https://g"
    assert ann["_9lives_url"] == "https://n"


def test_missing_numbers_are_left_out_not_sent_as_null() -> None:
    payload = build_payload(make_notification(observed=None, expected_low=None), receiver="r")
    assert validate_v4(payload) == []
    ann = only_alert(payload)["annotations"]
    assert "observed" not in ann
    assert "expected_low" not in ann
    assert ann["expected_high"] == "95.0"


def test_a_refusal_is_permanent_and_keeps_the_body() -> None:
    async def main() -> None:
        async with WebhookReceiver() as rx, httpx.AsyncClient(timeout=5) as client:
            rx.refuse()
            sink = AlertmanagerWebhookSink("hook", rx.url)
            with pytest.raises(PermanentDeliveryError) as info:
                await sink.send(make_notification(), client)
            assert info.value.status == 400
            assert info.value.response_body == "error 400"

    asyncio.run(main())


def test_factory_reads_the_token_file_and_hides_secrets_in_repr(tmp_path: Any) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file-token\n")
    url = "https://alerts.example.com/hook/abc123?key=zzz"
    sink = build_sink(WebhookSink(name="hook", url=url, bearer_token_file=token_file))
    assert isinstance(sink, AlertmanagerWebhookSink)
    assert sink._token == "from-file-token"
    text = repr(sink)
    assert "abc123" not in text
    assert "zzz" not in text
    assert "from-file-token" not in text
