"""Google Chat incoming webhook: one thread per incident occurrence.

Every notice of an incident carries the same ``thread.threadKey`` and the URL
asks for ``messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD`` (reference
§1.6), so the firing message starts a thread and updates and the resolve
are replies in it. A webhook cannot edit a message, but the key needs no
stored state: it is derived from the fingerprint and the occurrence's start,
so even a restarted alerter without refs replies into the right thread. The
refs keep the ``thread.name`` and first message ``name`` Chat answers with.

Every post carries a ``requestId`` derived from the notification id. Chat
documents that "specifying an existing request ID returns the message created
with that ID instead of creating a new message", so a post repeated after a
timeout, or after an alerter crash between Chat's answer and the outbox
tombstone, returns the first message instead of posting a second.

Messages are limited to 32,000 bytes; the text is cut well below that.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from pipeline.alert.message import Notification, body_lines, format_number, title
from pipeline.alert.sinks.base import SinkResponse
from pipeline.alert.sinks.common import call, clip_bytes, json_of, permanent, retryable
from pipeline.alert.sinks.redact import redact_url, register_url
from pipeline.config import GoogleChatSink, read_secret

MAX_MESSAGE_BYTES = 32_000
TEXT_BUDGET_BYTES = 30_000
MAX_THREAD_KEY = 4000
REPLY_OPTION = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
ICONS = {"firing": "🔴", "update": "🟠", "resolved": "✅"}


def thread_key(n: Notification) -> str:
    """Stable for one occurrence: a new firing after a resolve starts a new thread."""
    key = f"meshwatch-{n.fingerprint}-{int(n.incident.first_seen)}"
    return f"{key}-test" if n.test else key


#: Namespace of the request ids (a UUID is what Chat recommends for them).
REQUEST_ID_NAMESPACE = uuid.UUID("5b0f7c4e-3a57-4c1e-9a43-6d65736877a1")


def request_id(sink: str, n: Notification) -> str:
    """The same UUID for every attempt of one notice at one sink, and only for it."""
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{sink}\n{n.notification_id}"))


def escape(text: str) -> str:
    """Chat reads ``*``, ``_``, ``~`` and backticks as formatting; ``<`` as a link."""
    return text.replace("<", "‹").replace(">", "›").replace("*", "∗").replace("`", "'")


def build_payload(n: Notification) -> dict[str, Any]:
    f = n.finding
    lines = [f"{ICONS[n.action]} *{escape(title(n))}*"]
    lines += [escape(line) for line in body_lines(n)]
    lines.append(
        f"{f.namespace} · {f.workload_kind}/{f.workload} · {f.direction} {escape(f.route)} · "
        f"severity {n.incident.severity} · score {format_number(f.score)}"
    )
    for name, url in n.links.items():
        if url.startswith(("https://", "http://")) and "|" not in url and ">" not in url:
            lines.append(f"<{url}|{escape(name).replace('|', '/')}>")
    lines.append(f"fingerprint `{n.fingerprint}`")
    return {
        "text": clip_bytes("\n".join(lines), TEXT_BUDGET_BYTES),
        "thread": {"threadKey": thread_key(n)[:MAX_THREAD_KEY]},
    }


class GoogleChatWebhookSink:
    """POSTs to a space's webhook URL (its ``key`` and ``token`` are the credential)."""

    def __init__(self, name: str, webhook_url: str) -> None:
        self.name = name
        self._url = webhook_url
        self._target = f"google-chat {name!r} ({register_url(webhook_url)})"
        # Merged into the webhook's own query (key, token); httpx's ``params=``
        # would replace that query instead.
        self._post_url = str(
            httpx.URL(webhook_url).copy_merge_params({"messageReplyOption": REPLY_OPTION})
        )
        register_url(self._post_url)

    @classmethod
    def from_config(cls, cfg: GoogleChatSink) -> GoogleChatWebhookSink:
        url = read_secret(cfg.webhook_url, cfg.webhook_url_file, cfg.webhook_url_env)
        if not url:
            raise ValueError(f"google_chat sink {cfg.name!r}: the webhook URL is empty")
        return cls(cfg.name, url)

    def __repr__(self) -> str:
        return f"GoogleChatWebhookSink(name={self.name!r}, url={redact_url(self._url)!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        url = str(
            httpx.URL(self._post_url).copy_merge_params({"requestId": request_id(self.name, n)})
        )
        response = await call(client, "POST", url, target=self._target, json_body=build_payload(n))
        if response.status_code == 429 or response.status_code >= 500:
            raise retryable(response, self._target)
        if response.status_code != 200:
            raise permanent(response, self._target)
        data = json_of(response, self._target)
        refs: dict[str, str] = {}
        if isinstance(data, dict):
            thread = data.get("thread")
            if isinstance(thread, dict) and thread.get("name"):
                refs["thread"] = str(thread["name"])
            if data.get("name") and not n.incident.sink_refs.get(self.name, {}).get("message"):
                refs["message"] = str(data["name"])
        return SinkResponse(refs=refs, status=200, detail="posted")
