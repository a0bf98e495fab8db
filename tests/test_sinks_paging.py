"""PagerDuty Events v2 and Opsgenie: dedup keys, event semantics, waits, end of life."""

from __future__ import annotations

import logging

import httpx
import pytest

from pipeline.alert.sinks import OpsgenieAlertSink, PagerDutyEventsSink
from pipeline.alert.sinks import opsgenie as opsgenie_module
from pipeline.alert.sinks.opsgenie import build_alert
from pipeline.alert.sinks.pagerduty import MAX_SUMMARY, build_event
from pipeline.config import RetryConfig
from pipeline.receivers import Reply
from pipeline.receivers.opsgenie import OpsgenieReceiver
from pipeline.receivers.pagerduty import ROUTING_KEY, PagerDutyReceiver, validate_event
from tests.sink_targets import RecordingSleep, once, send_all, serve
from tests.test_sinks_factories import make_notification

# -- PagerDuty -------------------------------------------------------------------------------


def pd(rx: PagerDutyReceiver, key: str = ROUTING_KEY) -> PagerDutyEventsSink:
    return PagerDutyEventsSink("pd", key, url=rx.enqueue_url)


def test_trigger_carries_the_documented_fields_and_resolve_only_the_key() -> None:
    n = make_notification(links={"grafana": "https://grafana/x"})
    event = build_event(n, ROUTING_KEY, client="meshwatch", client_url="https://mw")
    assert validate_event(event, [ROUTING_KEY]) == []
    assert event["dedup_key"] == n.fingerprint
    payload = event["payload"]
    assert payload["severity"] == "critical"
    assert payload["source"] == "shop/deploy/web"
    assert (payload["component"], payload["group"], payload["class"]) == ("web", "shop", "latency")
    assert payload["timestamp"] == "2023-11-14T22:23:20.000Z"
    assert payload["custom_details"]["observed"] == 812.0
    assert event["links"] == [{"href": "https://grafana/x", "text": "grafana"}]
    resolve = build_event(make_notification("resolved"), ROUTING_KEY, client="m", client_url=None)
    assert resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": n.fingerprint,
    }
    long = build_event(
        make_notification(explanation="e" * 5000, route="/" + "r" * 2000),
        ROUTING_KEY,
        client="m",
        client_url=None,
    )
    assert len(long["payload"]["summary"]) <= MAX_SUMMARY


def test_a_new_trigger_after_the_resolve_opens_a_new_alert() -> None:
    async def body(rx: PagerDutyReceiver, client: httpx.AsyncClient) -> None:
        await send_all(pd(rx), client)
        await send_all(pd(rx), client, ["firing"])
        first, second = rx.alerts_for(make_notification().fingerprint)
        assert (first.status, second.status) == ("resolved", "triggered")
        # A resolve for a key with nothing open is dropped, as PagerDuty does.
        await send_all(pd(rx), client, ["resolved", "resolved"])
        assert len(rx.dropped) == 1

    serve(PagerDutyReceiver(), body)


@pytest.mark.parametrize(("cap", "expected"), [(60.0, 30.0), (5.0, 5.0)])
def test_429_without_retry_after_waits_what_pagerduty_advises(cap: float, expected: float) -> None:
    async def body(rx: PagerDutyReceiver, client: httpx.AsyncClient) -> None:
        rx.rate_limit(1, retry_after=None)
        sleep = RecordingSleep()
        retry = RetryConfig(max_attempts=3, max_backoff_seconds=cap)
        outcome = await once(pd(rx), make_notification(), client, sleep=sleep, retry=retry)
        assert outcome.delivered
        assert sleep.calls == [expected]

    serve(PagerDutyReceiver(), body)


def test_an_unknown_routing_key_is_permanent_with_pagerdutys_reason() -> None:
    async def body(rx: PagerDutyReceiver, client: httpx.AsyncClient) -> None:
        outcome = await once(pd(rx, key="X" * 32), make_notification(), client)
        assert (outcome.permanent, outcome.last_status) == (True, 400)
        assert outcome.error is not None
        assert "Event object is invalid" in outcome.error
        assert "X" * 32 not in outcome.error + (outcome.response_body or "")

    serve(PagerDutyReceiver(), body)


# -- Opsgenie --------------------------------------------------------------------------------


def test_end_of_life_is_logged_once_with_the_date(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opsgenie_module, "_warned", False)
    caplog.set_level(logging.WARNING, logger="pipeline.alert.sinks.opsgenie")
    OpsgenieAlertSink("a", "k1")
    OpsgenieAlertSink("b", "k2")
    warnings = [r for r in caplog.records if "end of life" in r.getMessage()]
    assert len(warnings) == 1
    assert "2027-04-05" in warnings[0].getMessage()
    assert "Jira Service Management" in warnings[0].getMessage()


def test_create_respects_the_documented_limits() -> None:
    n = make_notification(
        explanation="e" * 20_000,
        route="/" + "r" * 600,
        links={f"l{i}": "https://l/" + "x" * 900 for i in range(20)},
    )
    alert = build_alert(n, tags=[f"tag-{i}" for i in range(30)], priorities={"critical": "P1"})
    assert len(alert["message"]) <= 130
    assert len(alert["description"]) <= 15_000
    assert len(alert["tags"]) <= 20
    assert sum(len(k) + len(v) for k, v in alert["details"].items()) <= 8000
    assert alert["priority"] == "P1"
    assert alert["alias"] == n.fingerprint

    async def body(rx: OpsgenieReceiver, client: httpx.AsyncClient) -> None:
        outcome = await once(OpsgenieAlertSink("og", rx.api_key, api_url=rx.url), n, client)
        assert outcome.delivered, outcome.error
        assert rx.requests()[0].header("Authorization") == f"GenieKey {rx.api_key}"

    serve(OpsgenieReceiver(), body)


def test_a_repeat_create_bumps_the_count_and_close_uses_the_alias() -> None:
    async def body(rx: OpsgenieReceiver, client: httpx.AsyncClient) -> None:
        sink = OpsgenieAlertSink("og", rx.api_key, api_url=rx.url)
        await send_all(sink, client, ["firing", "firing", "resolved"])
        (alert,) = rx.alerts
        assert (alert.count, alert.status) == (2, "closed")
        close = rx.calls("close")[0]
        assert close.query == {"identifierType": "alias"}
        assert close.path.endswith(f"/v2/alerts/{alert.alias}/close")

    serve(OpsgenieReceiver(), body)


def test_a_422_is_permanent() -> None:
    async def body(rx: OpsgenieReceiver, client: httpx.AsyncClient) -> None:
        rx.script(Reply(422, '{"message": "Request has not been processed"}', "application/json"))
        outcome = await once(
            OpsgenieAlertSink("og", rx.api_key, api_url=rx.url), make_notification(), client
        )
        assert (outcome.permanent, outcome.last_status) == (True, 422)
        assert outcome.error is not None
        assert "Request has not been processed" in outcome.error

    serve(OpsgenieReceiver(), body)
