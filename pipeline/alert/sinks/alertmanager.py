"""Prometheus Alertmanager as a target: ``POST /api/v2/alerts``.

Alertmanager then does its own grouping, silencing, inhibition and routing
to whatever receivers it has, so meshwatch can feed an existing on-call
setup. The client contract (reference §3.1) shapes this sink:

* an alert is identified by its labels; annotations are free text. The
  labels are the webhook sink's (route identity, kind, severity);
* a firing alert carries ``endsAt`` in the future and *must be posted again*
  before that time, or Alertmanager resolves it by itself. ``endsAt`` is set
  to four resend intervals ahead (as Prometheus does), so the alerter must
  call :meth:`AlertmanagerApiSink.refresh` with its open incidents about
  every ``resend_interval_seconds``;
* a resolve is the same alert posted with ``endsAt`` in the past;
* an escalation changes the ``severity`` label, which makes a *new* alert;
  the severity last posted is kept in the refs, and the update ends the
  alert with the old label so it does not linger until it expires.

Alertmanager answers 200 with an empty body (the refs keep only the posted
severity), 400
for an alert it refuses (permanent), 5xx when it cannot take it now.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from pipeline.alert.message import Notification
from pipeline.alert.sinks.base import SinkResponse
from pipeline.alert.sinks.common import bearer_auth, call, permanent, retryable
from pipeline.alert.sinks.webhook import alert_annotations, alert_labels, rfc3339
from pipeline.config import AlertmanagerSink, read_secret

#: How many resend intervals a firing alert stays alive without a re-post.
ENDS_AFTER_INTERVALS = 4


def generator_url(n: Notification) -> str | None:
    return next((u for u in n.links.values() if u.startswith(("https://", "http://"))), None)


def build_alerts(
    n: Notification, *, now: float, resend_interval: float, sink_name: str = ""
) -> list[dict[str, Any]]:
    """The alerts to post for one notification: the alert, and the one it replaces.

    ``severity`` is a label, so an escalation makes a new alert; the severity
    posted before is in this sink's refs, and that alert is ended with it.
    """
    labels = alert_labels(n)
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": alert_annotations(n),
        "startsAt": rfc3339(n.incident.first_seen),
    }
    url = generator_url(n)
    if url:
        alert["generatorURL"] = url
    if n.resolved:
        alert["endsAt"] = rfc3339(max(n.incident.first_seen, min(n.finding.window_end, now)))
    else:
        alert["endsAt"] = rfc3339(now + ENDS_AFTER_INTERVALS * resend_interval)
    alerts = [alert]
    posted = n.incident.sink_refs.get(sink_name, {}).get("severity")
    if posted and posted != labels["severity"]:
        # The alert we posted before had another severity label: end that one.
        end = rfc3339(max(n.incident.first_seen, now - 1))
        alerts.append({**alert, "labels": {**labels, "severity": posted}, "endsAt": end})
    return alerts


class AlertmanagerApiSink:
    """Posts alerts to one Alertmanager (or to each of an HA pair: configure one sink each)."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        bearer_token: str | None = None,
        resend_interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/api/v2/alerts"
        self.resend_interval_seconds = resend_interval_seconds
        self._clock = clock
        self._headers = {"Authorization": bearer_auth(bearer_token)} if bearer_token else {}
        self._target = f"alertmanager {name!r}"

    @classmethod
    def from_config(cls, cfg: AlertmanagerSink) -> AlertmanagerApiSink:
        token = read_secret(cfg.bearer_token, cfg.bearer_token_file, cfg.bearer_token_env)
        return cls(
            cfg.name,
            cfg.url,
            bearer_token=token,
            resend_interval_seconds=cfg.resend_interval_seconds,
        )

    def __repr__(self) -> str:
        return f"AlertmanagerApiSink(name={self.name!r}, url={self.url!r})"

    async def _post(self, alerts: list[dict[str, Any]], client: httpx.AsyncClient) -> SinkResponse:
        response = await call(
            client,
            "POST",
            self.endpoint,
            target=self._target,
            json_body=alerts,
            headers=self._headers,
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise retryable(response, self._target)
        if not 200 <= response.status_code < 300:
            raise permanent(response, self._target)
        return SinkResponse(refs={}, status=response.status_code, detail=f"{len(alerts)} alert(s)")

    async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
        alerts = build_alerts(
            n, now=self._clock(), resend_interval=self.resend_interval_seconds, sink_name=self.name
        )
        response = await self._post(alerts, client)
        severity = alerts[0]["labels"]["severity"]
        return SinkResponse(
            refs={"severity": severity}, status=response.status, detail=response.detail
        )

    async def refresh(
        self, notifications: Sequence[Notification], client: httpx.AsyncClient
    ) -> SinkResponse:
        """Re-post open incidents in one request, pushing their ``endsAt`` forward.

        The alerter calls this about every ``resend_interval_seconds`` with a
        firing notification per open incident (links rendered as for a send);
        an incident left out resolves in Alertmanager when its ``endsAt``
        (four intervals after its last post) passes. Resolved ones are skipped.
        """
        now = self._clock()
        alerts: list[dict[str, Any]] = []
        for n in notifications:
            if n.resolved or n.incident.status != "firing":
                continue
            alerts += build_alerts(
                n, now=now, resend_interval=self.resend_interval_seconds, sink_name=self.name
            )
        if not alerts:
            return SinkResponse(refs={}, status=None, detail="nothing to refresh")
        return await self._post(alerts, client)
