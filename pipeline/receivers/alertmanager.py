"""A stand-in for Alertmanager's ``POST /api/v2/alerts`` (reference §3.1).

The real Alertmanager is used in the integration tests; this fake exists to
script what a real one cannot be made to do on demand (429, 5xx, a hang) and
checks the body the way Alertmanager's API does: a JSON array of alerts, each
with ``labels`` (valid names, ``alertname`` required), string
``annotations``, RFC 3339 ``startsAt``/``endsAt`` with the end not before the
start, and an absolute ``generatorURL``. It keeps alerts by label set with
Alertmanager's semantics: a re-post updates the alert, an ``endsAt`` in the
past resolves it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from pipeline.receivers.base import Problem, Received, Receiver, Reply
from pipeline.receivers.webhook import parse_rfc3339

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ALERT_FIELDS = frozenset({"labels", "annotations", "startsAt", "endsAt", "generatorURL"})
#: Alertmanager's default ``resolve_timeout``: an alert without ``endsAt`` lives this long.
RESOLVE_TIMEOUT = 300.0


@dataclass
class AmAlert:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float
    posts: int = 1

    @property
    def active(self) -> bool:
        return self.ends_at > time.time()


def _string_map(value: Any, where: str, *, names: bool) -> list[Problem]:
    if not isinstance(value, dict):
        return [Problem("invalid", f"{where}: expected an object of strings")]
    problems = []
    for k, v in value.items():
        if not isinstance(v, str):
            problems.append(Problem("invalid", f"{where}.{k}: expected a string"))
        if names and not _LABEL_NAME.match(k):
            problems.append(Problem("invalid", f"{where}: invalid label name {k!r}"))
    return problems


def validate_alerts(payload: Any) -> list[Problem]:
    if not isinstance(payload, list):
        return [Problem("invalid", "body: expected an array of alerts")]
    problems: list[Problem] = []
    for i, alert in enumerate(payload):
        where = f"[{i}]"
        if not isinstance(alert, dict):
            problems.append(Problem("invalid", f"{where}: expected an object"))
            continue
        problems += [
            Problem("invalid", f"{where}.{k}: not an alert field")
            for k in sorted(set(alert) - ALERT_FIELDS)
        ]
        labels = alert.get("labels")
        problems += _string_map(labels, f"{where}.labels", names=True)
        if isinstance(labels, dict) and not labels.get("alertname"):
            problems.append(Problem("invalid", f"{where}.labels: alertname is required"))
        if "annotations" in alert:
            problems += _string_map(alert["annotations"], f"{where}.annotations", names=True)
        times = {}
        for key in ("startsAt", "endsAt"):
            if key in alert:
                parsed = parse_rfc3339(alert[key]) if isinstance(alert[key], str) else None
                if parsed is None:
                    problems.append(Problem("invalid", f"{where}.{key}: not RFC 3339"))
                else:
                    times[key] = parsed
        if "startsAt" in times and "endsAt" in times and times["endsAt"] < times["startsAt"]:
            problems.append(Problem("invalid", f"{where}: start time must be before end time"))
        url = alert.get("generatorURL")
        absolute = isinstance(url, str) and re.match(r"^[a-z][a-z0-9+.-]*://", url)
        if url is not None and not absolute:
            problems.append(Problem("invalid", f"{where}.generatorURL: not an absolute URL"))
    return problems


class AlertmanagerReceiver(Receiver):
    service: ClassVar[str] = "alertmanager"
    default_path: ClassVar[str] = "/api/v2/alerts"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alerts: dict[tuple[tuple[str, str], ...], AmAlert] = {}
        self._pending: Any = None

    @property
    def base(self) -> str:
        return self.base_url

    def active(self) -> list[AmAlert]:
        return [a for a in self.alerts.values() if a.active]

    def validate(self, payload: Any, request: web.Request) -> list[Problem]:
        problems = validate_alerts(payload)
        # Applied in success(): a scripted failure must leave the store as it was.
        # (The base handler validates, picks the reply and calls success() without
        # awaiting in between, so no other request can interleave.)
        self._pending = None if problems else payload
        return problems

    def success(self) -> Reply:
        payload, self._pending = self._pending, None
        now = time.time()
        for alert in payload or []:
            key = tuple(sorted(alert["labels"].items()))
            start = parse_rfc3339(alert.get("startsAt", ""))
            end = parse_rfc3339(alert.get("endsAt", ""))
            current = self.alerts.get(key)
            starts = start.timestamp() if start else (current.starts_at if current else now)
            ends = end.timestamp() if end else now + RESOLVE_TIMEOUT
            if current is not None and current.active:
                starts = min(starts, current.starts_at)
            self.alerts[key] = AmAlert(
                dict(alert["labels"]),
                dict(alert.get("annotations", {})),
                starts,
                ends,
                posts=(current.posts + 1) if current else 1,
            )
        return Reply(200, "", content_type="application/json")

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        status = {"invalid_method": 405, "invalid_content_type": 415}.get(problems[0].code, 400)
        return Reply(
            status,
            json.dumps("; ".join(p.detail for p in problems)),
            content_type="application/json",
        )

    def error_body(self, status: int) -> str:
        return json.dumps(f"error {status}")

    def summarize(self, record: Received) -> str:
        n = len(record.payload) if isinstance(record.payload, list) else 0
        return f"#{record.seq} -> {record.status}: {n} alert(s)"
