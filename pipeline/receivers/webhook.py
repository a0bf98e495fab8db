"""A consumer of Alertmanager's webhook payload, version "4" (reference §3.3).

It holds senders to the exact field set Alertmanager posts, so anything our
webhook sink emits would also be understood by tools written against real
Alertmanager. ``notification_reason`` is accepted but not required: the
docs list it, while Alertmanager 0.25 (measured) does not send it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp import web

from pipeline.receivers.base import Problem, Received, Receiver

TOP_LEVEL_REQUIRED = frozenset(
    {
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
)
TOP_LEVEL_OPTIONAL = frozenset({"notification_reason"})
ALERT_FIELDS = frozenset(
    {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
)
STATUSES = ("firing", "resolved")
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)

_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_HEX = re.compile(r"^[0-9a-f]+$")


def parse_rfc3339(text: str) -> datetime | None:
    """A timezone-aware datetime, or None when ``text`` is not RFC 3339.

    Python's ``fromisoformat`` accepts far more than RFC 3339 (no ``T``, no
    offset, week dates), so the shape is checked first; fractions beyond
    microseconds (Go writes nanoseconds) are cut to what Python holds.
    """
    match = _RFC3339.match(text)
    if match is None:
        return None
    date, clock, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{clock}{fraction}{offset}")
    except ValueError:
        return None


def _string_map(value: Any, where: str, *, label_names: bool) -> list[Problem]:
    if not isinstance(value, dict):
        return [Problem("invalid_type", f"{where}: expected an object of strings")]
    problems = []
    for key, item in value.items():
        if not isinstance(item, str):
            problems.append(Problem("invalid_type", f"{where}.{key}: expected a string"))
        if label_names and not _LABEL_NAME.match(key):
            problems.append(Problem("invalid_label", f"{where}: {key!r} is not a label name"))
    return problems


def _fields(
    obj: dict[str, Any], where: str, required: frozenset[str], optional: frozenset[str]
) -> list[Problem]:
    problems = [
        Problem("missing_field", f"{where}{k}: missing") for k in sorted(required - obj.keys())
    ]
    problems += [
        Problem("unknown_field", f"{where}{k}: not a v4 field")
        for k in sorted(obj.keys() - required - optional)
    ]
    return problems


def _validate_alert(alert: Any, where: str) -> list[Problem]:
    if not isinstance(alert, dict):
        return [Problem("invalid_type", f"{where}: expected an object")]
    problems = _fields(alert, f"{where}.", ALERT_FIELDS, frozenset())
    status = alert.get("status")
    if "status" in alert and status not in STATUSES:
        problems.append(Problem("invalid_value", f"{where}.status: {status!r} not in {STATUSES}"))
    if "labels" in alert:
        labels = alert["labels"]
        problems += _string_map(labels, f"{where}.labels", label_names=True)
        if isinstance(labels, dict) and not labels.get("alertname"):
            problems.append(Problem("missing_field", f"{where}.labels.alertname: missing"))
    if "annotations" in alert:
        problems += _string_map(alert["annotations"], f"{where}.annotations", label_names=True)
    times: dict[str, datetime] = {}
    for key in ("startsAt", "endsAt"):
        if key not in alert:
            continue
        value = alert[key]
        parsed = parse_rfc3339(value) if isinstance(value, str) else None
        if parsed is None:
            problems.append(Problem("invalid_time", f"{where}.{key}: {value!r} is not RFC 3339"))
        else:
            times[key] = parsed
    starts, ends = times.get("startsAt"), times.get("endsAt")
    if starts is not None and starts == ZERO_TIME:
        problems.append(Problem("invalid_time", f"{where}.startsAt: zero time"))
    if ends is not None and status == "resolved":
        if ends == ZERO_TIME:
            problems.append(
                Problem("invalid_time", f"{where}.endsAt: zero time on a resolved alert")
            )
        elif starts is not None and ends < starts:
            problems.append(Problem("invalid_time", f"{where}.endsAt: before startsAt"))
    for key in ("generatorURL", "fingerprint"):
        if key in alert and not isinstance(alert[key], str):
            problems.append(Problem("invalid_type", f"{where}.{key}: expected a string"))
    fingerprint = alert.get("fingerprint")
    if isinstance(fingerprint, str) and not _HEX.match(fingerprint):
        problems.append(Problem("invalid_value", f"{where}.fingerprint: not lower-case hex"))
    return problems


def validate_v4(payload: Any) -> list[Problem]:
    """Every way ``payload`` differs from Alertmanager's v4 webhook body."""
    if not isinstance(payload, dict):
        return [Problem("invalid_type", "body: expected a JSON object")]
    problems = _fields(payload, "", TOP_LEVEL_REQUIRED, TOP_LEVEL_OPTIONAL)
    if "version" in payload and payload["version"] != "4":
        problems.append(
            Problem("invalid_version", f"version: {payload['version']!r}, expected '4'")
        )
    for key in ("groupKey", "receiver", "externalURL", "notification_reason"):
        if key in payload and not isinstance(payload[key], str):
            problems.append(Problem("invalid_type", f"{key}: expected a string"))
    truncated = payload.get("truncatedAlerts")
    if "truncatedAlerts" in payload and (
        not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0
    ):
        problems.append(Problem("invalid_type", "truncatedAlerts: expected an integer >= 0"))
    status = payload.get("status")
    if "status" in payload and status not in STATUSES:
        problems.append(Problem("invalid_value", f"status: {status!r} not in {STATUSES}"))
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        if key in payload:
            problems += _string_map(payload[key], key, label_names=True)
    alerts = payload.get("alerts")
    if "alerts" in payload:
        if not isinstance(alerts, list) or not alerts:
            problems.append(Problem("invalid_type", "alerts: expected a non-empty array"))
        else:
            for i, alert in enumerate(alerts):
                problems += _validate_alert(alert, f"alerts[{i}]")
            problems += _group_consistency(payload, alerts)
    return problems


