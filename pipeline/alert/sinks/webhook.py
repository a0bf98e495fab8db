"""Generic webhook speaking Alertmanager's webhook payload, version "4".

Many tools (Alerta, GoAlert, home-grown receivers) already accept what
Alertmanager posts, so copying its shape field for field makes meshwatch a
drop-in source for them. Each notification carries one alert per incident it
tells: one for a single notice, every member for a grouped one.
Where Alertmanager's format leaves room (label names, annotations) we fill it
with the finding's route identity and numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import httpx

from pipeline.alert.message import (
    Notification,
    body_lines,
    ended_at,
    format_number,
    headline,
    started_at,
)
from pipeline.alert.sinks.base import SinkResponse, post_json, raise_for_status
from pipeline.alert.sinks.redact import redact_url, register_secret, register_url
from pipeline.config import WebhookSink, read_secret

VERSION = "4"
#: Go's zero ``time.Time``: what Alertmanager puts in ``endsAt`` while firing.
ZERO_TIME = "0001-01-01T00:00:00Z"
NOTIFICATION_ID_HEADER = "X-Meshwatch-Notification-Id"

ALERTNAMES = {
    "latency": "MeshwatchLatency",
    "error_rate": "MeshwatchErrorRate",
    "tls_failure": "MeshwatchTLSFailure",
    "mtls_regression": "MeshwatchMTLSRegression",
    "traffic_drop": "MeshwatchTrafficDrop",
    "cert_expiry": "MeshwatchCertExpiry",
    "target_down": "MeshwatchTargetDown",
}
_NOT_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")


def alertname(kind: str) -> str:
    return ALERTNAMES.get(kind, "Meshwatch" + "".join(p.title() for p in kind.split("_")))


def rfc3339(ts: float) -> str:
    """UTC with milliseconds and a ``Z``, as Alertmanager's Go encoder writes it."""
    stamp = datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def alert_fingerprint(n: Notification) -> str:
    """16 hex characters, the width of Alertmanager's (a uint64 in hex).

    Receivers written for Alertmanager may parse it as such. It is a prefix
    of the incident fingerprint, so it is stable across firing and resolve;
    a test notification gets its own so it never merges with a real alert.
    """
    if n.test:
        return hashlib.sha256(f"{n.fingerprint}|test".encode()).hexdigest()[:16]
    return n.fingerprint[:16]


def alert_labels(n: Notification) -> dict[str, str]:
    """The alert's identity: route and kind (which make the fingerprint), plus severity."""
    f = n.finding
    out = {
        "alertname": alertname(f.kind),
        "namespace": f.namespace,
        "workload": f.workload,
        "workload_kind": f.workload_kind,
        "direction": f.direction,
        "route": f.route,
        "kind": f.kind,
        "severity": n.incident.severity,
        "route_key": f.route_key,
    }
    if n.test:
        out["test"] = "true"
    return out


def _link_key(name: str) -> str:
    key = _NOT_LABEL_CHAR.sub("_", name) or "link"
    if key[0].isdigit():
        key = f"_{key}"
    return key if key.endswith("_url") else f"{key}_url"


def alert_annotations(n: Notification) -> dict[str, str]:
    """Everything a person reads; Alertmanager annotations are strings only."""
    f = n.finding
    out = {
        "summary": headline(n),
        "description": "\n".join(body_lines(n)),
        "explanation": f.explanation,
        "unit": f.unit,
        "score": format_number(f.score),
        "model": f"{f.model} {f.model_version}",
    }
    for key, value in (
        ("observed", f.observed),
        ("expected_low", f.expected_low),
        ("expected_high", f.expected_high),
    ):
        if value is not None:
            out[key] = repr(value)
    if f.suspect_pod:
        out["suspect_pod"] = f.suspect_pod
    for name, url in n.links.items():
        out.setdefault(_link_key(name), url)
    return out


def _group_key(group_labels: dict[str, str]) -> str:
    inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in group_labels.items())
    return "{}:{" + inner + "}"


def build_alert(n: Notification) -> dict[str, Any]:
    """One entry of ``alerts``: a single incident, as Alertmanager describes an alert."""
    end = ended_at(n)
    return {
        "status": "resolved" if n.resolved else "firing",
        "labels": alert_labels(n),
        "annotations": alert_annotations(n),
        "startsAt": rfc3339(started_at(n)),
        "endsAt": ZERO_TIME if end is None else rfc3339(end),
        "generatorURL": next(iter(n.links.values()), ""),
        "fingerprint": alert_fingerprint(n),
    }


def common(maps: list[dict[str, str]]) -> dict[str, str]:
    """The pairs every map has with the same value (Alertmanager's ``common*``)."""
    first, rest = maps[0], maps[1:]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in rest)}


def build_payload(n: Notification, *, receiver: str, external_url: str = "") -> dict[str, Any]:
    """The request body: one alert per incident the notification tells.

    A grouped notification carries every member as its own alert (labels,
    annotations, times and fingerprint of that incident), and the group's
    ``groupLabels``, ``commonLabels`` and ``commonAnnotations`` are what
    Alertmanager would compute for them; a single one carries one alert, so
    ``common*`` equal the alert's.
    """
    views = [n.member_view(m) for m in n.members] if n.grouped else [n]
    alerts = [build_alert(v) for v in views]
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    if n.grouped and n.group_labels:
        group_labels = dict(n.group_labels)
    else:
        lead = alerts[0]["labels"]
        group_labels = {"alertname": lead["alertname"], "route_key": lead["route_key"]}
    if n.test:
        group_labels["test"] = "true"
    return {
        "version": VERSION,
        "groupKey": _group_key(group_labels),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common([a["labels"] for a in alerts]),
        "commonAnnotations": common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "alerts": alerts,
    }


class AlertmanagerWebhookSink:
    """POSTs the v4 payload; any 2xx is success, as for Alertmanager itself."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        bearer_token: str | None = None,
        external_url: str = "",
    ) -> None:
        self.name = name
        self._url = url
        self._token = bearer_token
        self.external_url = external_url
        # Webhook URLs often carry a token in the path or query, so the whole
        # URL is treated as a secret, like the bearer token.
        self._target = f"webhook {name!r} ({register_url(url)})"
        if bearer_token:
            register_secret(bearer_token)

    @classmethod
    def from_config(cls, cfg: WebhookSink) -> AlertmanagerWebhookSink:
        token = read_secret(cfg.bearer_token, cfg.bearer_token_file)
        return cls(cfg.name, cfg.url, bearer_token=token)

    def __repr__(self) -> str:
        return f"AlertmanagerWebhookSink(name={self.name!r}, url={redact_url(self._url)!r})"

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        headers = {NOTIFICATION_ID_HEADER: n.notification_id}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        payload = build_payload(n, receiver=self.name, external_url=self.external_url)
        response = await post_json(client, self._url, payload, target=self._target, headers=headers)
        raise_for_status(response, self._target)
        return SinkResponse(refs={}, status=response.status_code, detail="accepted")
