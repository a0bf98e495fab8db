"""Discord webhook: one message per incident, edited in place.

The first notice is posted with ``?wait=true`` so Discord answers with the
created message (reference §1.5); its ``id`` becomes this sink's ref, and
updates and the resolve ``PATCH .../messages/{id}`` that same message. A 404
for the webhook means it was deleted: permanent, and Discord asks clients to
stop using it (too many invalid requests earn an IP ban). A 404 for the
*message* (someone deleted it) is answered by posting a new one.

Rate limits come as 429 with ``Retry-After`` and a JSON ``retry_after`` in
(fractional) seconds; the JSON value is the more precise and is preferred.

Edits are idempotent, but the first post is not: an executed webhook takes
no idempotency key (``nonce``/``enforce_nonce`` exist only for a bot's
Create Message) and a webhook cannot list the channel's messages, so a post
whose answer was lost (timeout, or an alerter crash before the outbox
tombstone) may appear twice. The copy carries the same notification id in
its footer; later edits go to the message whose id was kept.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx

from pipeline.alert.message import (
    Notification,
    since_line,
    summary_fields,
    summary_line,
    suspect_line,
    title,
    web_links,
)
from pipeline.alert.sinks import chart
from pipeline.alert.sinks.base import RetryableDeliveryError, SinkResponse, parse_retry_after
from pipeline.alert.sinks.common import call, clip, json_of, permanent, retryable
from pipeline.alert.sinks.redact import redact_url, register_url
from pipeline.config import DiscordSink, read_secret

# Documented limits (Message resource, "Embed Limits").
MAX_CONTENT = 2000
MAX_TITLE = 256
MAX_DESCRIPTION = 4096
MAX_FIELDS = 25
MAX_FIELD_NAME = 256
MAX_FIELD_VALUE = 1024
MAX_FOOTER = 2048
MAX_EMBEDS_TOTAL = 6000
#: Discord's JSON error codes that matter here.
UNKNOWN_WEBHOOK = 10015
UNKNOWN_MESSAGE = 10008
COLOURS = {"critical": 0xC62828, "warning": 0xEF6C00, "info": 0x1565C0}
RESOLVED_COLOUR = 0x2E7D32
TEST_COLOUR = 0x6A1B9A
ICONS = {"firing": "🔴", "update": "🟠", "resolved": "✅"}


def escape(text: str) -> str:
    for ch in ("\\", "*", "_", "`", "~", "|", ">"):
        text = text.replace(ch, "\\" + ch)
    return text


def _colour(n: Notification) -> int:
    if n.test:
        return TEST_COLOUR
    if n.resolved:
        return RESOLVED_COLOUR
    return COLOURS.get(n.incident.severity, 0x616161)


def embed_size(embed: dict[str, Any]) -> int:
    """Characters that count toward the 6000 total: title, description, fields, footer."""
    total = len(embed.get("title", "")) + len(embed.get("description", ""))
    total += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    total += len(embed.get("footer", {}).get("text", ""))
    total += len(embed.get("author", {}).get("name", ""))
    return total


def build_message(n: Notification, *, image: str | None = None) -> dict[str, Any]:
    """``content`` (what notifications show) and one embed with the details."""
    f = n.finding
    lines = [f"**{escape(summary_line(f))}**", escape(since_line(n))]
    if f.explanation:
        lines.append(escape(f.explanation))
    suspect = suspect_line(f)
    if suspect:
        lines.append(escape(suspect))
    links = web_links(n)
    lines += [f"[{escape(k)}]({v})" for k, v in links[:5]]
    if n.test:
        lines.append("*Test notification from meshwatch; no action is needed.*")
    fields = summary_fields(n)
    embed: dict[str, Any] = {
        "title": clip(title(n), MAX_TITLE),
        "description": clip("\n".join(lines), 1500),
        "color": _colour(n),
        "fields": [
            {"name": k, "value": clip(escape(v), 200) or "-", "inline": True}
            for k, v in fields[:MAX_FIELDS]
        ],
        "footer": {
            "text": clip(
                f"meshwatch · fingerprint {n.fingerprint} · id {n.notification_id}", MAX_FOOTER
            )
        },
        "timestamp": datetime.fromtimestamp(f.window_end, tz=UTC).isoformat(),
    }
    if links:
        embed["url"] = links[0][1]
    if image:
        embed["image"] = {"url": f"attachment://{image}"}
    while embed_size(embed) > MAX_EMBEDS_TOTAL and len(embed["description"]) > 100:
        embed["description"] = clip(embed["description"], len(embed["description"]) // 2)
    content = f"{ICONS[n.action]} **{escape(title(n))}**"
    return {
        "content": clip(content, MAX_CONTENT),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }


class DiscordWebhookSink:
    """Posts with ``wait=true`` and edits the message on update and resolve."""

    def __init__(
        self,
        name: str,
        webhook_url: str,
        *,
        username: str | None = "meshwatch",
        attach_chart: bool = False,
    ) -> None:
        self.name = name
        self._url = webhook_url.split("?", 1)[0].rstrip("/")
        self.username = username
        self.attach_chart = attach_chart
        self._target = f"discord {name!r} ({register_url(webhook_url)})"
        register_url(self._url)

    @classmethod
    def from_config(cls, cfg: DiscordSink) -> DiscordWebhookSink:
        url = read_secret(cfg.webhook_url, cfg.webhook_url_file, cfg.webhook_url_env)
        if not url:
            raise ValueError(f"discord sink {cfg.name!r}: the webhook URL is empty")
        return cls(cfg.name, url, username=cfg.username, attach_chart=cfg.attach_chart)

    def __repr__(self) -> str:
        return f"DiscordWebhookSink(name={self.name!r}, url={redact_url(self._url)!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        refs = n.incident.sink_refs.get(self.name, {})
        message_id = refs.get("message_id")
        png = None
        if self.attach_chart:  # an edit without the file would orphan the embed's image
            png = await asyncio.to_thread(chart.render_png, n)
        if message_id:
            edited = await self._request(n, client, "PATCH", message_id, png)
            if edited is not None:
                return SinkResponse(refs=edited, status=200, detail="edited")
        created = await self._request(n, client, "POST", None, png)
        assert created is not None
        return SinkResponse(refs=created, status=200, detail="posted")

    async def _request(
        self,
        n: Notification,
        client: httpx.AsyncClient,
        method: str,
        message_id: str | None,
        png: bytes | None,
    ) -> dict[str, str] | None:
        body = build_message(n, image=chart.FILENAME if png else None)
        if method == "POST" and self.username:
            body["username"] = self.username
        if png:
            body["attachments"] = [{"id": 0, "filename": chart.FILENAME}]
        url = self._url if message_id is None else f"{self._url}/messages/{message_id}"
        params = {"wait": "true"} if method == "POST" else None
        if png:
            response = await call(
                client,
                method,
                url,
                target=self._target,
                params=params,
                data={"payload_json": json.dumps(body, ensure_ascii=False)},
                files={"files[0]": (chart.FILENAME, png, "image/png")},
            )
        else:
            response = await call(
                client, method, url, target=self._target, params=params, json_body=body
            )
        status = response.status_code
        if status == 429:
            raise self._rate_limited(response)
        if status >= 500:
            raise retryable(response, self._target)
        if status == 404:
            code = _error_code(response)
            if message_id is not None and code == UNKNOWN_MESSAGE:
                return None  # the message was deleted: post a new one
            raise permanent(response, self._target, "webhook not found (deleted); stop using it")
        if status != 200:
            raise permanent(response, self._target)
        data = json_of(response, self._target)
        if not isinstance(data, dict) or "id" not in data:
            raise permanent(response, self._target, "no message in the answer (wait=true?)")
        refs = {"message_id": str(data["id"])}
        if data.get("channel_id"):
            refs["channel_id"] = str(data["channel_id"])
        return refs

    def _rate_limited(self, response: httpx.Response) -> RetryableDeliveryError:
        wait = parse_retry_after(response.headers.get("Retry-After"))
        try:
            data = response.json()
            if isinstance(data, dict) and isinstance(data.get("retry_after"), int | float):
                wait = max(0.0, float(data["retry_after"]))
        except ValueError:
            pass
        error = retryable(response, self._target)
        error.retry_after = wait
        return error


def _error_code(response: httpx.Response) -> int | None:
    try:
        data = response.json()
    except ValueError:
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, int) else None
