"""A stand-in for Slack's Web API: ``chat.postMessage``, ``chat.update``, file uploads,
``conversations.history`` and ``conversations.replies``.

Answers like Slack (reference §1.2): HTTP 200 with ``{"ok": true, "channel",
"ts", ...}`` or ``{"ok": false, "error": "..."}``; a missing or wrong bot
token is ``not_authed`` / ``invalid_auth``; ``chat.update`` needs a channel
*ID* and an existing ``ts``; a rate limit is HTTP 429 with ``Retry-After``
and ``ratelimited``. Messages are kept per channel with their thread replies
and edits, so a test can check that an update landed on the same message.

History and replies take form bodies like Slack's (``channel`` must be an
ID; ``limit``, ``cursor``, ``include_all_metadata``); history lists top-level
messages newest first in pages (``has_more``, ``response_metadata.next_cursor``),
replies the parent then its replies oldest first. Message ``metadata`` is in
the answer only with ``include_all_metadata=true``, as in Slack.

Stricter than Slack where leniency would hide a bug: a ``thread_ts`` that is
not a top-level message of the channel is refused (``thread_not_found``)
instead of quietly starting a new conversation, and message content goes
through the same Block Kit checks as the incoming-webhook fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.receivers.api import (
    ApiReceiver,
    Call,
    Counter,
    Effect,
    RejectedError,
    json_reply,
)
from pipeline.receivers.base import Problem, Received, Reply
from pipeline.receivers.slack import validate_slack

DEFAULT_TOKEN = "xoxb-0000000000-0000000000000-TESTTOKENTESTTOKEN"
DEFAULT_CHANNELS = {"C0ALERTS01": "alerts"}
BOT_ID = "B0MESHWATCH"
TS_BASE = 1_700_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Fields of chat.postMessage / chat.update that an incoming webhook lacks.
API_ONLY_FIELDS = ("ts", "as_user")


@dataclass
class SlackMessage:
    channel: str
    ts: str
    text: str
    blocks: list[Any]
    thread_ts: str | None = None
    reply_broadcast: bool = False
    metadata: Any = None
    edits: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class SlackFile:
    id: str
    filename: str
    length: int
    data: bytes | None = None
    channel: str | None = None
    thread_ts: str | None = None
    title: str = ""


class SlackApiReceiver(ApiReceiver):
    """``/api/<method>`` like slack.com, plus the upload URL it hands out."""

    service: ClassVar[str] = "slack-api"

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        channels: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.token = token
        self.channels = dict(channels or DEFAULT_CHANNELS)  # id -> name
        self.messages: dict[tuple[str, str], SlackMessage] = {}
        self.files: dict[str, SlackFile] = {}
        self._ts = Counter()
        self._file_ids = Counter()
        super().__init__(**kwargs)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    # -- inspection ------------------------------------------------------------------

    def top_level(self, channel: str) -> list[SlackMessage]:
        return [m for m in self.messages.values() if m.channel == channel and not m.thread_ts]

    def thread(self, channel: str, ts: str) -> list[SlackMessage]:
        return [m for m in self.messages.values() if m.channel == channel and m.thread_ts == ts]

    def refuse_with(self, error: str, times: int = 1, route: str | None = None) -> None:
        """Answer ``ok:false`` with this error string (HTTP 200, as Slack does)."""
        replies = [json_reply(200, {"ok": False, "error": error})] * times
        if route is None:
            self.script(*replies)
        else:
            self.script_on(route, *replies)

    # -- answers ------------------------------------------------------------------------

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        first = problems[0]
        if first.code == "wrong_path":
            return json_reply(404, {"ok": False, "error": "unknown_method"})
        if first.code in ("invalid_method", "invalid_content_type"):
            return json_reply(200, {"ok": False, "error": "invalid_arguments"})
        return json_reply(200, {"ok": False, "error": first.code})

    def not_found(self, method: str, path: str) -> Reply:
        return json_reply(404, {"ok": False, "error": "unknown_method"})

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        error = {429: "ratelimited", 400: "invalid_arguments"}.get(status, "internal_error")
        return json_reply(status, {"ok": False, "error": error}, headers)

    def summarize(self, record: Received) -> str:
        payload = record.payload if isinstance(record.payload, dict) else {}
        text = str(payload.get("text", ""))[:80]
        return f"#{record.seq} {record.route} -> {record.status}: {text}"

    # -- routes -----------------------------------------------------------------------------

    def setup_routes(self) -> None:
        self.route("chat.postMessage", "POST", "/api/chat.postMessage", self._post_message)
        self.route("chat.update", "POST", "/api/chat.update", self._update)
        self.route(
            "conversations.history",
            "POST",
            "/api/conversations.history",
            self._history,
            body="form",
        )
        self.route(
            "conversations.replies",
            "POST",
            "/api/conversations.replies",
            self._replies,
            body="form",
        )
        self.route(
            "files.getUploadURLExternal",
            "POST",
            "/api/files.getUploadURLExternal",
            self._upload_url,
            body="form",
        )
        self.route(
            "upload", "POST", r"/upload/v1/(?P<file_id>F[0-9A-Z]+)", self._upload, body="any"
        )
        self.route(
            "files.completeUploadExternal",
            "POST",
            "/api/files.completeUploadExternal",
            self._complete_upload,
        )

    def authorize(self, call: Call) -> list[Problem]:
        if call.path.startswith("/upload/"):
            return []  # the upload URL is pre-signed
        auth = call.header("authorization")
        if not auth:
            return [Problem("not_authed", "no Authorization header")]
        if auth != f"Bearer {self.token}":
            return [Problem("invalid_auth", "Authorization is not the bot token")]
        return []

    def _channel_id(self, value: Any, *, id_only: bool) -> str:
        if isinstance(value, str) and value in self.channels:
            return value
        if not id_only and isinstance(value, str):
            name = value.removeprefix("#")
            for cid, cname in self.channels.items():
                if cname == name:
                    return cid
        raise RejectedError(Problem("channel_not_found", f"channel {value!r} is not known"))

    def _content(self, payload: dict[str, Any]) -> None:
        content = {k: v for k, v in payload.items() if k not in API_ONLY_FIELDS and k != "channel"}
        if not content.get("text") and not content.get("blocks"):
            raise RejectedError(Problem("no_text", "neither text nor blocks"))
        problems = validate_slack(content)
        if problems:
            code = problems[0].code
            if code == "invalid_payload":
                code = "invalid_arguments"
            raise RejectedError(Problem(code, problems[0].detail), *problems[1:])

    def _warnings(self, call: Call) -> dict[str, Any]:
        content_type = (call.header("content-type") or "").lower()
        if "charset" not in content_type:
            return {
                "warning": "missing_charset",
                "response_metadata": {"warnings": ["missing_charset"]},
            }
        return {}

    def _next_ts(self) -> str:
        n = self._ts.next()
        return f"{TS_BASE + n}.{n:06d}"

    def _post_message(self, call: Call) -> Effect:
        payload = call.payload
        if not isinstance(payload, dict):
            raise RejectedError(Problem("invalid_arguments", "body: expected an object"))
        channel = self._channel_id(payload.get("channel"), id_only=False)
        self._content(payload)
        thread_ts = payload.get("thread_ts")
        if thread_ts is not None:
            parent = self.messages.get((channel, str(thread_ts)))
            if parent is None or parent.thread_ts is not None:
                raise RejectedError(
                    Problem("thread_not_found", f"thread_ts {thread_ts!r} is not a parent message")
                )
        warnings = self._warnings(call)

        def effect() -> Reply:
            ts = self._next_ts()
            message = SlackMessage(
                channel=channel,
                ts=ts,
                text=str(payload.get("text", "")),
                blocks=list(payload.get("blocks") or []),
                thread_ts=None if thread_ts is None else str(thread_ts),
                reply_broadcast=bool(payload.get("reply_broadcast", False)),
                metadata=payload.get("metadata"),
            )
            self.messages[(channel, ts)] = message
            body = {
                "ok": True,
                "channel": channel,
                "ts": ts,
                "message": self._message_json(message),
                **warnings,
            }
            return json_reply(200, body)

        return effect

    @staticmethod
    def _limit(form: dict[str, str], default: int) -> int:
        try:
            limit = int(form.get("limit", default))
        except ValueError:
            raise RejectedError(Problem("invalid_limit", "limit: not a number")) from None
        if not 1 <= limit <= 1000:
            raise RejectedError(Problem("invalid_limit", f"limit {limit}: 1..1000"))
        return limit

    def _listed(self, m: SlackMessage, form: dict[str, str]) -> dict[str, Any]:
        out = self._message_json(m)
        if form.get("include_all_metadata") in ("true", "1") and m.metadata is not None:
            out["metadata"] = m.metadata
        return out

    def _history(self, call: Call) -> Effect:
        form = dict(call.payload or {})
        channel = self._channel_id(form.get("channel"), id_only=True)
        limit = self._limit(form, 100)
        try:
            start = int(form.get("cursor") or 0)
        except ValueError:
            raise RejectedError(Problem("invalid_cursor", "cursor: not ours")) from None

        def effect() -> Reply:
            newest_first = sorted(self.top_level(channel), key=lambda m: float(m.ts), reverse=True)
            page = newest_first[start : start + limit]
            more = start + limit < len(newest_first)
            body: dict[str, Any] = {
                "ok": True,
                "channel": channel,
                "messages": [self._listed(m, form) for m in page],
                "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""},
            }
            return json_reply(200, body)

        return effect

    def _replies(self, call: Call) -> Effect:
        form = dict(call.payload or {})
        channel = self._channel_id(form.get("channel"), id_only=True)
        limit = self._limit(form, 1000)
        parent = self.messages.get((channel, str(form.get("ts"))))
        if parent is None or parent.thread_ts is not None:
            raise RejectedError(Problem("thread_not_found", f"no parent {form.get('ts')!r}"))

        def effect() -> Reply:
            replies = sorted(self.thread(channel, parent.ts), key=lambda m: float(m.ts))
            page = [parent, *replies][:limit]
            body = {
                "ok": True,
                "messages": [self._listed(m, form) for m in page],
                "has_more": len(replies) + 1 > limit,
            }
            return json_reply(200, body)

        return effect

    def _update(self, call: Call) -> Effect:
        payload = call.payload
        if not isinstance(payload, dict):
            raise RejectedError(Problem("invalid_arguments", "body: expected an object"))
        channel = self._channel_id(payload.get("channel"), id_only=True)
        ts = payload.get("ts")
        message = self.messages.get((channel, str(ts)))
        if message is None:
            raise RejectedError(Problem("message_not_found", f"no message {ts!r} in {channel}"))
        self._content(payload)
        warnings = self._warnings(call)

        def effect() -> Reply:
            message.edits.append({"text": message.text, "blocks": message.blocks})
            message.text = str(payload.get("text", message.text))
            if "blocks" in payload:
                message.blocks = list(payload["blocks"] or [])
            body = {
                "ok": True,
                "channel": channel,
                "ts": message.ts,
                "text": message.text,
                "message": self._message_json(message),
                **warnings,
            }
            return json_reply(200, body)

        return effect

    def _upload_url(self, call: Call) -> Effect:
        form = call.payload
        assert isinstance(form, dict)
        filename = form.get("filename")
        length = form.get("length", "")
        if not filename or not str(length).isdigit() or int(length) <= 0:
            raise RejectedError(Problem("invalid_arguments", "filename and length are required"))

        def effect() -> Reply:
            file_id = f"F{self._file_ids.next():010d}"
            self.files[file_id] = SlackFile(file_id, str(filename), int(length))
            return json_reply(
                200,
                {"ok": True, "upload_url": f"{self.url}/upload/v1/{file_id}", "file_id": file_id},
            )

        return effect

    def _upload(self, call: Call) -> Effect:
        file = self.files.get(call.params["file_id"])
        if file is None:
            raise RejectedError(Problem("file_not_found", "no such upload", status=404))
        if call.files:
            data = call.files[0].data
        elif (call.header("content-type") or "").startswith("multipart/"):
            raise RejectedError(Problem("invalid_payload", "multipart upload without a file"))
        else:
            data = call.body
        if len(data) != file.length:
            raise RejectedError(
                Problem("invalid_payload", f"{len(data)} bytes, announced {file.length}")
            )

        def effect() -> Reply:
            file.data = data
            return Reply(200, f"OK - {len(data)}")

        return effect

    def _complete_upload(self, call: Call) -> Effect:
        payload = call.payload
        if not isinstance(payload, dict) or not isinstance(payload.get("files"), list):
            raise RejectedError(Problem("invalid_arguments", "files: expected an array"))
        entries = payload["files"]
        found: list[SlackFile] = []
        for entry in entries:
            file = self.files.get(str(entry.get("id")) if isinstance(entry, dict) else "")
            if file is None or file.data is None:
                raise RejectedError(Problem("file_not_found", f"file {entry!r} was not uploaded"))
            found.append(file)
        channel = payload.get("channel_id")
        if channel is not None:
            channel = self._channel_id(channel, id_only=True)
        thread_ts = payload.get("thread_ts")
        if thread_ts is not None and (channel, str(thread_ts)) not in self.messages:
            raise RejectedError(Problem("thread_not_found", f"no parent message {thread_ts!r}"))

        def effect() -> Reply:
            for file, entry in zip(found, entries, strict=True):
                file.channel = channel
                file.thread_ts = None if thread_ts is None else str(thread_ts)
                file.title = str(entry.get("title", ""))
                if channel is not None and thread_ts is not None:
                    self.messages[(channel, str(thread_ts))].files.append(file.id)
            return json_reply(
                200, {"ok": True, "files": [{"id": f.id, "title": f.title} for f in found]}
            )

        return effect

    @staticmethod
    def _message_json(m: SlackMessage) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "bot_id": BOT_ID, "text": m.text, "ts": m.ts}
        if m.blocks:
            out["blocks"] = m.blocks
        if m.thread_ts:
            out["thread_ts"] = m.thread_ts
        return out
