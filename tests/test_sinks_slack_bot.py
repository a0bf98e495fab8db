"""Slack bot-token mode: post once, edit in place, thread the follow-ups."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

from pipeline.alert.message import Notification
from pipeline.alert.sinks import SlackBotApiSink
from pipeline.alert.sinks.chart import PNG_SIGNATURE
from pipeline.receivers import Reply
from pipeline.receivers.api import json_reply
from pipeline.receivers.slack_api import SlackApiReceiver
from pipeline.schema import EvidencePoint
from tests.sink_targets import RETRY, RecordingSleep, once, send_all, serve, with_refs
from tests.test_sinks_factories import STARTED, make_notification

CHANNEL = "C0ALERTS01"
EVIDENCE = tuple(EvidencePoint(t=STARTED + 60 * i, value=50.0 + (i > 5) * 700) for i in range(12))


def sink(rx: SlackApiReceiver, **kw: Any) -> SlackBotApiSink:
    return SlackBotApiSink("slack", rx.token, "#alerts", api_url=rx.api_url, **kw)


def test_post_carries_channel_blocks_metadata_and_a_utf8_json_body() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        n = make_notification(links={"grafana": "https://grafana/x"})
        outcome = await once(sink(rx), n, client)
        assert outcome.refs == {"channel": CHANNEL, "ts": "1700000001.000001"}
        (req,) = rx.requests()
        assert req.header("Content-Type") == "application/json; charset=utf-8"
        assert req.header("Authorization") == f"Bearer {rx.token}"
        assert req.payload["channel"] == "#alerts"
        assert req.payload["text"].startswith("🔴 [FIRING] latency")
        assert [b["type"] for b in req.payload["blocks"]] == [
            "header",
            "section",
            "actions",
            "context",
        ]
        assert req.payload["metadata"]["event_payload"]["fingerprint"] == n.fingerprint
        assert "warning" not in req.body.decode()  # Slack warns about a missing charset

    serve(SlackApiReceiver(), body)


def test_update_edits_the_parent_keeping_the_firing_look_and_replies_in_thread() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        _, refs = await send_all(sink(rx), client, ["firing", "update"])
        (parent,) = rx.top_level(CHANNEL)
        assert parent.text.startswith("🔴 [FIRING]")  # the message shows the incident's state
        (reply,) = rx.thread(CHANNEL, parent.ts)
        assert reply.text.startswith("🔴 *[UPDATE]")
        assert "severity critical, 3 anomalous windows" in reply.text
        assert not reply.reply_broadcast
        assert refs["last_reply_ts"] == reply.ts

    serve(SlackApiReceiver(), body)


def test_a_deleted_message_is_posted_again_with_new_refs() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        _, refs = await send_all(sink(rx), client, ["firing"])
        rx.messages.clear()  # somebody deleted it
        n = with_refs(make_notification("resolved"), "slack", refs)
        outcome = await once(sink(rx), n, client)
        assert outcome.delivered
        assert outcome.refs["ts"] != refs["ts"]
        (parent,) = rx.top_level(CHANNEL)
        assert parent.ts == outcome.refs["ts"]
        assert parent.text.startswith("✅ [RESOLVED]")
        assert [r.route for r in rx.requests()][-2:] == ["chat.update", "chat.postMessage"]

    serve(SlackApiReceiver(), body)


def test_an_uneditable_message_still_gets_the_thread_reply() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        s = sink(rx)
        _, refs = await send_all(s, client, ["firing"])
        rx.refuse_with("edit_window_closed", route="chat.update")
        outcome = await once(s, with_refs(make_notification("resolved"), "slack", refs), client)
        assert outcome.delivered
        assert outcome.refs["ts"] == refs["ts"]
        (parent,) = rx.top_level(CHANNEL)
        assert parent.edits == []
        (reply,) = rx.thread(CHANNEL, parent.ts)
        assert reply.reply_broadcast

    serve(SlackApiReceiver(), body)


def test_ok_false_errors_are_classified() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        s = sink(rx)
        rx.refuse_with("ratelimited")
        sleep = RecordingSleep()
        retried = await once(s, make_notification(), client, sleep=sleep)
        assert retried.delivered
        assert retried.attempts == 2
        rx.refuse_with("channel_not_found")
        refused = await once(s, make_notification(test=True), client)
        assert not refused.delivered
        assert refused.permanent
        assert refused.attempts == 1
        assert refused.last_status == 200
        assert refused.error == "slack-bot 'slack' chat.postMessage: channel_not_found"

    serve(SlackApiReceiver(), body)


def test_a_wrong_token_is_invalid_auth_and_permanent() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        wrong = SlackBotApiSink("slack", "xoxb-wrong", "#alerts", api_url=rx.api_url)
        outcome = await once(wrong, make_notification(), client)
        assert outcome.permanent
        assert outcome.error is not None
        assert outcome.error.endswith("invalid_auth")
        assert rx.messages == {}

    serve(SlackApiReceiver(), body)


def test_a_retry_after_a_half_done_update_does_not_edit_twice() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        s = sink(rx)
        _, refs = await send_all(s, client, ["firing"])
        rx.fail_on("chat.postMessage", 500)  # the edit works, the thread reply fails once
        outcome = await once(s, with_refs(make_notification("update"), "slack", refs), client)
        assert outcome.delivered
        assert outcome.attempts == 2
        assert len(rx.calls("chat.update")) == 1
        (parent,) = rx.top_level(CHANNEL)
        assert len(parent.edits) == 1
        assert len(rx.thread(CHANNEL, parent.ts)) == 1

    serve(SlackApiReceiver(), body)


def test_chart_is_uploaded_into_the_thread() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        s = sink(rx, attach_chart=True)
        outcome = await once(s, make_notification(evidence=EVIDENCE), client)
        assert outcome.delivered
        (parent,) = rx.top_level(CHANNEL)
        (file_id,) = parent.files
        upload = rx.files[file_id]
        assert upload.data is not None
        assert upload.data.startswith(PNG_SIGNATURE)
        assert (upload.channel, upload.thread_ts) == (CHANNEL, parent.ts)
        assert [r.route for r in rx.requests()] == [
            "chat.postMessage",
            "files.getUploadURLExternal",
            "upload",
            "files.completeUploadExternal",
        ]

    serve(SlackApiReceiver(), body)


def test_a_failed_chart_upload_does_not_fail_the_alert() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        s = sink(rx, attach_chart=True)
        rx.script_on(
            "files.getUploadURLExternal", json_reply(200, {"ok": False, "error": "missing_scope"})
        )
        outcome = await once(s, make_notification(evidence=EVIDENCE), client, retry=RETRY)
        assert outcome.delivered
        assert outcome.attempts == 1
        assert len(rx.top_level(CHANNEL)) == 1
        assert rx.files == {}
        no_evidence = await once(s, make_notification(test=True), client)
        assert no_evidence.delivered
        assert len(rx.calls("files.getUploadURLExternal")) == 1  # nothing to chart: no upload

    serve(SlackApiReceiver(), body)


def test_429_with_retry_after_on_update() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        s = sink(rx)
        _, refs = await send_all(s, client, ["firing"])
        rx.script_on(
            "chat.update",
            Reply(
                429,
                '{"ok": false, "error": "ratelimited"}',
                "application/json",
                {"Retry-After": "3"},
            ),
        )
        sleep = RecordingSleep()
        outcome = await once(
            s, with_refs(make_notification("update"), "slack", refs), client, sleep=sleep
        )
        assert outcome.delivered
        assert sleep.calls == [3.0]

    serve(SlackApiReceiver(), body)


# -- no second post for a notice that may already be in the channel -------------------------


def id_sink(rx: SlackApiReceiver) -> SlackBotApiSink:
    """Configured with the channel ID, which ``conversations.history`` needs."""
    return SlackBotApiSink("slack", rx.token, CHANNEL, api_url=rx.api_url)


def resumed(n: Notification) -> Notification:
    return dataclasses.replace(n, resumed=True)


def test_a_resumed_post_finds_the_message_an_earlier_alerter_made() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        n = make_notification()
        first = await once(id_sink(rx), n, client)  # then the alerter "crashed"
        other = await once(id_sink(rx), make_notification(route_key="shop/deploy/api/x"), client)
        again = await once(id_sink(rx), resumed(n), client)  # a new process, from the outbox
        assert again.delivered and again.refs == first.refs != other.refs
        assert len(rx.top_level(CHANNEL)) == 2  # no third message
        (look,) = rx.calls("conversations.history")
        assert look.payload["include_all_metadata"] == "true"

    serve(SlackApiReceiver(), body)


def test_a_resumed_post_that_never_happened_is_posted_once() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        outcome = await once(id_sink(rx), resumed(make_notification()), client)
        assert outcome.delivered and len(rx.top_level(CHANNEL)) == 1
        assert len(rx.calls("conversations.history")) == 1

    serve(SlackApiReceiver(), body)


def test_a_post_without_a_clear_answer_is_looked_up_before_the_retry() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        rx.fail_on("chat.postMessage", 503)
        outcome = await once(id_sink(rx), make_notification(), client)
        assert outcome.delivered and outcome.attempts == 2
        assert len(rx.calls("conversations.history")) == 1  # looked, found none, posted
        assert len(rx.top_level(CHANNEL)) == 1
        # a plain first post does not look at all
        await once(id_sink(rx), make_notification(route_key="shop/deploy/api/y"), client)
        assert len(rx.calls("conversations.history")) == 1

    serve(SlackApiReceiver(), body)


def test_a_resumed_thread_reply_is_not_posted_twice() -> None:
    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        s = id_sink(rx)
        _, refs = await send_all(s, client, ["firing", "resolved"])
        (parent,) = rx.top_level(CHANNEL)
        assert len(rx.thread(CHANNEL, parent.ts)) == 1
        n = with_refs(
            make_notification("resolved"), "slack", {"channel": CHANNEL, "ts": refs["ts"]}
        )
        again = await once(id_sink(rx), resumed(n), client)
        assert again.delivered and again.refs["last_reply_ts"] == refs["last_reply_ts"]
        assert len(rx.thread(CHANNEL, parent.ts)) == 1
        assert len(rx.calls("conversations.replies")) == 1

    serve(SlackApiReceiver(), body)


def test_without_a_channel_id_the_lookup_is_skipped_and_the_post_goes_out() -> None:
    """The documented bound: a channel *name* cannot be read back, so one repeat is possible."""

    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        n = make_notification()
        await once(sink(rx), n, client)
        again = await once(sink(rx), resumed(n), client)
        assert again.delivered and len(rx.top_level(CHANNEL)) == 2
        (look,) = rx.calls("conversations.history")
        assert look.status == 200 and not look.valid  # channel_not_found, as Slack says

    serve(SlackApiReceiver(), body)


def test_a_resumed_firing_whose_refs_were_saved_does_not_reply_to_itself() -> None:
    """The crash came after the incident kept the message ts, before the tombstone."""

    async def body(rx: SlackApiReceiver, client: httpx.AsyncClient) -> None:
        n = make_notification()
        first = await once(id_sink(rx), n, client)
        again = await once(id_sink(rx), resumed(with_refs(n, "slack", first.refs)), client)
        assert again.delivered
        (parent,) = rx.top_level(CHANNEL)
        assert rx.thread(CHANNEL, parent.ts) == []

    serve(SlackApiReceiver(), body)
