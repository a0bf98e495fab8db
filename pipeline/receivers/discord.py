"""A stand-in for a Discord webhook: execute (``?wait=true``) and edit messages.

Reference §1.5. ``POST /api/webhooks/{id}/{token}`` creates a message; with
``wait=true`` the answer is the message object (``id``, ``channel_id``, ...),
without it a bare 204. ``PATCH .../messages/{message_id}`` edits it. JSON or
``multipart/form-data`` with ``payload_json`` and ``files[n]``; an embed's
``attachment://name`` must name an uploaded file. Limits: content 2000,
10 embeds, title 256, description 4096, 25 fields of 256/1024, footer 2048,
6000 characters across embeds; a breach is Discord's 400 ``Invalid Form
Body`` (code 50035). A wrong token is 401 (50027); a deleted webhook 404
(10015); an unknown message 404 (10008). 429s carry ``Retry-After`` and a
JSON ``retry_after`` in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.receivers.api import ApiReceiver, Call, Counter, Effect, RejectedError, json_reply
from pipeline.receivers.base import Problem, Received, Reply

WEBHOOK_ID = "1200000000000000001"
WEBHOOK_TOKEN = "discord-test-token_0123456789abcdefABCDEF"
CHANNEL_ID = "1100000000000000042"
MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_TITLE = 256
MAX_DESCRIPTION = 4096
MAX_FIELDS = 25
MAX_FIELD_NAME = 256
MAX_FIELD_VALUE = 1024
MAX_FOOTER = 2048
MAX_AUTHOR = 256
MAX_EMBEDS_TOTAL = 6000
INVALID_FORM_BODY = 50035
CREATE_FIELDS = frozenset(
    {
        "content",
        "username",
        "avatar_url",
        "tts",
        "embeds",
        "allowed_mentions",
        "components",
        "attachments",
        "flags",
        "thread_name",
        "applied_tags",
        "poll",
    }
)
EDIT_FIELDS = frozenset(
    {"content", "embeds", "allowed_mentions", "components", "attachments", "flags", "poll"}
)


@dataclass
class DiscordMessage:
    id: str
    content: str
    embeds: list[Any]
    username: str | None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    edits: int = 0


def _embed(embed: Any, where: str) -> tuple[int, list[str]]:
    if not isinstance(embed, dict):
        return 0, [f"{where}: expected an object"]
    errors: list[str] = []
    total = 0

    def text(value: Any, at: str, limit: int) -> None:
        nonlocal total
        if value is None:
            return
        if not isinstance(value, str):
            errors.append(f"{at}: expected a string")
        elif len(value) > limit:
            errors.append(f"{at}: {len(value)} characters, at most {limit}")
        else:
            total += len(value)

    text(embed.get("title"), f"{where}.title", MAX_TITLE)
    text(embed.get("description"), f"{where}.description", MAX_DESCRIPTION)
    footer = embed.get("footer")
    if footer is not None:
        text(
            footer.get("text") if isinstance(footer, dict) else 1,
            f"{where}.footer.text",
            MAX_FOOTER,
        )
    author = embed.get("author")
    if author is not None:
        text(
            author.get("name") if isinstance(author, dict) else 1,
            f"{where}.author.name",
            MAX_AUTHOR,
        )
    fields = embed.get("fields") or []
    if not isinstance(fields, list) or len(fields) > MAX_FIELDS:
        errors.append(f"{where}.fields: at most {MAX_FIELDS}")
    else:
        for i, f in enumerate(fields):
            if not isinstance(f, dict) or not f.get("name") or not f.get("value"):
                errors.append(f"{where}.fields[{i}]: name and value are required")
                continue
            text(f["name"], f"{where}.fields[{i}].name", MAX_FIELD_NAME)
            text(f["value"], f"{where}.fields[{i}].value", MAX_FIELD_VALUE)
    colour = embed.get("color")
    if colour is not None and (not isinstance(colour, int) or not 0 <= colour <= 0xFFFFFF):
        errors.append(f"{where}.color: expected an integer 0..0xFFFFFF")
    return total, errors


def validate_discord(payload: Any, filenames: Sequence[str], *, edit: bool) -> list[str]:
    """Every way ``payload`` breaks Discord's execute/edit webhook body."""
    if not isinstance(payload, dict):
        return ["body: expected a JSON object"]
    allowed = EDIT_FIELDS if edit else CREATE_FIELDS
    errors = [f"{k}: unknown field" for k in sorted(set(payload) - allowed)]
    content = payload.get("content")
    if content is not None and (not isinstance(content, str) or len(content) > MAX_CONTENT):
        errors.append(f"content: at most {MAX_CONTENT} characters")
    embeds = payload.get("embeds")
    if embeds is not None:
        if not isinstance(embeds, list) or len(embeds) > MAX_EMBEDS:
            errors.append(f"embeds: at most {MAX_EMBEDS}")
        else:
            total = 0
            for i, embed in enumerate(embeds):
                size, problems = _embed(embed, f"embeds[{i}]")
                total += size
                errors += problems
                image = embed.get("image") if isinstance(embed, dict) else None
                url = image.get("url") if isinstance(image, dict) else None
                name = url.removeprefix("attachment://") if isinstance(url, str) else None
                if name is not None and name != url and name not in filenames:
                    errors.append(f"embeds[{i}].image.url: no uploaded file {url!r}")
            if total > MAX_EMBEDS_TOTAL:
                errors.append(f"embeds: {total} characters in total, at most {MAX_EMBEDS_TOTAL}")
    if not edit and not content and not embeds and not filenames and not payload.get("poll"):
        errors.append(
            "content, embeds, files or poll: one is required (Cannot send an empty message)"
        )
    return errors


