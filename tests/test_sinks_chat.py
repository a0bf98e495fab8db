"""Teams, Mattermost, Discord and Google Chat: what is particular to each."""

from __future__ import annotations

import json
from typing import Any

import httpx

from pipeline.alert.message import Member, Notification
from pipeline.alert.sinks import (
    DiscordWebhookSink,
    GoogleChatWebhookSink,
    MattermostWebhookSink,
    TeamsWorkflowSink,
)
from pipeline.alert.sinks.chart import PNG_SIGNATURE
from pipeline.alert.sinks.discord import MAX_EMBEDS_TOTAL, build_message, embed_size
from pipeline.alert.sinks.google_chat import MAX_MESSAGE_BYTES
from pipeline.alert.sinks.google_chat import build_payload as chat_payload
from pipeline.alert.sinks.mattermost import build_payload as mm_payload
from pipeline.alert.sinks.teams import MAX_MESSAGE_BYTES as TEAMS_MAX
from pipeline.alert.sinks.teams import build_payload as teams_payload
from pipeline.alert.sinks.teams import size_of
from pipeline.receivers import Reply
from pipeline.receivers.api import json_reply
from pipeline.receivers.discord import DiscordReceiver, validate_discord
from pipeline.receivers.google_chat import GoogleChatReceiver
from pipeline.receivers.mattermost import MattermostReceiver, validate_mattermost
from pipeline.receivers.teams import TeamsReceiver, validate_teams
from pipeline.schema import EvidencePoint
from tests.sink_targets import RecordingSleep, once, send_all, serve, with_refs
from tests.test_sinks_factories import STARTED, make_notification

HUGE = {
    "explanation": "x" * 40_000,
    "route": "/" + "r" * 3000,
    "suspect_pod": "p" * 2000,
    "links": {f"link {i}": f"https://l.example/{i}?" + "q" * 1500 for i in range(20)},
}
EVIDENCE = tuple(EvidencePoint(t=STARTED + 60 * i, value=40.0 + i * 60) for i in range(12))


# -- Teams -------------------------------------------------------------------------------


def test_teams_envelope_is_exactly_what_workflows_loops_over() -> None:
    payload = teams_payload(make_notification(links={"grafana": "https://grafana/x"}))
    assert validate_teams(payload) == []
    assert set(payload) == {"type", "attachments"}
    assert payload["type"] == "message"
    (att,) = payload["attachments"]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert att["contentUrl"] is None
    card = att["content"]
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert (card["type"], card["version"], card["msteams"]) == (
        "AdaptiveCard",
        "1.4",
        {"width": "full"},
    )
    assert card["body"][0]["style"] == "attention"
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "grafana", "url": "https://grafana/x"}
    ]
    resolved = teams_payload(make_notification("resolved"))["attachments"][0]["content"]
    assert resolved["body"][0]["style"] == "good"


def test_teams_huge_content_is_trimmed_under_28_kb_and_accepted() -> None:
    n = make_notification(**HUGE)
    payload = teams_payload(n)
    assert size_of(payload) <= TEAMS_MAX
    assert validate_teams(payload) == []

    async def body(rx: TeamsReceiver, client: httpx.AsyncClient) -> None:
        outcome = await once(TeamsWorkflowSink("teams", rx.url), n, client)
        assert outcome.delivered, outcome.error
        assert outcome.last_status == 202

    serve(TeamsReceiver(), body)


def test_teams_grouped_notification_names_every_member() -> None:
    lead = make_notification()
    other = make_notification(
        route="GET /api/orders",
        kind="error_rate",
        unit="ratio",
        observed=0.2,
        expected_low=None,
        expected_high=0.01,
    )
    members = (
        Member(lead.incident, lead.finding, "firing"),
        Member(other.incident, other.finding, "firing"),
    )
    n = Notification(
        lead.incident,
        lead.finding,
        "firing",
        members=members,
        group_labels={"namespace": "shop", "workload_kind": "deploy", "workload": "web"},
    )
    payload = teams_payload(n)
    assert validate_teams(payload) == []
    text = json.dumps(payload, ensure_ascii=False)
    assert "2 alerts — shop/deploy/web" in text
    assert "GET /api/orders: error ratio 20 %" in text


