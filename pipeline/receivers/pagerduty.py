"""A stand-in for the PagerDuty Events API v2 (``POST /v2/enqueue``).

Reference §2.1. Checks the event (32-character ``routing_key`` it knows,
``event_action``, ``dedup_key`` ≤ 255, a trigger's ``payload`` with
``summary`` ≤ 1024, ``source`` and ``severity``, ISO 8601 ``timestamp``,
512 KB at most) and answers 202 ``{"status": "success", "message": "Event
processed", "dedup_key"}`` or 400 ``invalid event`` with the errors.

It keeps alerts by dedup key with PagerDuty's semantics: a trigger opens an
alert or adds to the open one; acknowledge and resolve apply to the open
alert and are dropped otherwise; after a resolve, a trigger opens a new
alert. Each alert lists its events, so a test sees what landed where.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pipeline.receivers.api import ApiReceiver, Call, Counter, Effect, RejectedError, json_reply
from pipeline.receivers.base import Problem, Received, Reply

ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12"
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_DEDUP_KEY = 255
MAX_SUMMARY = 1024
MAX_EVENT_BYTES = 512 * 1024
TOP_LEVEL = frozenset(
    {
        "routing_key",
        "event_action",
        "dedup_key",
        "payload",
        "images",
        "links",
        "client",
        "client_url",
    }
)
PAYLOAD_FIELDS = frozenset(
    {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}
)


@dataclass
class PdAlert:
    number: int
    dedup_key: str
    status: str  # triggered | acknowledged | resolved
    severity: str
    summary: str
    events: list[dict[str, Any]] = field(default_factory=list)


def validate_event(event: Any, known_keys: Sequence[str]) -> list[str]:
    if not isinstance(event, dict):
        return ["Event object is invalid: expected a JSON object"]
    errors = [f"'{k}' is not a valid field" for k in sorted(set(event) - TOP_LEVEL)]
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    elif key not in known_keys:
        errors.append("'routing_key' is not an integration key of this account")
    action = event.get("event_action")
    if action not in ACTIONS:
        errors.append(f"'event_action' is invalid (must be one of {', '.join(ACTIONS)})")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not 0 < len(dedup) <= MAX_DEDUP_KEY):
        errors.append(f"'dedup_key' must be a string of at most {MAX_DEDUP_KEY} characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            errors += [
                f"'payload.{k}' is not a valid field" for k in sorted(set(payload) - PAYLOAD_FIELDS)
            ]
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary:
                errors.append("'payload.summary' is missing or blank")
            elif len(summary) > MAX_SUMMARY:
                errors.append(f"'payload.summary' is longer than {MAX_SUMMARY} characters")
            if not isinstance(payload.get("source"), str) or not payload.get("source"):
                errors.append("'payload.source' is missing or blank")
            if payload.get("severity") not in SEVERITIES:
                errors.append(f"'payload.severity' must be one of {', '.join(SEVERITIES)}")
            stamp = payload.get("timestamp")
            if stamp is not None:
                try:
                    datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
                except ValueError:
                    errors.append("'payload.timestamp' is not ISO 8601")
            details = payload.get("custom_details")
            if details is not None and not isinstance(details, dict):
                errors.append("'payload.custom_details' must be an object")
    for link in event.get("links") or []:
        if not isinstance(link, dict) or not isinstance(link.get("href"), str):
            errors.append("'links' entries need an href")
    if len(json.dumps(event).encode()) > MAX_EVENT_BYTES:
        errors.append("Event is larger than 512 KB")
    return errors


class PagerDutyReceiver(ApiReceiver):
    service: ClassVar[str] = "pagerduty"

    def __init__(self, *, routing_keys: Sequence[str] = (ROUTING_KEY,), **kwargs: Any) -> None:
        self.routing_keys = list(routing_keys)
        self.alerts: list[PdAlert] = []
        self.dropped: list[dict[str, Any]] = []
        self._numbers = Counter()
        super().__init__(**kwargs)

    @property
    def enqueue_url(self) -> str:
        return f"{self.url}/v2/enqueue"

    def open_alert(self, dedup_key: str) -> PdAlert | None:
        return next(
            (a for a in self.alerts if a.dedup_key == dedup_key and a.status != "resolved"), None
        )

    def alerts_for(self, dedup_key: str) -> list[PdAlert]:
        return [a for a in self.alerts if a.dedup_key == dedup_key]

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        if problems[0].code == "invalid_content_type":
            return json_reply(
                400,
                {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": ["Content-Type must be application/json"],
                },
            )
        return json_reply(
            400,
            {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": [p.detail for p in problems],
            },
        )

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        if status == 429:
            return json_reply(
                429,
                {
                    "status": "throttle event",
                    "message": "Requests for this "
                    "service are arriving too quickly. Please retry later.",
                },
                headers,
            )
        if status == 400:
            return json_reply(
                400,
                {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": ["scripted refusal"],
                },
            )
        return json_reply(status, {"status": "error", "message": "Internal error"}, headers)

    def summarize(self, record: Received) -> str:
        e = record.payload if isinstance(record.payload, dict) else {}
        summary = (e.get("payload") or {}).get("summary", "")
        return f"#{record.seq} {e.get('event_action')} -> {record.status}: {summary}"

    def setup_routes(self) -> None:
        self.route("enqueue", "POST", "/v2/enqueue", self._enqueue)

    def _enqueue(self, call: Call) -> Effect:
        event = call.payload
        errors = validate_event(event, self.routing_keys)
        if errors:
            raise RejectedError(*[Problem("invalid_event", e) for e in errors])
        action = event["event_action"]
        dedup = event.get("dedup_key") or uuid.uuid4().hex

        def effect() -> Reply:
            current = self.open_alert(dedup)
            if action == "trigger":
                payload = event["payload"]
                if current is None:
                    current = PdAlert(
                        self._numbers.next(),
                        dedup,
                        "triggered",
                        payload["severity"],
                        payload["summary"],
                    )
                    self.alerts.append(current)
                current.severity = payload["severity"]
                current.summary = payload["summary"]
                current.events.append(event)
            elif current is None:
                self.dropped.append(event)  # nothing open under that key: PagerDuty drops it
            else:
                current.status = "acknowledged" if action == "acknowledge" else "resolved"
                current.events.append(event)
            body = {"status": "success", "message": "Event processed", "dedup_key": dedup}
            return json_reply(202, body)

        return effect
