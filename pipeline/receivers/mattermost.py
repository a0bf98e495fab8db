"""A stand-in for a Mattermost incoming webhook (reference §1.4).

Mattermost answers a valid post with 200 and the plain text ``ok`` and
refuses others with its JSON AppError (``id``, ``message``, ``status_code``).
A post needs ``text`` or ``attachments``; attachments use Slack's fields,
colours are hex or ``good``/``warning``/``danger``; a post is at most
16,383 characters (reported). Unknown fields are refused here (Mattermost
ignores them), so a typo shows up in a test rather than as a missing detail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from aiohttp import web

from pipeline.receivers.base import Problem, Received, Receiver, Reply

MAX_POST = 16_383
TOP_LEVEL_FIELDS = frozenset(
    {
        "text",
        "channel",
        "username",
        "icon_url",
        "icon_emoji",
        "attachments",
        "props",
        "type",
        "priority",
    }
)
ATTACHMENT_FIELDS = frozenset(
    {
        "fallback",
        "color",
        "pretext",
        "text",
        "author_name",
        "author_link",
        "author_icon",
        "title",
        "title_link",
        "fields",
        "image_url",
        "thumb_url",
        "footer",
        "footer_icon",
        "id",
        "actions",
        "ts",
    }
)
_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def _post_length(payload: dict[str, Any]) -> int:
    total = len(str(payload.get("text") or ""))
    for att in payload.get("attachments") or []:
        if isinstance(att, dict):
            total += sum(len(str(att.get(k) or "")) for k in ("pretext", "text", "title"))
            for f in att.get("fields") or []:
                if isinstance(f, dict):
                    total += len(str(f.get("title") or "")) + len(str(f.get("value") or ""))
    return total


def validate_mattermost(payload: Any) -> list[Problem]:
    if not isinstance(payload, dict):
        return [Problem("web.incoming_webhook.parse.app_error", "body: expected a JSON object")]
    problems: list[Problem] = []
    text, attachments = payload.get("text"), payload.get("attachments")
    if not (isinstance(text, str) and text.strip()) and not attachments:
        problems.append(Problem("web.incoming_webhook.text.app_error", "no text or attachments"))
    problems += [
        Problem("web.incoming_webhook.parse.app_error", f"{k}: not an incoming-webhook field")
        for k in sorted(set(payload) - TOP_LEVEL_FIELDS)
    ]
    if attachments is not None:
        if not isinstance(attachments, list):
            problems.append(Problem("web.incoming_webhook.parse.app_error", "attachments: array"))
        else:
            for i, att in enumerate(attachments):
                problems += _attachment(att, f"attachments[{i}]")
    if "props" in payload and not isinstance(payload["props"], dict):
        problems.append(Problem("web.incoming_webhook.parse.app_error", "props: expected object"))
    length = _post_length(payload)
    if length > MAX_POST:
        problems.append(
            Problem("model.post.is_valid.msg.app_error", f"post: {length} characters > {MAX_POST}")
        )
    return problems


def _attachment(att: Any, where: str) -> list[Problem]:
    code = "web.incoming_webhook.parse.app_error"
    if not isinstance(att, dict):
        return [Problem(code, f"{where}: expected an object")]
    problems = [
        Problem(code, f"{where}.{k}: not an attachment field")
        for k in sorted(set(att) - ATTACHMENT_FIELDS)
    ]
    colour = att.get("color")
    named = colour in (None, "good", "warning", "danger")
    if not named and (not isinstance(colour, str) or not _COLOUR.match(colour)):
        problems.append(Problem(code, f"{where}.color: {colour!r} is not a colour"))
    for key in ("title_link", "image_url", "thumb_url"):
        url = att.get(key)
        if url is not None and not (
            isinstance(url, str) and url.startswith(("http://", "https://"))
        ):
            problems.append(Problem(code, f"{where}.{key}: not an http(s) URL"))
    fields = att.get("fields")
    if fields is not None:
        if not isinstance(fields, list):
            problems.append(Problem(code, f"{where}.fields: expected an array"))
        else:
            for j, f in enumerate(fields):
                if not isinstance(f, dict) or not isinstance(f.get("title"), str):
                    problems.append(Problem(code, f"{where}.fields[{j}]: needs a title"))
                elif "short" in f and not isinstance(f["short"], bool):
                    problems.append(Problem(code, f"{where}.fields[{j}].short: boolean"))
    return problems


class MattermostReceiver(Receiver):
    service: ClassVar[str] = "mattermost"
    default_path: ClassVar[str] = "/hooks/xxxmeshwatchtestwebhookxx"

    def validate(self, payload: Any, request: web.Request) -> list[Problem]:
        return validate_mattermost(payload)

    def success(self) -> Reply:
        return Reply(200, "ok")

    def _app_error(self, status: int, code: str, message: str) -> Reply:
        body = {
            "id": code,
            "message": message,
            "detailed_error": "",
            "request_id": "meshwatch",
            "status_code": status,
        }
        return Reply(status, json.dumps(body), content_type="application/json")

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        first = problems[0]
        status = {"invalid_method": 405, "invalid_content_type": 415}.get(first.code, 400)
        return self._app_error(status, first.code, "; ".join(p.detail for p in problems))

    def wrong_path(self, path: str) -> Reply:
        return self._app_error(400, "web.incoming_webhook.invalid.app_error", "Invalid webhook.")

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        message = "Too many requests. Please try again later." if status == 429 else "error"
        reply = self._app_error(status, "api.context.error", message)
        return Reply(reply.status, reply.body, reply.content_type, headers)

    def summarize(self, record: Received) -> str:
        if not record.valid or not isinstance(record.payload, dict):
            return super().summarize(record)
        return f"#{record.seq} -> {record.status}: {record.payload.get('text', '')}"
