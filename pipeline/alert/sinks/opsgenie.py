"""Opsgenie alerts by alias (also Jira Service Management's ops alert API).

Opsgenie is at its end of life (reference §2.2): Atlassian stopped selling it
on 2025-06-04 and ends support and the REST API on 2027-04-05; its successor
is Jira Service Management, whose ops API takes the same calls under another
base URL. The sink logs that once per process, so nobody is surprised.

The alias is the incident fingerprint: a repeat create while the alert is
open only bumps its count, an update adds a note, the resolve closes the
alert by alias. Opsgenie answers 202 with a ``requestId`` and processes the
request later; the id is kept in the refs for support questions.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import quote

import httpx

from pipeline.alert.message import Notification, body_lines, headline, plain_text
from pipeline.alert.sinks.base import SinkResponse
from pipeline.alert.sinks.common import call, clip, json_of, permanent, retryable
from pipeline.alert.sinks.redact import register_secret
from pipeline.config import OpsgenieSink, read_secret

log = logging.getLogger(__name__)

END_OF_SALE = "2025-06-04"
END_OF_LIFE = "2027-04-05"
EOL_WARNING = (
    f"Opsgenie is end of life: no new sales since {END_OF_SALE}; support and the REST API "
    f"end on {END_OF_LIFE}. Plan the move to Jira Service Management (same alert API, "
    "api_url https://api.atlassian.com/jsm/ops/integration)."
)
MAX_MESSAGE = 130
MAX_ALIAS = 512
MAX_DESCRIPTION = 15_000
MAX_DETAILS_TOTAL = 8000
MAX_TAGS = 20
MAX_TAG = 50
MAX_ENTITY = 512
MAX_NOTE = 25_000
SOURCE = "meshwatch"

_warned = False
_warn_lock = threading.Lock()


def warn_end_of_life() -> bool:
    """Log the end-of-life warning the first time only; True when it was logged now."""
    global _warned
    with _warn_lock:
        if _warned:
            return False
        _warned = True
    log.warning(EOL_WARNING)
    return True


def details(n: Notification) -> dict[str, str]:
    f = n.finding
    out = {
        "route_key": f.route_key,
        "kind": f.kind,
        "severity": n.incident.severity,
        "namespace": f.namespace,
        "workload": f"{f.workload_kind}/{f.workload}",
        "route": f"{f.direction} {f.route}",
        "fingerprint": n.fingerprint,
    }
    if f.suspect_pod:
        out["suspect_pod"] = f.suspect_pod
    out.update({f"link_{k}": v for k, v in n.links.items()})
    # 8000 characters across keys and values: drop values from the end until it fits.
    while sum(len(k) + len(v) for k, v in out.items()) > MAX_DETAILS_TOTAL:
        out.popitem()
    return {k: clip(v, 1000) for k, v in out.items()}


def build_alert(n: Notification, *, tags: list[str], priorities: dict[str, str]) -> dict[str, Any]:
    f = n.finding
    all_tags = [*tags, f.kind, f.namespace, *(["test"] if n.test else [])]
    unique = list(dict.fromkeys(clip(t, MAX_TAG) for t in all_tags if t))[:MAX_TAGS]
    return {
        "message": clip(headline(n), MAX_MESSAGE),
        "alias": n.fingerprint[:MAX_ALIAS],
        "description": clip(plain_text(n), MAX_DESCRIPTION),
        "tags": unique,
        "details": details(n),
        "entity": clip(f.route_key, MAX_ENTITY),
        "source": SOURCE,
        "priority": "P5" if n.test else priorities.get(n.incident.severity, "P3"),
    }


class OpsgenieAlertSink:
    def __init__(
        self,
        name: str,
        api_key: str,
        *,
        api_url: str = "https://api.opsgenie.com",
        tags: list[str] | None = None,
        priorities: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.api = f"{api_url.rstrip('/')}/v2/alerts"
        register_secret(api_key)
        self._headers = {"Authorization": f"GenieKey {api_key}"}
        self.tags = list(tags if tags is not None else ["meshwatch"])
        self.priorities = dict(priorities or {"critical": "P1", "warning": "P3", "info": "P5"})
        self._target = f"opsgenie {name!r}"
        warn_end_of_life()

    @classmethod
    def from_config(cls, cfg: OpsgenieSink) -> OpsgenieAlertSink:
        key = read_secret(cfg.api_key, cfg.api_key_file, cfg.api_key_env)
        if not key:
            raise ValueError(f"opsgenie sink {cfg.name!r}: the API key is empty")
        return cls(cfg.name, key, api_url=cfg.api_url, tags=cfg.tags, priorities=cfg.priorities)

    def __repr__(self) -> str:
        return f"OpsgenieAlertSink(name={self.name!r}, url={self.api!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        alias = n.fingerprint[:MAX_ALIAS]
        by_alias = f"{self.api}/{quote(alias, safe='')}"
        params = {"identifierType": "alias"}
        note = clip("\n".join(body_lines(n)), MAX_NOTE)
        if n.action == "firing":
            what, url, body = (
                "create",
                self.api,
                build_alert(n, tags=self.tags, priorities=self.priorities),
            )
            params = {}
        elif n.action == "update":
            what, url = "add note", f"{by_alias}/notes"
            body = {"note": clip(f"Update: {headline(n)}\n{note}", MAX_NOTE), "source": SOURCE}
        else:
            what, url = "close", f"{by_alias}/close"
            body = {"note": clip(f"Resolved: {note}", MAX_NOTE), "source": SOURCE}
        target = f"{self._target} {what}"
        response = await call(
            client,
            "POST",
            url,
            target=target,
            json_body=body,
            params=params or None,
            headers=self._headers,
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise retryable(response, target)
        if not 200 <= response.status_code < 300:
            raise permanent(response, target, _message(response))
        data = json_of(response, target)
        refs = {"alias": alias}
        if isinstance(data, dict) and data.get("requestId"):
            refs["request_id"] = str(data["requestId"])
        return SinkResponse(refs=refs, status=response.status_code, detail=what)


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    return str(data.get("message", ""))[:300] if isinstance(data, dict) else ""