def test_teams_answers_in_a_2xx_body_and_bad_signatures() -> None:
    async def body(rx: TeamsReceiver, client: httpx.AsyncClient) -> None:
        sink = TeamsWorkflowSink("teams", rx.url)
        rx.script(
            Reply(
                200,
                "Webhook message delivery failed with error: Microsoft Teams "
                "endpoint returned HTTP error 429",
            )
        )
        sleep = RecordingSleep()
        throttled = await once(sink, make_notification(), client, sleep=sleep)
        assert throttled.delivered
        assert throttled.attempts == 2
        rx.script(Reply(200, "... returned HTTP error 413 ..."))
        too_big = await once(sink, make_notification(), client)
        assert too_big.permanent
        wrong = TeamsWorkflowSink("teams", rx.url.replace(rx.sig, "forged"))
        denied = await once(wrong, make_notification(), client)
        assert (denied.permanent, denied.last_status) == (True, 401)
        assert "forged" not in (denied.error or "")

    serve(TeamsReceiver(), body)


# -- Mattermost ------------------------------------------------------------------------------


def test_mattermost_attachment_and_markdown_escaping() -> None:
    n = make_notification(route="GET /api/*_id_*", links={"grafana": "https://grafana/x"})
    payload = mm_payload(n, channel="ops", username="meshwatch")
    assert validate_mattermost(payload) == []
    (att,) = payload["attachments"]
    assert att["color"] == "#c62828"
    assert att["title_link"] == "https://grafana/x"
    assert {"short": True, "title": "Route", "value": r"inbound GET /api/\*\_id\_\*"} in att[
        "fields"
    ]
    assert payload["channel"] == "ops"
    assert payload["props"]["meshwatch_fingerprint"] == n.fingerprint
    assert validate_mattermost(mm_payload(make_notification(**HUGE))) == []


def test_mattermost_a_2xx_that_is_not_ok_is_permanent() -> None:
    async def body(rx: MattermostReceiver, client: httpx.AsyncClient) -> None:
        rx.script(Reply(200, "<html>login</html>"))
        outcome = await once(MattermostWebhookSink("mm", rx.url), make_notification(), client)
        assert outcome.permanent
        assert outcome.error is not None
        assert "unexpected answer" in outcome.error

    serve(MattermostReceiver(), body)


# -- Discord -------------------------------------------------------------------------------------


def test_discord_limits_hold_for_huge_content() -> None:
    message = build_message(make_notification(**HUGE))
    assert validate_discord(message, [], edit=False) == []
    assert embed_size(message["embeds"][0]) <= MAX_EMBEDS_TOTAL
    assert message["allowed_mentions"] == {"parse": []}


def test_discord_a_deleted_message_is_posted_again() -> None:
    async def body(rx: DiscordReceiver, client: httpx.AsyncClient) -> None:
        sink = DiscordWebhookSink("discord", rx.webhook_url)
        _, refs = await send_all(sink, client, ["firing"])
        rx.delete_message(refs["message_id"])
        outcome = await once(
            sink, with_refs(make_notification("resolved"), "discord", refs), client
        )
        assert outcome.delivered
        assert outcome.attempts == 1
        assert outcome.refs["message_id"] != refs["message_id"]
        (message,) = rx.messages.values()
        assert "[RESOLVED]" in message.content

    serve(DiscordReceiver(), body)


def test_discord_a_deleted_webhook_is_permanent_and_not_retried() -> None:
    async def body(rx: DiscordReceiver, client: httpx.AsyncClient) -> None:
        sink = DiscordWebhookSink("discord", rx.webhook_url)
        _, refs = await send_all(sink, client, ["firing"])
        rx.delete_webhook()
        outcome = await once(sink, with_refs(make_notification("update"), "discord", refs), client)
        assert (outcome.permanent, outcome.attempts, outcome.last_status) == (True, 1, 404)
        assert outcome.error is not None
        assert "stop using it" in outcome.error
        assert len(rx.requests()) == 2  # no fallback post to a dead webhook

    serve(DiscordReceiver(), body)