def _group_consistency(payload: dict[str, Any], alerts: list[Any]) -> list[Problem]:
    """Alertmanager's own invariants: group status and common labels follow the alerts."""
    problems = []
    statuses = [a.get("status") for a in alerts if isinstance(a, dict)]
    expected = "firing" if "firing" in statuses else "resolved"
    if payload.get("status") in STATUSES and payload["status"] != expected:
        problems.append(
            Problem("invalid_value", f"status: {payload['status']!r} but alerts say {expected!r}")
        )
    common = payload.get("commonLabels")
    if isinstance(common, dict):
        for i, alert in enumerate(alerts):
            labels = alert.get("labels") if isinstance(alert, dict) else None
            if isinstance(labels, dict):
                differing = sorted(k for k, v in common.items() if labels.get(k) != v)
                if differing:
                    problems.append(
                        Problem(
                            "invalid_value", f"commonLabels: {differing} differ from alerts[{i}]"
                        )
                    )
    return problems


class WebhookReceiver(Receiver):
    """Answers 200 with an empty body to a valid v4 payload, 400 with the reasons otherwise."""

    service: ClassVar[str] = "webhook"
    default_path: ClassVar[str] = "/alert"

    def validate(self, payload: Any, request: web.Request) -> list[Problem]:
        return validate_v4(payload)

    def error_body(self, status: int) -> str:
        return "too many requests" if status == 429 else f"error {status}"

    def summarize(self, record: Received) -> str:
        payload = record.payload
        if not record.valid or not isinstance(payload, dict):
            return super().summarize(record)
        parts = []
        for alert in payload["alerts"]:
            labels = alert["labels"]
            summary = alert["annotations"].get("summary", labels.get("route_key", ""))
            parts.append(f"{alert['status']} {labels['alertname']}: {summary}")
        return f"#{record.seq} -> {record.status}: " + " | ".join(parts)
