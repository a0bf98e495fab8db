"""ServiceNow incidents through the Table API, keyed by ``correlation_id``.

Reference §2.5: ``correlation_id`` holds the incident fingerprint and
``correlation_display`` names meshwatch as the source. Firing looks for an
active incident with that correlation id and creates one if there is none;
updates add ``work_notes``; the resolve sets the configured resolved state
with a close code and close notes (instances differ, hence the settings).
The refs keep the record's ``sys_id`` (to PATCH) and ``number`` (for people).
"""

from __future__ import annotations

from typing import Any

import httpx

from pipeline.alert.message import Notification, body_lines, headline, plain_text, subject
from pipeline.alert.sinks.base import SinkResponse
from pipeline.alert.sinks.common import (
    Memo,
    basic_auth,
    bearer_auth,
    call,
    clip,
    json_of,
    occurrence,
    permanent,
    retryable,
)
from pipeline.config import ServiceNowSink, read_secret

MAX_SHORT_DESCRIPTION = 160
MAX_CORRELATION = 100
MAX_TEXT = 4000
FIELDS = "sys_id,number,state,active"


class RecordGoneError(Exception):
    pass


class ServiceNowIncidentSink:
    def __init__(self, name: str, cfg: ServiceNowSink, authorization: str) -> None:
        self.name = name
        self.cfg = cfg
        self.url = f"{cfg.instance_url.rstrip('/')}/api/now/table/{cfg.table}"
        self._headers = {"Authorization": authorization, "Accept": "application/json"}
        self._target = f"servicenow {name!r}"
        self._records: Memo[str, dict[str, str]] = Memo()
        self._steps: Memo[tuple[str, str], dict[str, str]] = Memo()

    @classmethod
    def from_config(cls, cfg: ServiceNowSink) -> ServiceNowIncidentSink:
        password = read_secret(cfg.password, cfg.password_file, cfg.password_env)
        if password is not None:
            if not password:
                raise ValueError(f"servicenow sink {cfg.name!r}: the password is empty")
            auth = basic_auth(cfg.username or "", password)
        else:
            token = read_secret(cfg.token, cfg.token_file, cfg.token_env)
            if not token:
                raise ValueError(f"servicenow sink {cfg.name!r}: the token is empty")
            auth = bearer_auth(token)
        return cls(cfg.name, cfg, auth)

    def __repr__(self) -> str:
        return f"ServiceNowIncidentSink(name={self.name!r}, url={self.url!r})"

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        what: str,
        *,
        sys_id: str | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        target = f"{self._target} {what}"
        url = self.url if sys_id is None else f"{self.url}/{sys_id}"
        response = await call(
            client, method, url, target=target, json_body=body, params=params, headers=self._headers
        )
        status = response.status_code
        if status == 429 or status >= 500:
            raise retryable(response, target)
        if status == 404 and sys_id is not None:
            raise RecordGoneError(sys_id)
        if not 200 <= status < 300:
            raise permanent(response, target, _snow_error(response))
        data = json_of(response, target)
        if not isinstance(data, dict) or "result" not in data:
            raise permanent(response, target, "no result in the answer")
        return data["result"]

    def correlation_id(self, n: Notification) -> str:
        return n.fingerprint[:MAX_CORRELATION]

    async def find_active(
        self, n: Notification, client: httpx.AsyncClient
    ) -> dict[str, str] | None:
        result = await self._call(
            client,
            "GET",
            "lookup",
            params={
                "sysparm_query": f"correlation_id={self.correlation_id(n)}^active=true"
                "^ORDERBYDESCsys_created_on",
                "sysparm_limit": "1",
                "sysparm_fields": FIELDS,
            },
        )
        if isinstance(result, list) and result:
            return {"sys_id": str(result[0]["sys_id"]), "number": str(result[0].get("number", ""))}
        return None

    def new_record(self, n: Notification) -> dict[str, Any]:
        cfg = self.cfg
        severity = n.incident.severity
        text = f"[meshwatch] {subject(n.finding)}"
        record: dict[str, Any] = {
            "short_description": clip(f"[TEST] {text}" if n.test else text, MAX_SHORT_DESCRIPTION),
            "description": clip(plain_text(n), MAX_TEXT),
            "urgency": cfg.urgency.get(severity, "2"),
            "impact": cfg.impact.get(severity, "2"),
            "correlation_id": self.correlation_id(n),
            "correlation_display": cfg.correlation_display[:MAX_CORRELATION],
        }
        for key in ("assignment_group", "caller_id", "category"):
            value = getattr(cfg, key)
            if value:
                record[key] = value
        return record

    def note(self, n: Notification, *, recurrence: bool = False) -> str:
        if n.resolved:
            head = "Resolved"
        elif n.action == "update":
            head = f"Update: severity {n.incident.severity}, {n.incident.count} anomalous windows"
        else:
            head = "Fired again" if recurrence else "Firing"
        return clip("\n".join([f"[meshwatch] {head}", headline(n), *body_lines(n)]), MAX_TEXT)

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        refs = n.incident.sink_refs.get(self.name, {})
        known = self._records.get(occurrence(n))
        if refs.get("sys_id"):
            known = {"sys_id": refs["sys_id"], "number": refs.get("number", "")}
        try:
            return await self._send(n, client, known)
        except RecordGoneError:
            self._records.pop(occurrence(n))
            return await self._send(n, client, None)

    async def _send(
        self, n: Notification, client: httpx.AsyncClient, record: dict[str, str] | None
    ) -> SinkResponse:
        nid = n.notification_id
        created = found = False
        if record is None:
            record = await self.find_active(n, client)
            found = record is not None
            if record is None and n.resolved:
                return SinkResponse(refs={}, status=200, detail="no active incident to resolve")
            if record is None:
                record = self._steps.get((nid, "create"))
                if record is None:
                    result = await self._call(
                        client,
                        "POST",
                        "create",
                        body=self.new_record(n),
                        params={"sysparm_fields": FIELDS},
                    )
                    record = {"sys_id": str(result["sys_id"]), "number": str(result["number"])}
                    self._steps.put((nid, "create"), record)
                created = True
            self._records.put(occurrence(n), record)
        detail = f"created {record['number']}" if created else f"updated {record['number']}"
        if n.resolved:
            body = {
                "state": self.cfg.resolved_state,
                "close_code": self.cfg.close_code,
                "close_notes": self.note(n),
                "work_notes": self.note(n),
            }
            await self._call(
                client,
                "PATCH",
                "resolve",
                sys_id=record["sys_id"],
                body=body,
                params={"sysparm_fields": FIELDS},
            )
            self._records.pop(occurrence(n))
            detail += "; resolved"
        elif not created:
            await self._call(
                client,
                "PATCH",
                "work notes",
                sys_id=record["sys_id"],
                body={"work_notes": self.note(n, recurrence=found)},
                params={"sysparm_fields": FIELDS},
            )
        self._steps.pop((nid, "create"))
        return SinkResponse(refs=dict(record), status=200, detail=detail)


def _snow_error(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ""
    return f"{error.get('message', '')}: {error.get('detail', '')}".strip(": ")[:300]
