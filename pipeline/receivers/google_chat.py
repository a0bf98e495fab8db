"""A stand-in for a Google Chat incoming webhook, with threads.

Reference §1.6: ``POST /v1/spaces/{space}/messages?key=...&token=...`` with
``text`` (or ``cardsV2``); ``thread.threadKey`` (≤ 4,000 characters) groups
messages into a thread *only* together with ``messageReplyOption`` in the
URL: without it every message starts a thread of its own, as in Chat. The
whole message is at most 32,000 bytes. Answers carry the message ``name``
and ``thread.name``; errors are Google's ``{"error": {"code", "message",
"status"}}``. A ``requestId`` query parameter makes the create idempotent,
as documented for ``spaces.messages.create``: "Specifying an existing request
ID returns the message created with that ID instead of creating a new
message."
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.receivers.api import ApiReceiver, Call, Counter, Effect, RejectedError, json_reply
from pipeline.receivers.base import Problem, Received, Reply

SPACE = "AAAAmeshwatch"
KEY = "AIzaSy-test-key-0123456789"
TOKEN = "chat-test-token-0123456789abcdef"
MAX_MESSAGE_BYTES = 32_000
MAX_THREAD_KEY = 4000
REPLY_OPTIONS = frozenset(
    {
        "MESSAGE_REPLY_OPTION_UNSPECIFIED",
        "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
        "REPLY_MESSAGE_OR_FAIL",
    }
)
FIELDS = frozenset({"text", "cardsV2", "cards", "thread", "fallbackText", "accessoryWidgets"})
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@dataclass
class ChatMessage:
    name: str
    thread: str
    thread_key: str | None
    text: str
    request_id: str | None = None


class GoogleChatReceiver(ApiReceiver):
    service: ClassVar[str] = "google-chat"

    def __init__(self, *, key: str = KEY, token: str = TOKEN, **kwargs: Any) -> None:
        self.key = key
        self.token = token
        self.messages: list[ChatMessage] = []
        self.threads: dict[str, str] = {}  # threadKey -> thread name
        self.by_request: dict[str, ChatMessage] = {}  # requestId -> the message it made
        self._ids = Counter()
        super().__init__(**kwargs)

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/v1/spaces/{SPACE}/messages?key={self.key}&token={self.token}"

    def in_thread(self, thread: str) -> list[ChatMessage]:
        return [m for m in self.messages if m.thread == thread]

    # -- answers ------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": STATUS_NAMES.get(status, "UNKNOWN"),
            }
        }
        return json_reply(status, body, headers)

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        status = problems[0].status or 400
        return self._error(status, "; ".join(p.detail for p in problems))

    def not_found(self, method: str, path: str) -> Reply:
        return self._error(404, f"Requested entity was not found: {path}")

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        return self._error(
            status, "Resource has been exhausted" if status == 429 else "error", headers
        )

    def summarize(self, record: Received) -> str:
        text = record.payload.get("text", "") if isinstance(record.payload, dict) else ""
        return f"#{record.seq} -> {record.status}: {text.splitlines()[0] if text else ''}"

    # -- routes -------------------------------------------------------------------------------

    def setup_routes(self) -> None:
        self.route("create", "POST", r"/v1/spaces/(?P<space>[^/]+)/messages", self._create)

    def authorize(self, call: Call) -> list[Problem]:
        if call.query.get("key") != self.key:
            return [Problem("invalid_key", "API key not valid. Please pass a valid API key.", 400)]
        if call.query.get("token") != self.token:
            return [
                Problem("unauthenticated", "Request had invalid authentication credentials.", 401)
            ]
        if call.params.get("space") != SPACE:
            return [Problem("not_found", "no such space", 404)]
        return []

    def _create(self, call: Call) -> Effect:
        payload = call.payload
        if not isinstance(payload, dict):
            raise RejectedError(Problem("invalid", "body: expected an object"))
        problems = [
            Problem("invalid", f'Unknown name "{k}"') for k in sorted(set(payload) - FIELDS)
        ]
        if not payload.get("text") and not payload.get("cardsV2") and not payload.get("cards"):
            problems.append(Problem("invalid", "Message cannot be empty (text or cardsV2)"))
        size = len(json.dumps(payload, ensure_ascii=False).encode())
        if size > MAX_MESSAGE_BYTES:
            problems.append(Problem("invalid", f"message: {size} bytes > {MAX_MESSAGE_BYTES}"))
        thread = payload.get("thread")
        key: str | None = None
        if thread is not None:
            if not isinstance(thread, dict):
                problems.append(Problem("invalid", "thread: expected an object"))
            else:
                raw_key = thread.get("threadKey")
                if raw_key is not None and (
                    not isinstance(raw_key, str) or len(raw_key) > MAX_THREAD_KEY
                ):
                    problems.append(
                        Problem("invalid", f"thread.threadKey: at most {MAX_THREAD_KEY}")
                    )
                key = raw_key if isinstance(raw_key, str) else None
        option = call.query.get("messageReplyOption")
        if option is not None and option not in REPLY_OPTIONS:
            problems.append(Problem("invalid", f"messageReplyOption: {option!r}"))
        if problems:
            raise RejectedError(*problems)
        replying = key is not None and option in (
            "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
            "REPLY_MESSAGE_OR_FAIL",
        )
        if option == "REPLY_MESSAGE_OR_FAIL" and key not in self.threads:
            raise RejectedError(Problem("not_found", "thread not found", 404))

        request_id = call.query.get("requestId") or None

        def effect() -> Reply:
            earlier = self.by_request.get(request_id) if request_id else None
            if earlier is not None:  # the same request again: the message it made, no new one
                return json_reply(200, {"name": earlier.name, "thread": {"name": earlier.thread}})
            n = self._ids.next()
            if replying and key in self.threads:
                thread_name = self.threads[key]
            else:
                thread_name = f"spaces/{SPACE}/threads/T{n:06d}"
                if replying and key is not None:
                    self.threads[key] = thread_name
            message = ChatMessage(
                name=f"spaces/{SPACE}/messages/M{n:06d}.M{n:06d}",
                thread=thread_name,
                thread_key=key,
                text=str(payload.get("text", "")),
                request_id=request_id,
            )
            self.messages.append(message)
            if request_id:
                self.by_request[request_id] = message
            # Webhook answers: the message name and its thread's name.
            return json_reply(200, {"name": message.name, "thread": {"name": thread_name}})

        return effect
