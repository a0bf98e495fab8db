"""A stand-in for ServiceNow's Table API on the ``incident`` table.

Reference §2.5. ``GET /api/now/table/incident`` with ``sysparm_query``
(``field=value`` terms joined by ``^``, ``ORDERBY``/``ORDERBYDESC`` accepted),
``sysparm_limit`` and ``sysparm_fields``; ``POST`` creates (201, ``Location``
header, ``{"result": record}``); ``PATCH``/``PUT .../{sys_id}`` updates.
Auth is Basic (user and password) or an OAuth Bearer token; JSON both ways.

The out-of-the-box data policy is enforced: resolving (state 6) or closing
(7) needs ``close_code`` and ``close_notes`` (a 403 "Data Policy Exception"
otherwise). ``active`` follows the state. ``work_notes`` are a journal: each
write appends. ``short_description`` over 160 characters is refused (the
platform would cut it silently).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.receivers.api import ApiReceiver, Call, Counter, Effect, RejectedError, json_reply
from pipeline.receivers.base import Problem, Received, Reply

USERNAME = "meshwatch.integration"
PASSWORD = "snow-test-password-0123"
TOKEN = "snow-oauth-test-token-0123456789"
MAX_SHORT_DESCRIPTION = 160
MAX_CORRELATION = 100
CLOSED_STATES = ("6", "7", "8")
WRITABLE = frozenset(
    {
        "short_description",
        "description",
        "urgency",
        "impact",
        "correlation_id",
        "correlation_display",
        "assignment_group",
        "caller_id",
        "category",
        "work_notes",
        "comments",
        "state",
        "close_code",
        "close_notes",
        "priority",
    }
)


@dataclass
class SnowRecord:
    sys_id: str
    number: str
    fields: dict[str, str]
    work_notes: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.fields.get("state", "1") not in CLOSED_STATES


class ServiceNowReceiver(ApiReceiver):
    service: ClassVar[str] = "servicenow"

    def __init__(
        self,
        *,
        username: str = USERNAME,
        password: str = PASSWORD,
        token: str = TOKEN,
        **kwargs: Any,
    ) -> None:
        self.username = username
        self.password = password
        self.token = token
        self.records: dict[str, SnowRecord] = {}
        self._numbers = Counter(10000)
        super().__init__(**kwargs)

    def with_correlation(self, correlation_id: str) -> list[SnowRecord]:
        return [
            r for r in self.records.values() if r.fields.get("correlation_id") == correlation_id
        ]

    def delete(self, sys_id: str) -> None:
        self.records.pop(sys_id, None)

    # -- answers ---------------------------------------------------------------------------

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        first = problems[0]
        status = first.status or 400
        if status == 401:
            error = {"message": "User Not Authenticated", "detail": first.detail}
        elif status == 404:
            error = {"message": "No Record found", "detail": first.detail}
        elif status == 403:
            error = {"message": "Operation Failed", "detail": first.detail}
        else:
            error = {"message": "Invalid request", "detail": "; ".join(p.detail for p in problems)}
        return json_reply(status, {"error": error, "status": "failure"})

    def not_found(self, method: str, path: str) -> Reply:
        return json_reply(
            400,
            {
                "error": {
                    "message": "Requested URI does not represent any resource",
                    "detail": path,
                },
                "status": "failure",
            },
        )

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        message = "Rate limit exceeded" if status == 429 else "Internal error"
        return json_reply(
            status, {"error": {"message": message, "detail": ""}, "status": "failure"}, headers
        )

    def summarize(self, record: Received) -> str:
        return f"#{record.seq} {record.route} -> {record.status}"

    # -- routes --------------------------------------------------------------------------------

    def setup_routes(self) -> None:
        base = r"/api/now(?:/v\d+)?/table/incident"
        self.route("query", "GET", base, self._query, body="none")
        self.route("create", "POST", base, self._create)
        self.route("update", "PATCH", base + r"/(?P<sys_id>[0-9a-f]{32})", self._update)
        self.route("update", "PUT", base + r"/(?P<sys_id>[0-9a-f]{32})", self._update)

    def authorize(self, call: Call) -> list[Problem]:
        auth = call.header("authorization") or ""
        scheme, _, value = auth.partition(" ")
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        ok = (scheme.lower() == "basic" and value.strip() == basic) or (
            scheme.lower() == "bearer" and value.strip() == self.token
        )
        if not ok:
            return [Problem("unauthorized", "Required to provide Auth information", 401)]
        accept = call.header("accept") or "*/*"
        if "json" not in accept and "*/*" not in accept:
            return [Problem("not_acceptable", f"Accept {accept!r}: only JSON is served", 406)]
        return []

    def _json(self, record: SnowRecord, fields: str | None) -> dict[str, Any]:
        full = {
            "sys_id": record.sys_id,
            "number": record.number,
            "active": "true" if record.active else "false",
            "state": record.fields.get("state", "1"),
            **{k: v for k, v in record.fields.items() if k not in ("state", "work_notes")},
            "work_notes": "",  # journal fields read back empty through the Table API
        }
        if fields:
            wanted = [f.strip() for f in fields.split(",")]
            return {k: full.get(k, "") for k in wanted}
        return full

    def _query(self, call: Call) -> Effect:
        terms: list[tuple[str, str]] = []
        for term in (call.query.get("sysparm_query") or "").split("^"):
            if not term or term.startswith(("ORDERBY", "ORDERBYDESC")):
                continue
            name, sep, value = term.partition("=")
            if not sep or not name.isidentifier():
                raise RejectedError(Problem("invalid_query", f"cannot read query term {term!r}"))
            terms.append((name, value))
        limit = int(call.query.get("sysparm_limit", "10000"))
        fields = call.query.get("sysparm_fields")

        def effect() -> Reply:
            found = [
                r
                for r in self.records.values()
                if all(self._json(r, None).get(k) == v for k, v in terms)
            ]
            found.sort(key=lambda r: r.number, reverse=True)
            body = {"result": [self._json(r, fields) for r in found[:limit]]}
            return json_reply(200, body, {"X-Total-Count": str(len(found))})

        return effect

    def _check(self, body: Any, *, current: dict[str, str] | None) -> dict[str, str]:
        if not isinstance(body, dict):
            raise RejectedError(Problem("invalid", "body: expected a JSON object"))
        problems = [
            Problem("invalid", f"{k}: not a writable incident field")
            for k in sorted(set(body) - WRITABLE)
        ]
        values = {k: str(v) for k, v in body.items()}
        short = values.get("short_description", (current or {}).get("short_description", ""))
        if current is None and not short.strip():
            problems.append(Problem("invalid", "short_description is mandatory"))
        if len(short) > MAX_SHORT_DESCRIPTION:
            problems.append(Problem("invalid", f"short_description: over {MAX_SHORT_DESCRIPTION}"))
        if len(values.get("correlation_id", "")) > MAX_CORRELATION:
            problems.append(Problem("invalid", f"correlation_id: over {MAX_CORRELATION}"))
        if problems:
            raise RejectedError(*problems)
        merged = {**(current or {}), **values}
        if merged.get("state") in ("6", "7"):
            missing = [k for k in ("close_code", "close_notes") if not merged.get(k, "").strip()]
            if missing:
                raise RejectedError(
                    Problem(
                        "data_policy", f"Data Policy Exception: {', '.join(missing)} mandatory", 403
                    )
                )
        return values

    def _create(self, call: Call) -> Effect:
        values = self._check(call.payload, current=None)
        fields = call.query.get("sysparm_fields")

        def effect() -> Reply:
            notes = values.pop("work_notes", None)
            record = SnowRecord(uuid.uuid4().hex, f"INC{self._numbers.next():07d}", values)
            record.fields.setdefault("state", "1")
            if notes:
                record.work_notes.append(notes)
            self.records[record.sys_id] = record
            location = f"{self.url}/api/now/table/incident/{record.sys_id}"
            return json_reply(201, {"result": self._json(record, fields)}, {"Location": location})

        return effect

    def _update(self, call: Call) -> Effect:
        record = self.records.get(call.params["sys_id"])
        if record is None:
            raise RejectedError(
                Problem(
                    "not_found", "Record doesn't exist or ACL restricts the record retrieval", 404
                )
            )
        values = self._check(call.payload, current=record.fields)
        fields = call.query.get("sysparm_fields")

        def effect() -> Reply:
            notes = values.pop("work_notes", None)
            record.fields.update(values)
            if notes:
                record.work_notes.append(notes)
            return json_reply(200, {"result": self._json(record, fields)})

        return effect
