"""Microsoft Teams through a Workflows (Power Automate) webhook, as an Adaptive Card.

Office 365 connectors and their MessageCards are retired; a Workflows flow
("Post to a channel when a webhook request is received") takes only Adaptive
Cards, wrapped in the envelope the flow loops over (reference §1.3):
``{"type": "message", "attachments": [{"contentType":
"application/vnd.microsoft.card.adaptive", "contentUrl": null, "content":
<card>}]}``. The flow answers 202 and runs later, so acceptance is all we
learn; it cannot edit a card, so every notice is a card of its own.

Teams refuses messages over about 28 KB ("Request Entity too large"); the
card is measured as sent and trimmed (links first, then prose) to stay under.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from pipeline.alert.message import (
    Notification,
    body_lines,
    fit_lines,
    format_utc,
    group_fields,
    group_heading,
    member_line,
    since_line,
    title,
    web_links,
)
from pipeline.alert.sinks.base import SinkResponse, body_excerpt
from pipeline.alert.sinks.common import call, clip, permanent, retryable
from pipeline.alert.sinks.redact import redact_url, register_url
from pipeline.config import TeamsSink, read_secret

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
#: Teams' message size limit; the budget leaves room for the envelope.
MAX_MESSAGE_BYTES = 28 * 1024
BUDGET_BYTES = 27 * 1024
MAX_TITLE = 300
MAX_TEXT = 3000
MAX_FACT_VALUE = 500
MAX_ACTIONS = 5
#: A group's member lines may use this many bytes of the card; the rest of
#: the members are counted ("+N more").
MEMBERS_BUDGET_BYTES = 12 * 1024
SEVERITY_STYLE = {"critical": "attention", "warning": "warning", "info": "accent"}
SEVERITY_COLOUR = {"critical": "Attention", "warning": "Warning", "info": "Accent"}


def _style(n: Notification) -> tuple[str, str]:
    if n.resolved:
        return "good", "Good"
    if n.test:
        return "accent", "Accent"
    sev = n.incident.severity
    return SEVERITY_STYLE.get(sev, "emphasis"), SEVERITY_COLOUR.get(sev, "Default")


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **extra}


def build_card(
    n: Notification, *, with_links: bool = True, prose: int = MAX_TEXT
) -> dict[str, Any]:
    f = n.finding
    style, colour = _style(n)
    body: list[dict[str, Any]] = [
        {
            "type": "Container",
            "style": style,
            "bleed": True,
            "items": [
                _text(clip(title(n), MAX_TITLE), weight="Bolder", size="Medium", color=colour)
            ],
        },
    ]
    # The shared lines: numbers, since when, explanation, suspect pod, a
    # reminder note; for a grouped notification one line per member after.
    lines = body_lines(n, with_members=False)
    body.append(_text(clip(lines[0], MAX_TEXT), weight="Bolder"))
    for line in lines[1:]:
        if line == f.explanation:
            if prose:
                body.append(_text(clip(line, prose)))
        elif line == since_line(n):
            body.append(_text(clip(line, MAX_TEXT), isSubtle=True, spacing="None"))
        else:
            body.append(_text(clip(line, MAX_TEXT)))
    if n.grouped:
        body.append(_text(group_heading(n), weight="Bolder"))
        listed = [clip(f"- {member_line(m)}", MAX_FACT_VALUE) for m in n.members]
        for line in fit_lines(listed, MEMBERS_BUDGET_BYTES, measure=_utf8_len):
            body.append(_text(line, spacing="None"))
    facts = group_fields(n)
    body.append(
        {
            "type": "FactSet",
            "facts": [{"title": k, "value": clip(v, MAX_FACT_VALUE)} for k, v in facts],
        }
    )
    body.append(
        _text(
            f"meshwatch · {f.model} {f.model_version} · fingerprint {n.fingerprint} · "
            f"window {format_utc(f.window_end)} · id {n.notification_id}",
            size="Small",
            isSubtle=True,
        )
    )
    card: dict[str, Any] = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
        "msteams": {"width": "full"},
    }
    if with_links:
        actions = [
            {"type": "Action.OpenUrl", "title": clip(name, 100) or "link", "url": url}
            for name, url in web_links(n)
        ][:MAX_ACTIONS]
        if actions:
            card["actions"] = actions
    return card


def _utf8_len(text: str) -> int:
    return len(text.encode())


def envelope(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}],
    }


def size_of(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload, ensure_ascii=False).encode())


def build_payload(n: Notification) -> dict[str, Any]:
    """The envelope with the card, trimmed until it fits Teams' size limit."""
    for with_links, prose in ((True, MAX_TEXT), (False, MAX_TEXT), (False, 500), (False, 0)):
        payload = envelope(build_card(n, with_links=with_links, prose=prose))
        if size_of(payload) <= BUDGET_BYTES:
            return payload
    return payload  # facts alone are a few hundred bytes per value at most


class TeamsWorkflowSink:
    """POSTs the card; 200 and 202 are success (the flow runs asynchronously)."""

    def __init__(self, name: str, webhook_url: str) -> None:
        self.name = name
        self._url = webhook_url
        self._target = f"teams {name!r} ({register_url(webhook_url)})"

    @classmethod
    def from_config(cls, cfg: TeamsSink) -> TeamsWorkflowSink:
        url = read_secret(cfg.webhook_url, cfg.webhook_url_file, cfg.webhook_url_env)
        if not url:
            raise ValueError(f"teams sink {cfg.name!r}: the webhook URL is empty")
        return cls(cfg.name, url)

    def __repr__(self) -> str:
        return f"TeamsWorkflowSink(name={self.name!r}, url={redact_url(self._url)!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        response = await call(
            client, "POST", self._url, target=self._target, json_body=build_payload(n)
        )
        status = response.status_code
        if status == 429 or status >= 500:
            raise retryable(response, self._target)
        if not 200 <= status < 300:  # 202 from the flow trigger; 200 from older endpoints
            raise permanent(response, self._target)
        body = body_excerpt(response)
        # Old connectors reported throttling and size inside a 2xx body.
        if "HTTP error 429" in body:
            raise retryable(response, self._target)
        if "HTTP error 413" in body or "Request Entity too large" in body:
            raise permanent(response, self._target, "message too large")
        return SinkResponse(refs={}, status=status, detail="accepted")
