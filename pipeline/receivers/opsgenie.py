"""A stand-in for Opsgenie's Alert API (v2), by alias.

Reference §2.2. ``POST /v2/alerts`` creates (``message`` ≤ 130 required,
``alias`` ≤ 512, ``description`` ≤ 15,000, ≤ 20 tags of ≤ 50, ``details``
≤ 8,000 characters in total, ``priority`` P1..P5); a create whose alias
matches an open alert only raises its count. ``POST /v2/alerts/{id}/close``
and ``.../notes`` take ``identifierType=alias``. Everything answers 202
``{"result": "Request will be processed", "took", "requestId"}``; a bad
request is 422 with a ``message``; auth is ``Authorization: GenieKey <key>``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.receivers.api import ApiReceiver, Call, Effect, RejectedError, json_reply
from pipeline.receivers.base import Problem, Received, Reply

API_KEY = "eb243592-faa2-4ba2-a551q-1afdf565c889"
MAX_MESSAGE = 130
MAX_ALIAS = 512
MAX_DESCRIPTION = 15_000
MAX_TAGS = 20
MAX_TAG = 50
MAX_DETAILS = 8000
MAX_ENTITY = 512
MAX_NOTE = 25_000
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
CREATE_FIELDS = frozenset(
    {
        "message",
        "alias",
        "description",
        "responders",
        "visibleTo",
        "actions",
        "tags",
        "details",
        "entity",
        "source",
        "priority",
        "user",
        "note",
    }
)


@dataclass
class OgAlert:
    alias: str
    message: str
    priority: str
    status: str = "open"
    count: int = 1
    notes: list[str] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)


class OpsgenieReceiver(ApiReceiver):
    service: ClassVar[str] = "opsgenie"

    def __init__(self, *, api_key: str = API_KEY, **kwargs: Any) -> None:
        self.api_key = api_key
        self.alerts: list[OgAlert] = []
        self.requests_by_id: dict[str, str] = {}
        super().__init__(**kwargs)

    def open_alert(self, alias: str) -> OgAlert | None:
        return next((a for a in self.alerts if a.alias == alias and a.status == "open"), None)

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        first = problems[0]
        status = first.status or 422
        return json_reply(
            status,
            {
                "message": "; ".join(p.detail for p in problems),
                "took": 0.001,
                "requestId": str(uuid.uuid4()),
            },
        )

    def not_found(self, method: str, path: str) -> Reply:
        return json_reply(404, {"message": "Could not find resource", "took": 0.0})

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        message = {
            429: "You are making too many requests! To avoid errors, we recommend you "
            "limit requests.",
            422: "Request has not been processed",
        }.get(status, "Internal")
        return json_reply(
            status, {"message": message, "took": 0.0, "requestId": str(uuid.uuid4())}, headers
        )

    def summarize(self, record: Received) -> str:
        return f"#{record.seq} {record.route} -> {record.status}"

    def setup_routes(self) -> None:
        self.route("create", "POST", "/v2/alerts", self._create)
        self.route("close", "POST", r"/v2/alerts/(?P<identifier>[^/]+)/close", self._close)
        self.route("note", "POST", r"/v2/alerts/(?P<identifier>[^/]+)/notes", self._note)

    def authorize(self, call: Call) -> list[Problem]:
        if call.header("authorization") != f"GenieKey {self.api_key}":
            return [
                Problem(
                    "unauthorized",
                    "Key format is not valid!"
                    if not call.header("authorization")
                    else "Could not authenticate",
                    401,
                )
            ]
        return []

    def _accepted(self, action: str) -> Reply:
        rid = str(uuid.uuid4())
        self.requests_by_id[rid] = action
        return json_reply(
            202, {"result": "Request will be processed", "took": 0.012, "requestId": rid}
        )

    def _create(self, call: Call) -> Effect:
        body = call.payload
        if not isinstance(body, dict):
            raise RejectedError(Problem("invalid", "body: expected an object"))
        problems = [
            Problem("invalid", f"{k}: unknown field") for k in sorted(set(body) - CREATE_FIELDS)
        ]
        message = str(body.get("message") or "")
        if not message.strip():
            problems.append(Problem("invalid", "Message can not be empty."))
        elif len(message) > MAX_MESSAGE:
            problems.append(Problem("invalid", f"Message can not be longer than {MAX_MESSAGE}."))
        for key, limit in (
            ("alias", MAX_ALIAS),
            ("description", MAX_DESCRIPTION),
            ("entity", MAX_ENTITY),
        ):
            value = body.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                problems.append(Problem("invalid", f"{key}: at most {limit} characters"))
        tags = body.get("tags", [])
        if (
            not isinstance(tags, list)
            or len(tags) > MAX_TAGS
            or any(not isinstance(t, str) or len(t) > MAX_TAG for t in tags)
        ):
            problems.append(Problem("invalid", f"tags: at most {MAX_TAGS} of {MAX_TAG} characters"))
        details = body.get("details", {})
        if not isinstance(details, dict) or not all(isinstance(v, str) for v in details.values()):
            problems.append(Problem("invalid", "details: an object of strings"))
        elif sum(len(k) + len(v) for k, v in details.items()) > MAX_DETAILS:
            problems.append(Problem("invalid", f"details: over {MAX_DETAILS} characters"))
        if body.get("priority", "P3") not in PRIORITIES:
            problems.append(Problem("invalid", f"priority: one of {', '.join(PRIORITIES)}"))
        if problems:
            raise RejectedError(*problems)

        def effect() -> Reply:
            alias = body.get("alias") or str(uuid.uuid4())
            current = self.open_alert(alias)
            if current is not None:
                current.count += 1  # de-duplicated by alias
            else:
                self.alerts.append(
                    OgAlert(alias, message, body.get("priority", "P3"), payload=dict(body))
                )
            return self._accepted("create")

        return effect

    def _by_alias(self, call: Call) -> str:
        kind = call.query.get("identifierType", "id")
        if kind not in ("id", "alias", "tiny"):
            raise RejectedError(Problem("invalid", f"identifierType {kind!r} is not valid"))
        if kind != "alias":
            raise RejectedError(Problem("invalid", "this fake knows alerts by alias only"))
        return call.params["identifier"]

    def _note_text(self, call: Call, *, required: bool) -> str:
        body = call.payload if isinstance(call.payload, dict) else {}
        note = body.get("note", "")
        if not isinstance(note, str) or len(note) > MAX_NOTE or (required and not note.strip()):
            raise RejectedError(Problem("invalid", f"note: 1..{MAX_NOTE} characters"))
        return note

    def _close(self, call: Call) -> Effect:
        alias = self._by_alias(call)
        note = self._note_text(call, required=False)

        def effect() -> Reply:
            current = self.open_alert(alias)
            if current is not None:  # processed later; an unknown alias fails then, not here
                current.status = "closed"
                if note:
                    current.notes.append(note)
            return self._accepted("close")

        return effect

    def _note(self, call: Call) -> Effect:
        alias = self._by_alias(call)
        note = self._note_text(call, required=True)

        def effect() -> Reply:
            current = self.open_alert(alias)
            if current is not None:
                current.notes.append(note)
            return self._accepted("note")

        return effect