def test_discord_429_prefers_the_json_retry_after() -> None:
    async def body(rx: DiscordReceiver, client: httpx.AsyncClient) -> None:
        rx.script(
            json_reply(
                429,
                {"message": "You are being rate limited.", "retry_after": 2.5, "global": False},
                {"Retry-After": "3"},
            )
        )
        sleep = RecordingSleep()
        outcome = await once(
            DiscordWebhookSink("d", rx.webhook_url), make_notification(), client, sleep=sleep
        )
        assert outcome.delivered
        assert sleep.calls == [2.5]

    serve(DiscordReceiver(), body)


def test_discord_chart_is_attached_and_replaced_on_resolve() -> None:
    async def body(rx: DiscordReceiver, client: httpx.AsyncClient) -> None:
        sink = DiscordWebhookSink("discord", rx.webhook_url, attach_chart=True)
        outcomes, _ = await send_all(sink, client, ["firing", "resolved"], evidence=EVIDENCE)
        assert all(o.delivered for o in outcomes), [o.error for o in outcomes]
        (message,) = rx.messages.values()
        assert [a["filename"] for a in message.attachments] == ["meshwatch-chart.png"]
        assert message.embeds[0]["image"] == {"url": "attachment://meshwatch-chart.png"}
        assert rx.uploads["meshwatch-chart.png"].startswith(PNG_SIGNATURE)
        first, second = rx.accepted()
        assert (first.header("content-type") or "").startswith("multipart/form-data")
        assert second.method == "PATCH"
        assert message.edits == 1

    serve(DiscordReceiver(), body)


# -- Google Chat -----------------------------------------------------------------------------------


def test_google_chat_threads_by_key_and_keeps_the_webhook_credentials() -> None:
    async def body(rx: GoogleChatReceiver, client: httpx.AsyncClient) -> None:
        sink = GoogleChatWebhookSink("chat", rx.webhook_url)
        await send_all(sink, client)
        first = rx.accepted()[0]
        assert first.query == {
            "key": rx.key,
            "token": rx.token,
            "messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
            "requestId": first.query["requestId"],
        }
        # one request id per notice: three notices, three ids
        assert len({r.query["requestId"] for r in rx.accepted()}) == 3
        keys = {r.payload["thread"]["threadKey"] for r in rx.accepted()}
        assert len(keys) == 1
        # A new occurrence (a new first_seen) starts a thread of its own.
        later = make_notification(started_at=STARTED + 7200, window_end=STARTED + 7800)
        later_n = Notification(
            later.incident.model_copy(update={"first_seen": STARTED + 7200}),
            later.finding,
            "firing",
        )
        outcome = await once(sink, later_n, client)
        assert outcome.refs["thread"] not in {m.thread for m in rx.messages[:3]}

    serve(GoogleChatReceiver(), body)


def test_google_chat_a_repeated_request_id_returns_the_first_message() -> None:
    """A post repeated after its answer was lost (timeout, crash) makes no second message."""

    async def body(rx: GoogleChatReceiver, client: httpx.AsyncClient) -> None:
        sink = GoogleChatWebhookSink("chat", rx.webhook_url)
        n = make_notification()
        first = await once(sink, n, client)
        again = await once(sink, n, client)  # the same notice, as after a crash
        assert first.delivered and again.delivered
        assert len(rx.accepted()) == 2 and len(rx.messages) == 1
        assert again.refs["thread"] == first.refs["thread"]
        other = await once(sink, make_notification("resolved"), client)
        assert other.delivered and len(rx.messages) == 2  # a different notice is posted

    serve(GoogleChatReceiver(), body)


def test_google_chat_without_reply_option_would_scatter_messages() -> None:
    """The receiver holds the documented rule the sink depends on."""

    async def body(rx: GoogleChatReceiver, client: httpx.AsyncClient) -> None:
        for _ in range(2):
            r = await client.post(rx.webhook_url, json={"text": "t", "thread": {"threadKey": "k"}})
            assert r.status_code == 200
        assert len({m.thread for m in rx.messages}) == 2

    serve(GoogleChatReceiver(), body)


def test_google_chat_message_stays_under_32000_bytes() -> None:
    payload: dict[str, Any] = chat_payload(make_notification(**HUGE))
    assert len(json.dumps(payload, ensure_ascii=False).encode()) <= MAX_MESSAGE_BYTES
