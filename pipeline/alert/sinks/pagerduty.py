"""PagerDuty Events API v2: trigger and resolve by ``dedup_key``.

The dedup key is the incident fingerprint (reference §2.1), so a retried
trigger lands on the same alert, an update (a re-trigger with the current
severity and numbers) is added to it, and the resolve closes it. After a
resolve, the next trigger with that key opens a new alert, which is what a
new occurrence of the incident should do.

Answers: 202 is accepted (not processed: PagerDuty works asynchronously);
400 is a malformed event and is not retried; 429 is retried, and since
PagerDuty sends no ``Retry-After`` we wait what its documentation suggests
(about 30 s, capped by the alerter's ``max_backoff_seconds``); 5xx and
network errors are retried. ``acknowledge`` is not sent: an incident in
meshwatch is either firing or resolved; a person acknowledges in PagerDuty.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from pipeline.alert.message import Notification, body_lines, format_number, headline, web_links
from pipeline.alert.sinks.base import SinkResponse
from pipeline.alert.sinks.common import call, clip, json_of, permanent, retryable
from pipeline.alert.sinks.redact import register_secret
from pipeline.alert.sinks.webhook import rfc3339
from pipeline.config import PagerDutySink, read_secret

MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_EVENT_BYTES = 512 * 1024
#: PagerDuty's advice for 429: retry after about 30 seconds.
RATE_LIMIT_WAIT = 30.0
SEVERITIES = {"critical": "critical", "warning": "warning", "info": "info"}


def dedup_key(n: Notification) -> str:
    return n.fingerprint[:MAX_DEDUP_KEY]


def custom_details(n: Notification) -> dict[str, Any]:
    f = n.finding
    details: dict[str, Any] = {
        "route_key": f.route_key,
        "kind": f.kind,
        "summary": "\n".join(body_lines(n)),
        "score": format_number(f.score),
        "unit": f.unit,
        "occurrences": n.incident.count,
        "model": f"{f.model} {f.model_version}",
        "fingerprint": n.fingerprint,
    }
    for key in ("observed", "expected_low", "expected_high"):
        value = getattr(f, key)
        if value is not None:
            details[key] = value
    if f.suspect_pod:
        details["suspect_pod"] = f.suspect_pod
    if f.evidence:
        details["evidence"] = [[p.t, p.value] for p in f.evidence]
    if n.test:
        details["test"] = True
    return details


def build_event(
    n: Notification, routing_key: str, *, client: str, client_url: str | None
) -> dict[str, Any]:
    """The event body: a trigger with the full payload, or a bare resolve."""
    if n.resolved:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key(n)}
    f = n.finding
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(n),
        "client": client,
        "payload": {
            "summary": clip(headline(n), MAX_SUMMARY),
            "source": f.workload_key,
            "severity": "info" if n.test else SEVERITIES.get(n.incident.severity, "warning"),
            "timestamp": rfc3339(f.window_end),
            "component": f.workload,
            "group": f.namespace,
            "class": f.kind,
            "custom_details": custom_details(n),
        },
    }
    if client_url:
        event["client_url"] = client_url
    links = [{"href": url, "text": name} for name, url in web_links(n)]
    if links:
        event["links"] = links
    if len(json.dumps(event).encode()) > MAX_EVENT_BYTES:
        # As Alertmanager does: the details give way, the alert goes out.
        event["payload"]["custom_details"] = {"note": "details trimmed to fit 512 KB"}
    return event


class PagerDutyEventsSink:
    """One POST per notification to ``/v2/enqueue``; the routing key is the secret."""

    def __init__(
        self,
        name: str,
        routing_key: str,
        *,
        url: str = "https://events.pagerduty.com/v2/enqueue",
        client: str = "meshwatch",
        client_url: str | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self._key = routing_key
        self.client = client
        self.client_url = client_url
        register_secret(routing_key)
        self._target = f"pagerduty {name!r}"

    @classmethod
    def from_config(cls, cfg: PagerDutySink) -> PagerDutyEventsSink:
        key = read_secret(cfg.routing_key, cfg.routing_key_file, cfg.routing_key_env)
        if not key:
            raise ValueError(f"pagerduty sink {cfg.name!r}: the routing key is empty")
        return cls(cfg.name, key, url=cfg.url, client=cfg.client, client_url=cfg.client_url)

    def __repr__(self) -> str:
        return f"PagerDutyEventsSink(name={self.name!r}, url={self.url!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        event = build_event(n, self._key, client=self.client, client_url=self.client_url)
        response = await call(client, "POST", self.url, target=self._target, json_body=event)
        status = response.status_code
        if status == 429:
            raise retryable(response, self._target, default_wait=RATE_LIMIT_WAIT)
        if status >= 500:
            raise retryable(response, self._target)
        if not 200 <= status < 300:  # 202 is documented; any 2xx means accepted
            raise permanent(response, self._target, _errors(response))
        data = json_of(response, self._target)
        key = data.get("dedup_key") if isinstance(data, dict) else None
        return SinkResponse(
            refs={"dedup_key": str(key or dedup_key(n))}, status=status, detail="accepted"
        )


def _errors(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [str(data.get("message", ""))] + [str(e) for e in data.get("errors", []) or []]
    return ": ".join(p for p in parts if p)[:300]
