"""Mattermost incoming webhook: a short text plus one Slack-style attachment.

Mattermost takes Slack's attachment format and renders it itself (reference
§1.4): a coloured bar, a title, the details as text and the route identity as
short fields. Like a Slack webhook it answers a plain ``ok`` and returns no
post id, so every notice is a post of its own. Posts are limited to 16,383
characters (reported by a maintainer, not documented); we stay far below.
"""

from __future__ import annotations

from typing import Any

import httpx

from pipeline.alert.message import (
    Notification,
    body_lines,
    fit_lines,
    format_utc,
    group_fields,
    group_heading,
    headline,
    member_line,
    title,
    web_links,
)
from pipeline.alert.sinks.base import SinkResponse, body_excerpt
from pipeline.alert.sinks.common import call, clip, permanent, retryable
from pipeline.alert.sinks.redact import redact_url, register_url
from pipeline.config import MattermostSink, read_secret

MAX_POST = 16_383
TEXT_BUDGET = 1000
ATTACHMENT_TEXT_BUDGET = 6000
FIELD_BUDGET = 300
COLOURS = {"critical": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}
RESOLVED_COLOUR = "#2e7d32"
TEST_COLOUR = "#6a1b9a"
ICONS = {
    "firing": ":red_circle:",
    "update": ":large_orange_circle:",
    "resolved": ":white_check_mark:",
}


def escape(text: str) -> str:
    """Keep route names (``/api/*``, ``_id_``) from turning into Markdown."""
    for ch in ("\\", "*", "_", "`", "~"):
        text = text.replace(ch, "\\" + ch)
    return text


def colour(n: Notification) -> str:
    if n.test:
        return TEST_COLOUR
    if n.resolved:
        return RESOLVED_COLOUR
    return COLOURS.get(n.incident.severity, "#616161")


def build_payload(
    n: Notification,
    *,
    channel: str | None = None,
    username: str | None = None,
    icon_url: str | None = None,
) -> dict[str, Any]:
    f = n.finding
    links = web_links(n)
    lines = [escape(line) for line in body_lines(n, with_members=False)]
    link_lines = [f"[{escape(name)}]({url})" for name, url in links]
    if n.grouped:
        # Every member by name while the attachment's budget lasts, then a
        # count: clipping the joined text would cut a member in half.
        listed = [clip(escape(f"- {member_line(m)}"), 500) for m in n.members]
        room = ATTACHMENT_TEXT_BUDGET - len("\n".join([*lines, *link_lines])) - 40
        lines += [escape(group_heading(n)), *fit_lines(listed, max(100, room))]
    lines += link_lines
    fields = group_fields(n)
    attachment: dict[str, Any] = {
        "fallback": clip(headline(n), TEXT_BUDGET),
        "color": colour(n),
        "title": clip(title(n), 500),
        "text": clip("\n".join(lines), ATTACHMENT_TEXT_BUDGET),
        "fields": [
            {"short": True, "title": k, "value": clip(escape(v), FIELD_BUDGET)} for k, v in fields
        ],
        "footer": clip(
            f"meshwatch · {f.model} {f.model_version} · fingerprint {n.fingerprint} · "
            f"window {format_utc(f.window_end)} · id {n.notification_id}",
            500,
        ),
    }
    if links:
        attachment["title_link"] = links[0][1]
    payload: dict[str, Any] = {
        "text": clip(f"{ICONS[n.action]} **{escape(title(n))}**", TEXT_BUDGET),
        "attachments": [attachment],
        "props": {
            "meshwatch_fingerprint": n.fingerprint,
            "meshwatch_action": n.action,
            "meshwatch_notification_id": n.notification_id,
        },
    }
    if channel:
        payload["channel"] = channel
    if username:
        payload["username"] = username
    if icon_url:
        payload["icon_url"] = icon_url
    return payload


class MattermostWebhookSink:
    """POSTs to one incoming-webhook URL (the URL is the credential)."""

    def __init__(
        self,
        name: str,
        webhook_url: str,
        *,
        channel: str | None = None,
        username: str | None = "meshwatch",
        icon_url: str | None = None,
    ) -> None:
        self.name = name
        self._url = webhook_url
        self.channel = channel
        self.username = username
        self.icon_url = icon_url
        self._target = f"mattermost {name!r} ({register_url(webhook_url)})"

    @classmethod
    def from_config(cls, cfg: MattermostSink) -> MattermostWebhookSink:
        url = read_secret(cfg.webhook_url, cfg.webhook_url_file, cfg.webhook_url_env)
        if not url:
            raise ValueError(f"mattermost sink {cfg.name!r}: the webhook URL is empty")
        return cls(cfg.name, url, channel=cfg.channel, username=cfg.username, icon_url=cfg.icon_url)

    def __repr__(self) -> str:
        return f"MattermostWebhookSink(name={self.name!r}, url={redact_url(self._url)!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        payload = build_payload(
            n, channel=self.channel, username=self.username, icon_url=self.icon_url
        )
        response = await call(client, "POST", self._url, target=self._target, json_body=payload)
        if response.status_code == 429 or response.status_code >= 500:
            raise retryable(response, self._target)
        if response.status_code != 200:
            raise permanent(response, self._target)
        body = body_excerpt(response).strip()
        if body != "ok":
            raise permanent(response, self._target, f"unexpected answer {body[:100]!r}")
        return SinkResponse(refs={}, status=200, detail="ok")