class DiscordReceiver(ApiReceiver):
    service: ClassVar[str] = "discord"

    def __init__(
        self, *, webhook_id: str = WEBHOOK_ID, token: str = WEBHOOK_TOKEN, **kwargs: Any
    ) -> None:
        self.webhook_id = webhook_id
        self.token = token
        self.deleted = False
        self.messages: dict[str, DiscordMessage] = {}
        self._ids = Counter()
        self.uploads: dict[str, bytes] = {}
        super().__init__(**kwargs)

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/api/webhooks/{self.webhook_id}/{self.token}"

    def delete_webhook(self) -> None:
        """From now on the webhook is gone (404 Unknown Webhook), as after a deletion."""
        self.deleted = True

    def delete_message(self, message_id: str) -> None:
        self.messages.pop(message_id, None)

    # -- answers -------------------------------------------------------------------------

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        first = problems[0]
        if first.code == "unknown_webhook":
            return json_reply(404, {"message": "Unknown Webhook", "code": 10015})
        if first.code == "invalid_token":
            return json_reply(401, {"message": "Invalid Webhook Token", "code": 50027})
        if first.code == "unknown_message":
            return json_reply(404, {"message": "Unknown Message", "code": 10008})
        if first.code in ("invalid_method", "invalid_content_type"):
            return json_reply(
                405 if first.code == "invalid_method" else 400, {"message": first.detail, "code": 0}
            )
        errors = {
            f"_{i}": {"_errors": [{"code": "BASE_TYPE_INVALID", "message": p.detail}]}
            for i, p in enumerate(problems)
        }
        return json_reply(
            400, {"message": "Invalid Form Body", "code": INVALID_FORM_BODY, "errors": errors}
        )

    def not_found(self, method: str, path: str) -> Reply:
        return json_reply(404, {"message": "404: Not Found", "code": 0})

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        if status == 429:
            wait = float(headers.get("Retry-After", "1"))
            body: dict[str, Any] = {
                "message": "You are being rate limited.",
                "retry_after": wait,
                "global": False,
            }
            return json_reply(429, body, {**headers, "X-RateLimit-Scope": "user"})
        if status == 400:
            return json_reply(400, {"message": "Invalid Form Body", "code": INVALID_FORM_BODY})
        return json_reply(status, {"message": f"{status}: Server Error", "code": 0}, headers)

    def summarize(self, record: Received) -> str:
        payload = record.payload if isinstance(record.payload, dict) else {}
        if "payload_json" in payload:
            payload = json.loads(payload["payload_json"])
        return f"#{record.seq} {record.method} -> {record.status}: {payload.get('content', '')}"

    # -- routes ------------------------------------------------------------------------------

    def setup_routes(self) -> None:
        base = r"/api(?:/v\d+)?/webhooks/(?P<webhook>\d+)/(?P<token>[^/]+)"
        self.route("execute", "POST", base, self._execute, body="json_or_multipart")
        self.route(
            "edit",
            "PATCH",
            base + r"/messages/(?P<message>\d+)",
            self._edit,
            body="json_or_multipart",
        )

    def authorize(self, call: Call) -> list[Problem]:
        if self.deleted or call.params.get("webhook") != self.webhook_id:
            return [Problem("unknown_webhook", "no such webhook", 404)]
        if call.params.get("token") != self.token:
            return [Problem("invalid_token", "the webhook token is wrong", 401)]
        return []

    def _body(self, call: Call) -> tuple[dict[str, Any], dict[str, bytes]]:
        if call.files or (isinstance(call.payload, dict) and "payload_json" in call.payload):
            try:
                payload = json.loads(call.payload.get("payload_json", "{}"))
            except ValueError as exc:
                raise RejectedError(Problem("invalid_form", f"payload_json: {exc}")) from None
            files = {f.filename: f.data for f in call.files}
            for f in call.files:
                if not f.name.startswith("files["):
                    raise RejectedError(Problem("invalid_form", f"file field {f.name!r}"))
            return payload, files
        return call.payload, {}

    def _check(self, payload: Any, files: dict[str, bytes], *, edit: bool) -> None:
        errors = validate_discord(payload, list(files), edit=edit)
        if errors:
            raise RejectedError(*[Problem("invalid_form", e) for e in errors])

    def _execute(self, call: Call) -> Effect:
        payload, files = self._body(call)
        self._check(payload, files, edit=False)
        wait = call.query.get("wait", "false").lower() == "true"

        def effect() -> Reply:
            message = self._store(payload, files)
            if not wait:
                return Reply(204, "")
            return json_reply(200, self._message_json(message))

        return effect

    def _edit(self, call: Call) -> Effect:
        message = self.messages.get(call.params["message"])
        if message is None:
            raise RejectedError(Problem("unknown_message", "no such message", 404))
        payload, files = self._body(call)
        self._check(payload, files, edit=True)

        def effect() -> Reply:
            message.edits += 1
            if "content" in payload:
                message.content = str(payload["content"] or "")
            if "embeds" in payload:
                message.embeds = list(payload["embeds"] or [])
            if "attachments" in payload:  # the list names what stays, plus new files
                message.attachments = [
                    {"id": str(self._ids.next()), "filename": name, "size": len(data)}
                    for name, data in files.items()
                ]
                self.uploads.update(files)
            return json_reply(200, self._message_json(message))

        return effect

    def _store(self, payload: dict[str, Any], files: dict[str, bytes]) -> DiscordMessage:
        mid = str(1_300_000_000_000_000_000 + self._ids.next())
        message = DiscordMessage(
            id=mid,
            content=str(payload.get("content") or ""),
            embeds=list(payload.get("embeds") or []),
            username=payload.get("username"),
            attachments=[
                {"id": str(self._ids.next()), "filename": name, "size": len(data)}
                for name, data in files.items()
            ],
        )
        self.uploads.update(files)
        self.messages[mid] = message
        return message

    def _message_json(self, m: DiscordMessage) -> dict[str, Any]:
        return {
            "id": m.id,
            "type": 0,
            "channel_id": CHANNEL_ID,
            "webhook_id": self.webhook_id,
            "content": m.content,
            "embeds": m.embeds,
            "attachments": m.attachments,
            "author": {"id": self.webhook_id, "username": m.username or "webhook", "bot": True},
            "edited_timestamp": "2024-01-01T00:00:00+00:00" if m.edits else None,
        }
