"""Slack incoming webhook with a Block Kit message.

An incoming webhook answers a plain ``ok`` and returns no message ``ts``, so
a message cannot be edited later: firing, updates and resolves are separate
posts, each complete on its own. Slack also rejects (or silently cuts) long
content, so every text is clipped to the documented limits here, before
sending, rather than discovered as a 400 at 3 a.m.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from pipeline.alert.message import (
    STATUS_TAGS,
    Member,
    Notification,
    fit_lines,
    format_utc,
    group_fields,
    headline,
    since_line,
    subject,
    summary_fields,
    summary_line,
    suspect_line,
    title,
)
from pipeline.alert.sinks.base import (
    PermanentDeliveryError,
    SinkResponse,
    body_excerpt,
    post_json,
    raise_for_status,
)
from pipeline.alert.sinks.redact import redact_url, register_url
from pipeline.config import SlackSink, read_secret

# Documented Block Kit limits (reference §1.1 and Slack's block reference).
MAX_BLOCKS = 50
MAX_HEADER_TEXT = 150
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTION_ELEMENTS = 25
MAX_BUTTON_TEXT = 75
MAX_BUTTON_URL = 3000
MAX_TEXT = 40_000
#: Slack advises keeping ``text`` near 4,000 characters; it is the phone
#: notification, so the headline is all it needs.
TEXT_BUDGET = 4000
#: ``msg_blocks_too_long`` has been seen at ~13.2k characters across all
#: blocks, below every documented limit; stay well clear of it.
BLOCKS_BUDGET = 12_000
#: Values in fields are identifiers, not prose; long ones are clipped hard.
FIELD_BUDGET = 300
MAX_LINK_BUTTONS = 5
#: A group's member list: at most this many characters in all, in sections
#: of at most ``MEMBER_SECTION_TEXT`` each; the rest are counted ("+N more").
MEMBERS_BUDGET = 6000
MEMBER_SECTION_TEXT = 2900

SEVERITY_EMOJI = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
RESOLVED_EMOJI = "✅"
TEST_EMOJI = "🧪"


def escape(text: str) -> str:
    """Slack's three control characters; mrkdwn would read ``<`` as a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def clip_escaped(text: str, limit: int) -> str:
    """Clip already-escaped mrkdwn without leaving half an ``&amp;`` entity behind."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 1)]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def clip_mrkdwn(raw: str, limit: int) -> str:
    return clip_escaped(escape(raw), limit)


def emoji(n: Notification) -> str:
    if n.test:
        return TEST_EMOJI
    if n.resolved:
        return RESOLVED_EMOJI
    return SEVERITY_EMOJI.get(n.incident.severity, "⚪")


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _field(name: str, value: str) -> dict[str, Any]:
    budget = min(FIELD_BUDGET, MAX_FIELD_TEXT) - len(name) - 3
    return _mrkdwn(f"*{name}*\n{clip_mrkdwn(value, budget)}")


def _section(n: Notification) -> dict[str, Any]:
    f = n.finding
    lines = [f"*{escape(summary_line(f))}*", escape(since_line(n))]
    if f.explanation:
        lines.append(escape(f.explanation))
    suspect = suspect_line(f)
    if suspect:
        lines.append(escape(suspect))
    if n.test:
        lines.append("_Test notification from meshwatch; no action is needed._")
    text = clip_escaped("\n".join(lines), MAX_SECTION_TEXT)
    fields = [_field(name, value) for name, value in summary_fields(n)][:MAX_FIELDS]
    return {"type": "section", "text": _mrkdwn(text), "fields": fields}


def _member_line(m: Member) -> str:
    return (
        f"• *{STATUS_TAGS[m.action]}* {escape(subject(m.finding))}: "
        f"{escape(summary_line(m.finding))}"
    )


def _group_sections(n: Notification) -> list[dict[str, Any]]:
    """The group's own section (shared facts) and its members, one line each.

    Every member is named with its observed value against the expected
    band until the budget is spent; the rest are counted, so the message
    stays inside Block Kit's limits however large the group.
    """
    head = [f"*{len(n.members)} alerts* · {escape(since_line(n))}"]
    if n.reason == "repeat":
        head.append("Reminder: still firing.")
    if n.test:
        head.append("_Test notification from meshwatch; no action is needed._")
    fields = [_field(name, value) for name, value in group_fields(n)][:MAX_FIELDS]
    sections = [{"type": "section", "text": _mrkdwn("\n".join(head)), "fields": fields}]
    lines = [clip_escaped(_member_line(m), MEMBER_SECTION_TEXT) for m in n.members]
    chunk: list[str] = []
    for line in fit_lines(lines, MEMBERS_BUDGET):
        if chunk and len("\n".join([*chunk, line])) > MEMBER_SECTION_TEXT:
            sections.append({"type": "section", "text": _mrkdwn("\n".join(chunk))})
            chunk = []
        chunk.append(line)
    if chunk:
        sections.append({"type": "section", "text": _mrkdwn("\n".join(chunk))})
    return sections


def _actions(n: Notification) -> dict[str, Any] | None:
    buttons: list[dict[str, Any]] = []
    for i, (name, url) in enumerate(n.links.items()):
        # Slack refuses the whole message over one bad button URL, so a
        # mistyped link template must cost the link, not the alert.
        usable = url.startswith(("https://", "http://")) and len(url) <= MAX_BUTTON_URL
        if not usable or len(buttons) >= MAX_LINK_BUTTONS:
            continue
        buttons.append(
            {
                "type": "button",
                "text": {"type": "plain_text", "text": clip(name, MAX_BUTTON_TEXT) or "link"},
                "url": url,
                "action_id": f"link_{i}",
            }
        )
    if not buttons:
        return None
    return {"type": "actions", "elements": buttons[:MAX_ACTION_ELEMENTS]}


def _context(n: Notification) -> dict[str, Any]:
    f = n.finding
    parts = [
        f"meshwatch · {f.model} {f.model_version}",
        f"fingerprint `{n.fingerprint}`",
        f"window {format_utc(f.window_end)}",
        # A repeat of this post (a crash right after Slack took it) carries
        # the same id, so people and tools can tell it is the same notice.
        f"id `{n.notification_id}`",
    ]
    elements = [_mrkdwn(clip_mrkdwn(p, MAX_FIELD_TEXT)) for p in parts]
    return {"type": "context", "elements": elements[:MAX_CONTEXT_ELEMENTS]}


def _size(blocks: list[dict[str, Any]]) -> int:
    # JSON length over-counts the visible text, which is the safe direction.
    return len(json.dumps(blocks, ensure_ascii=False))


def build_payload(n: Notification) -> dict[str, Any]:
    """``text`` for notifications and old clients, ``blocks`` for the channel."""
    header_text = clip(f"{emoji(n)} {title(n)}", MAX_HEADER_TEXT)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header_text, "emoji": True}},
        *(_group_sections(n) if n.grouped else [_section(n)]),
    ]
    actions = _actions(n)
    if actions is not None:
        blocks.append(actions)
    blocks.append(_context(n))
    if _size(blocks) > BLOCKS_BUDGET and actions is not None:
        blocks.remove(actions)  # links are the first thing to give up; the facts stay
    if _size(blocks) > BLOCKS_BUDGET:
        blocks[1]["text"]["text"] = clip_escaped(blocks[1]["text"]["text"], 1000)
    if n.grouped:
        fallback = f"{emoji(n)} {headline(n)}"
    else:
        fallback = f"{emoji(n)} {title(n)}: {summary_line(n.finding)}"
    return {
        "text": clip_mrkdwn(fallback, min(TEXT_BUDGET, MAX_TEXT)),
        "blocks": blocks[:MAX_BLOCKS],
    }


class SlackWebhookSink:
    """Posts to one incoming-webhook URL; the URL is the credential."""

    def __init__(self, name: str, webhook_url: str) -> None:
        self.name = name
        self._url = webhook_url
        self._target = f"slack {name!r}"
        register_url(webhook_url)

    @classmethod
    def from_config(cls, cfg: SlackSink) -> SlackWebhookSink:
        url = read_secret(cfg.webhook_url, cfg.webhook_url_file)
        if not url:
            raise ValueError(f"slack sink {cfg.name!r}: the webhook URL is empty")
        return cls(cfg.name, url)

    def __repr__(self) -> str:
        return f"SlackWebhookSink(name={self.name!r}, url={redact_url(self._url)!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        response = await post_json(client, self._url, build_payload(n), target=self._target)
        raise_for_status(response, self._target)
        body = body_excerpt(response).strip()
        if body != "ok":
            # A 2xx that is not "ok" is an error string from Slack (as
            # Alertmanager reads it); the same payload would fail again.
            raise PermanentDeliveryError(
                response.status_code,
                f"{self._target} answered {response.status_code} {body[:200]}",
                body,
            )
        # Incoming webhooks return no message ts: nothing to keep for updates.
        return SinkResponse(refs={}, status=response.status_code, detail="ok")
