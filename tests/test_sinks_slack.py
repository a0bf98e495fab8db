"""The Slack incoming-webhook sink, checked by the Slack receiver over a real socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from pipeline.alert.message import Notification
from pipeline.alert.sinks import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    SlackWebhookSink,
    build_sink,
)
from pipeline.alert.sinks.slack import MAX_HEADER_TEXT, MAX_SECTION_TEXT, build_payload
from pipeline.config import SlackSink
from pipeline.receivers import Received, Reply, SlackReceiver, validate_slack
from tests.test_sinks_factories import make_notification


def post(n: Notification, *replies: Reply) -> tuple[list[Received], Any]:
    """Send once; returns what arrived and the sink's result (or the error raised)."""

    async def main() -> tuple[list[Received], Any]:
        async with SlackReceiver() as rx, httpx.AsyncClient(timeout=5) as client:
            rx.script(*replies)
            sink = SlackWebhookSink("alerts", rx.url)
            try:
                result: Any = await sink.send(n, client)
            except Exception as exc:
                result = exc
            return list(rx.requests()), result

    return asyncio.run(main())


def texts(payload: dict[str, Any]) -> str:
    return json.dumps(payload["blocks"], ensure_ascii=False)


def test_firing_message_is_valid_block_kit_with_text_fallback() -> None:
    n = make_notification(links={"grafana": "https://grafana/x"})
    (req,), response = post(n)
    assert req.accepted, req.reason
    assert req.status == 200
    assert response.status == 200
    assert response.refs == {}
    body = req.payload
    assert body["text"].startswith("🔴 [FIRING] latency — shop/deploy/web inbound GET /api/users")
    assert "p99 812 ms, expected 40–95 ms" in body["text"]
    types = [b["type"] for b in body["blocks"]]
    assert types == ["header", "section", "actions", "context"]
    assert body["blocks"][0]["text"]["text"].startswith("🔴 [FIRING] ")
    section = body["blocks"][1]
    assert "*p99 812 ms, expected 40–95 ms (8.5× the upper bound)*" in section["text"]["text"]
    assert "suspect pod: web-7d9f-abc" in section["text"]["text"]
    assert {"type": "mrkdwn", "text": "*Namespace*\nshop"} in section["fields"]
    button = body["blocks"][2]["elements"][0]
    assert (button["text"]["text"], button["url"]) == ("grafana", "https://grafana/x")
    assert n.fingerprint in texts(body)


def test_resolved_and_test_messages_look_different() -> None:
    resolved = build_payload(make_notification("resolved"))
    assert resolved["text"].startswith("✅ [RESOLVED] ")
    test = build_payload(make_notification(test=True))
    assert test["text"].startswith("🧪 [TEST] [FIRING] ")
    assert "no action is needed" in texts(test)
    warning = build_payload(make_notification(severity="warning"))
    assert warning["text"].startswith("🟠 ")


def test_mrkdwn_control_characters_are_escaped() -> None:
    n = make_notification(explanation="p99 <script> & friends > normal", route="GET /a<b>")
    payload = build_payload(n)
    assert validate_slack(payload) == []
    assert "&lt;script&gt; &amp; friends &gt; normal" in texts(payload)
    assert "<script>" not in texts(payload)
    assert "&lt;b&gt;" in payload["text"]


def test_huge_content_is_clipped_to_slack_limits() -> None:
    links = {f"link {i} " + "x" * 100: f"https://l/{i}?" + "q" * 2000 for i in range(30)}
    links["too long"] = "https://l/" + "z" * 3001
    n = make_notification(
        explanation="&" * 5000,
        route="/" + "r" * 3000,
        workload="w" * 300,
        suspect_pod="p" * 500,
        links=links,
    )
    payload = build_payload(n)
    assert validate_slack(payload) == [], validate_slack(payload)
    header = payload["blocks"][0]["text"]["text"]
    assert len(header) == MAX_HEADER_TEXT
    assert header.endswith("…")
    section_text = payload["blocks"][1]["text"]["text"]
    assert section_text.endswith("…")
    assert not section_text.removesuffix("…").endswith(("&", "&a", "&am", "&amp"))
    (req,), _ = post(n)
    assert req.accepted, req.reason


def test_slack_error_string_is_permanent_with_the_body() -> None:
    (_req,), error = post(make_notification(), Reply(400, "invalid_payload"))
    assert isinstance(error, PermanentDeliveryError)
    assert error.status == 400
    assert error.response_body == "invalid_payload"
    assert "invalid_payload" in error.detail


def test_a_200_that_is_not_ok_is_permanent() -> None:
    _, error = post(make_notification(), Reply(200, "no_text"))
    assert isinstance(error, PermanentDeliveryError)
    assert error.status == 200
    assert "no_text" in error.detail


def test_rate_limit_is_retryable_with_the_servers_wait() -> None:
    _, error = post(make_notification(), Reply(429, "", headers={"Retry-After": "30"}))
    assert isinstance(error, RetryableDeliveryError)
    assert error.retry_after == 30.0


def test_rollup_error_is_retryable() -> None:
    _, error = post(make_notification(), Reply(500, "rollup_error"))
    assert isinstance(error, RetryableDeliveryError)
    assert error.retry_after is None
    assert "rollup_error" in error.detail


def test_factory_reads_url_from_file_and_repr_hides_it(tmp_path: Path) -> None:
    secret = "https://hooks.slack.com/services/T0001/B0002/abcdefSECRET"
    url_file = tmp_path / "slack-url"
    url_file.write_text(secret + "\n")
    sink = build_sink(SlackSink(name="ops", webhook_url_file=url_file))
    assert isinstance(sink, SlackWebhookSink)
    assert repr(sink) == "SlackWebhookSink(name='ops', url='https://hooks.slack.com/services/***')"
    inline = build_sink(SlackSink(name="ops2", webhook_url=SecretStr(secret)))
    assert "SECRET" not in repr(inline)


def test_empty_url_file_fails_at_build_time(tmp_path: Path) -> None:
    url_file = tmp_path / "empty"
    url_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        build_sink(SlackSink(name="ops", webhook_url_file=url_file))


def test_long_explanation_is_clipped_to_the_section_limit() -> None:
    payload = build_payload(make_notification(explanation="e" * 3500))
    assert validate_slack(payload) == []
    section_text = payload["blocks"][1]["text"]["text"]
    assert len(section_text) == MAX_SECTION_TEXT
    assert section_text.endswith("…")


def test_a_bad_link_costs_the_button_not_the_alert() -> None:
    n = make_notification(links={"broken": "grafana/d/x", "empty": "", "ok": "https://ok"})
    payload = build_payload(n)
    assert validate_slack(payload) == []
    buttons = next(b for b in payload["blocks"] if b["type"] == "actions")["elements"]
    assert [b["text"]["text"] for b in buttons] == ["ok"]
