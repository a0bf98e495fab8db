"""The local receivers: format checks, service-like answers, scripting, waiting."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from pipeline.alert.sinks.slack import build_payload as slack_payload
from pipeline.alert.sinks.webhook import build_payload as webhook_payload
from pipeline.receivers import (
    Received,
    Receiver,
    ReceiverThread,
    SlackReceiver,
    WebhookReceiver,
    parse_rfc3339,
    validate_slack,
    validate_v4,
)
from tests.test_sinks_factories import make_notification


def good_v4() -> dict[str, Any]:
    return webhook_payload(make_notification(), receiver="r")


def good_slack() -> dict[str, Any]:
    return slack_payload(make_notification(links={"g": "https://g"}))


def details(problems: list[Any]) -> str:
    return "; ".join(p.detail for p in problems)


def with_receiver(
    rx: Receiver, body: Callable[[Receiver, httpx.AsyncClient], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with rx, httpx.AsyncClient(timeout=5) as client:
            await body(rx, client)

    asyncio.run(main())


# -- Alertmanager v4 -----------------------------------------------------------------


def test_v4_sample_from_the_sink_is_valid() -> None:
    assert validate_v4(good_v4()) == []


def test_v4_payload_as_alertmanager_0_25_posts_it_is_valid() -> None:
    # The measured shape (reference §3.3): nanosecond times, zero endsAt, 16-hex fingerprint.
    body = good_v4()
    body["alerts"][0]["startsAt"] = "2024-05-01T10:00:00.123456789Z"
    body["alerts"][0]["fingerprint"] = "0123456789abcdef"
    body["notification_reason"] = "new_alert"
    assert validate_v4(body) == []


Mutation = Callable[[dict[str, Any]], Any]


def top(**fields: Any) -> Mutation:
    return lambda body: body.update(fields)


def alert(**fields: Any) -> Mutation:
    return lambda body: body["alerts"][0].update(fields)


def label(**fields: Any) -> Mutation:
    return lambda body: body["alerts"][0]["labels"].update(fields)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (top(version="3"), "version: '3', expected '4'"),
        (top(version=4), "version: 4, expected '4'"),
        (lambda b: b.pop("groupKey"), "groupKey: missing"),
        (top(extra=1), "extra: not a v4 field"),
        (top(truncatedAlerts=True), "truncatedAlerts: expected an integer"),
        (top(status="ok"), "status: 'ok' not in"),
        (top(alerts=[]), "alerts: expected a non-empty array"),
        (alert(startsAt="2024-05-01 10:00:00"), "'2024-05-01 10:00:00' is not RFC 3339"),
        (alert(endsAt="2024-05-01T10:00:00"), "endsAt: '2024-05-01T10:00:00' is not RFC 3339"),
        (alert(startsAt=1700000000), "startsAt: 1700000000 is not RFC 3339"),
        (lambda b: b["alerts"][0]["labels"].pop("alertname"), "labels.alertname: missing"),
        (label(**{"bad-name": "x"}), "'bad-name' is not a label name"),
        (label(kind=3), "labels.kind: expected a string"),
        (lambda b: b["alerts"][0].pop("fingerprint"), "alerts[0].fingerprint: missing"),
        (alert(status="resolved"), "status: 'firing' but alerts say 'resolved'"),
        (lambda b: b["commonLabels"].update(namespace="x"), "commonLabels: ['namespace'] differ"),
    ],
)
def test_v4_rejections_say_why(mutate: Mutation, expected: str) -> None:
    body = copy.deepcopy(good_v4())
    mutate(body)
    assert expected in details(validate_v4(body))


def test_v4_resolved_alert_needs_a_real_end_after_its_start() -> None:
    body = webhook_payload(make_notification("resolved"), receiver="r")
    assert validate_v4(body) == []
    body["alerts"][0]["endsAt"] = "0001-01-01T00:00:00Z"
    assert "zero time on a resolved alert" in details(validate_v4(body))
    body["alerts"][0]["endsAt"] = "2000-01-01T00:00:00Z"
    assert "endsAt: before startsAt" in details(validate_v4(body))


@pytest.mark.parametrize(
    ("text", "ok"),
    [("2024-05-01T10:00:00Z", True), ("2024-05-01T10:00:00.5+02:00", True),
     ("2024-05-01t10:00:00z", True), ("0001-01-01T00:00:00Z", True),
     ("2024-05-01T10:00:00", False), ("2024-05-01 10:00:00Z", False),
     ("2024-13-01T10:00:00Z", False), ("2024-W18-3T10:00:00Z", False), ("", False)],
)  # fmt: skip
def test_parse_rfc3339(text: str, ok: bool) -> None:
    assert (parse_rfc3339(text) is not None) is ok


def test_webhook_receiver_answers_400_with_the_reason_and_records_it() -> None:
    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        bad = good_v4()
        bad["version"] = "3"
        r = await client.post(rx.url, json=bad)
        assert r.status_code == 400
        assert "version" in r.text
        ok = await client.post(rx.url, json=good_v4())
        assert (ok.status_code, ok.text) == (200, "")
        (rejected,) = rx.rejected()
        assert rejected.reason is not None
        assert "expected '4'" in rejected.reason
        assert [r.payload["version"] for r in rx.accepted()] == ["4"]

    with_receiver(WebhookReceiver(), body)


def test_webhook_receiver_checks_method_content_type_json_and_path() -> None:
    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        r = await client.get(rx.url)
        assert r.status_code == 405
        r = await client.post(
            rx.url, content=json.dumps(good_v4()), headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 415
        r = await client.post(
            rx.url, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400
        assert "not JSON" in r.text
        r = await client.post(
            rx.url, content=b'{"version": NaN}', headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400
        r = await client.post(rx.base_url + "/elsewhere", json=good_v4())
        assert r.status_code == 404
        assert len(rx.rejected()) == 5
        assert not rx.accepted()

    with_receiver(WebhookReceiver(), body)


# -- Slack ---------------------------------------------------------------------------


def test_slack_sample_from_the_sink_is_valid() -> None:
    assert validate_slack(good_slack()) == []


def block(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def md(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def msg(*blocks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"text": "t", "blocks": list(blocks), **fields}


def button(text: str, **fields: Any) -> dict[str, Any]:
    return {"type": "button", "text": plain(text), **fields}


@pytest.mark.parametrize(
    ("payload", "code", "expected"),
    [
        ({"blocks": [block("divider")]}, "no_text", "text: missing"),
        ({"text": "   "}, "no_text", "text: missing"),
        ({"text": "x" * 40_001}, "invalid_payload", "Slack cuts at 40000"),
        (msg(color="red"), "invalid_payload", "color: not an incoming-webhook field"),
        (msg(*[block("divider")] * 51), "invalid_blocks", "51 blocks, at most 50"),
        (msg(blocks={}), "invalid_blocks", "blocks: expected an array"),
        (
            msg(block("header", text=plain("h" * 151))),
            "invalid_blocks",
            "151 characters, at most 150",
        ),
        (msg(block("header", text=md("h"))), "invalid_blocks", "not in ('plain_text',)"),
        (msg(block("section", text=md("s" * 3001))), "invalid_blocks", "at most 3000"),
        (msg(block("section", fields=[md("f")] * 11)), "invalid_blocks", "fields: 11, at most 10"),
        (msg(block("section", fields=[md("f" * 2001)])), "invalid_blocks", "at most 2000"),
        (msg(block("section")), "invalid_blocks", "needs text or fields"),
        (msg(block("context", elements=[md("c")] * 11)), "invalid_blocks", "11, at most 10"),
        (msg(block("actions", elements=[button("b" * 76)])), "invalid_blocks", "76 characters"),
        (
            msg(block("actions", elements=[button("b", action_id="a")] * 2)),
            "invalid_blocks",
            "'a' repeated",
        ),
        (msg(block("section", text=md("s"), block_id="x" * 256)), "invalid_blocks", "1..255"),
        (msg(block("carousel")), "invalid_blocks", "unknown block type 'carousel'"),
        (msg(block("section", text=md(""))), "invalid_blocks", "expected a non-empty string"),
        (msg(*[block("section", text=md("s" * 2900))] * 5), "msg_blocks_too_long", "in total"),
        ({"text": "t", "attachments": [{}] * 101}, "too_many_attachments", "attachments: 101"),
    ],
)
def test_slack_rejections_say_why(payload: dict[str, Any], code: str, expected: str) -> None:
    problems = validate_slack(payload)
    assert problems, "expected a rejection"
    assert problems[0].code == code
    assert expected in details(problems)


def test_slack_receiver_answers_like_slack() -> None:
    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        ok = await client.post(rx.url, json=good_slack())
        assert (ok.status_code, ok.text, ok.headers["content-type"].split(";")[0]) == (
            200,
            "ok",
            "text/plain",
        )
        no_text = await client.post(rx.url, json={"blocks": good_slack()["blocks"]})
        assert (no_text.status_code, no_text.text) == (400, "no_text")
        too_many = await client.post(rx.url, json={"text": "t", "blocks": [block("divider")] * 60})
        assert (too_many.status_code, too_many.text) == (400, "invalid_blocks")
        form = await client.post(rx.url, data={"payload": "{}"})
        assert (form.status_code, form.text) == (400, "invalid_payload")
        wrong = await client.post(rx.base_url + "/services/T/B/other", json=good_slack())
        assert (wrong.status_code, wrong.text) == (404, "no_service")
        reasons = [r.reason for r in rx.rejected()]
        assert reasons[0] is not None
        assert "text: missing" in reasons[0]
        assert reasons[1] is not None
        assert "60 blocks, at most 50" in reasons[1]
        assert len(rx.accepted()) == 1

    with_receiver(SlackReceiver(), body)


# -- scripting and waiting -----------------------------------------------------------


def test_scripted_answers_come_first_then_normal_service() -> None:
    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        rx.rate_limit(times=2, retry_after=3)
        rx.fail(500)
        rx.refuse()
        answers = [await client.post(rx.url, json=good_slack()) for _ in range(5)]
        assert [a.status_code for a in answers] == [429, 429, 500, 400, 200]
        assert answers[0].headers["Retry-After"] == "3"
        assert [a.text for a in answers[2:]] == ["rollup_error", "invalid_payload", "ok"]
        records = rx.requests()
        assert [r.scripted for r in records] == [True, True, True, True, False]
        assert all(r.valid for r in records)
        assert [r.accepted for r in records] == [False, False, False, False, True]

    with_receiver(SlackReceiver(), body)


def test_hang_holds_the_answer_past_the_client_timeout() -> None:
    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        rx.hang()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(rx.url, json=good_v4(), timeout=0.2)
        # The request was seen (and recorded before the hang), so a test can wait on it.
        (seen,) = await rx.wait_for_count(1, accepted_only=False, timeout=1)
        assert seen.valid
        ok = await client.post(rx.url, json=good_v4())
        assert ok.status_code == 200

    with_receiver(WebhookReceiver(), body)


def test_wait_for_is_woken_by_arrivals() -> None:
    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        waiter = asyncio.create_task(
            rx.wait_for(lambda rs: any(r.payload and r.payload["status"] == "resolved" for r in rs))
        )
        await client.post(rx.url, json=good_v4())
        assert not waiter.done()
        await client.post(rx.url, json=webhook_payload(make_notification("resolved"), receiver="r"))
        records = await asyncio.wait_for(waiter, 2)
        assert [r.payload["status"] for r in records] == ["firing", "resolved"]

    with_receiver(WebhookReceiver(), body)


def test_wait_for_times_out_with_what_did_arrive() -> None:
    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        await client.post(rx.url, json={"version": "3"})
        with pytest.raises(TimeoutError, match=r"1 request\(s\) arrived.*missing"):
            await rx.wait_for_count(1, timeout=0.05)

    with_receiver(WebhookReceiver(), body)


def test_on_request_sees_every_request_and_its_errors_are_contained() -> None:
    seen: list[Received] = []

    def observe(r: Received) -> None:
        seen.append(r)
        raise RuntimeError("observer bug")

    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        r = await client.post(rx.url, json=good_v4())
        assert r.status_code == 200

    with_receiver(WebhookReceiver(on_request=observe), body)
    assert [r.status for r in seen] == [200]


def test_receiver_thread_serves_blocking_callers() -> None:
    with ReceiverThread(WebhookReceiver()) as rx:
        with httpx.Client(timeout=5) as client:
            assert client.post(rx.url, json=good_v4()).status_code == 200
            assert client.post(rx.url, json={"version": "4"}).status_code == 400
        accepted = rx.wait_for_count(1)
        assert accepted[0].payload["version"] == "4"
        assert len(rx.requests()) == 2
        assert len(rx.rejected()) == 1
        url = rx.url
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=1) as client:
        client.post(url, json=good_v4())  # stopped means the port is closed


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = WebhookReceiver().url


def test_summaries_for_the_demo_display() -> None:
    async def body(rx: Receiver, client: httpx.AsyncClient) -> None:
        await client.post(rx.url, json=good_v4())
        await client.post(rx.url, json={"version": "3"})
        ok, bad = rx.requests()
        assert rx.summarize(ok) == (
            "#1 -> 200: firing MeshwatchLatency: latency — shop/deploy/web inbound "
            "GET /api/users: p99 812 ms, expected 40–95 ms (8.5× the upper bound)"
        )
        assert rx.summarize(bad).startswith("#2 POST /alert -> 400 (")

    with_receiver(WebhookReceiver(), body)
    slack_rx = SlackReceiver()

    async def slack_body(rx: Receiver, client: httpx.AsyncClient) -> None:
        await client.post(rx.url, json=good_slack())
        (record,) = rx.requests()
        assert rx.summarize(record).startswith("#1 -> 200: 🔴 [FIRING] latency")

    with_receiver(slack_rx, slack_body)
