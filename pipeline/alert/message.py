"""What a sink is asked to deliver, and the words every sink shares.

Each target (console, webhook, Slack, and the ones to come) renders the same
facts in its own markup. Keeping the sentences here means an on-call engineer
reads the same summary in the terminal, in chat and in a ticket, and a new
sink only decides on layout, never on wording.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

from pipeline.schema import Finding, Incident, finding_id, fingerprint

Action = Literal["firing", "update", "resolved"]

#: The placeholders a link template may use; anything else in braces is left
#: alone, so templates may carry other literal braces (e.g. Grafana JSON).
LINK_FIELDS = (
    "route_key",
    "namespace",
    "workload",
    "workload_kind",
    "direction",
    "route",
    "kind",
)
_PLACEHOLDER = re.compile(r"\{(" + "|".join(LINK_FIELDS) + r")\}")

#: What the observed value measures, per finding kind, in words a person uses.
METRIC_NAMES: dict[str, str] = {
    "latency": "p99",
    "error_rate": "error ratio",
    "tls_failure": "TLS failure ratio",
    "mtls_regression": "mTLS share",
    "traffic_drop": "request rate",
    "cert_expiry": "certificate expires in",
    "target_down": "targets up",
}


def notification_id(
    incident: Incident, action: Action, finding: Finding, *, test: bool = False
) -> str:
    """The idempotency key a target can deduplicate on.

    Built only from stored, deterministic inputs so that a retry, or a replay
    after an alerter crash, carries the very same id. Updates add the finding
    id: otherwise every update of one incident would share one id and a
    deduplicating receiver would drop all but the first.
    """
    parts = [incident.fingerprint, action, f"{incident.first_seen:.3f}"]
    if action == "update":
        parts.append(finding.id)
    if test:
        parts.append("test")
    return ":".join(parts)


def group_notification_id(
    group_key: str, action: Action, members: Sequence[Member], reason: str = ""
) -> str:
    """The idempotency key of a grouped notification: the group and exactly who is in it.

    Built from stored inputs only (fingerprints, occurrence starts, finding
    ids of updates), so the same decision made again after a crash carries
    the same id, and a different set of members never shares one.
    """
    parts = [group_key, action, reason]
    for m in members:
        part = f"{m.incident.fingerprint}@{m.incident.first_seen:.3f}"
        parts.append(f"{part}/{m.finding.id}" if m.action == "update" else part)
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
    return f"group:{digest}:{action}"


@dataclass(frozen=True, slots=True)
class Member:
    """One incident inside a grouped notification, with what is said about it."""

    incident: Incident
    finding: Finding
    action: Action
    #: This member's own links (its route's dashboard, not the lead's); empty
    #: for a single-incident notification, whose links are the notification's.
    links: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notification:
    """One thing to tell one sink: an incident at a point in its life.

    ``notification_id`` is derived when left empty, so callers cannot forget
    it and every sink sees the same key for the same event.

    A *grouped* notification (Alertmanager's aggregation group: several
    incidents of one workload told at once) keeps this shape: ``incident``,
    ``finding`` and ``action`` describe its lead member, so a sink that
    knows nothing of groups still sends a correct message about the lead,
    and the shared text helpers below (``title``, ``headline``,
    ``body_lines``, ``plain_text``) list every member. ``members`` holds all
    of them, lead first, for sinks that render groups natively (one alert
    each in an Alertmanager payload, one line each in a chat card). Every
    member of one notification has the same ``action``. Sinks that keep a
    thread or ticket per incident are never handed groups by the alerter.
    """

    incident: Incident
    finding: Finding
    action: Action
    test: bool = False
    links: dict[str, str] = field(default_factory=dict)
    notification_id: str = ""
    #: Every incident told by this notification, lead first; empty means
    #: just the lead (a single-incident notification).
    members: tuple[Member, ...] = ()
    #: Why it is sent when that is not a change: ``"repeat"`` for a reminder.
    reason: str = ""
    #: The group's defining labels (e.g. namespace and workload), if grouped.
    group_labels: dict[str, str] = field(default_factory=dict)
    #: An earlier alerter may already have delivered this very notice: it
    #: was restored from the outbox after a restart (the crash may have come
    #: between the target's answer and the tombstone). Sinks that can ask
    #: the target whether it exists do so before posting again.
    resumed: bool = False

    def __post_init__(self) -> None:
        if not self.notification_id:
            nid = notification_id(self.incident, self.action, self.finding, test=self.test)
            if self.reason:
                nid = f"{nid}:{self.reason}"
            object.__setattr__(self, "notification_id", nid)

    @property
    def fingerprint(self) -> str:
        return self.incident.fingerprint

    @property
    def resolved(self) -> bool:
        return self.action == "resolved"

    @property
    def grouped(self) -> bool:
        return len(self.members) > 1

    def all_members(self) -> tuple[Member, ...]:
        """The members, or the lead alone for a single-incident notification."""
        return self.members or (Member(self.incident, self.finding, self.action, self.links),)

    def member_view(self, m: Member) -> Notification:
        """One member as a single-incident notification (its own links, same id and flags).

        Lets a sink that renders each alert of a group on its own (an
        Alertmanager payload's ``alerts``) reuse the single-incident wording.
        """
        lead = m.incident.fingerprint == self.incident.fingerprint
        return Notification(
            m.incident,
            m.finding,
            m.action,
            test=self.test,
            links=dict(m.links or (self.links if lead else {})),
            notification_id=self.notification_id,
            reason=self.reason,
        )


# --------------------------------------------------------------------------
# Numbers and units


def format_number(value: float) -> str:
    """About three significant digits, never scientific notation.

    A person compares magnitudes; ``812.0000001`` or ``8.12e2`` only slow
    them down.
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, 2 - magnitude)
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _duration(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{format_number(s * 1000)} ms"
    if s < 120:
        return f"{sign}{format_number(s)} s"
    if s < 7200:
        return f"{sign}{format_number(s / 60)} min"
    if s < 2 * 86400:
        return f"{sign}{format_number(s / 3600)} h"
    return f"{sign}{format_number(s / 86400)} d"


def format_quantity(value: float, unit: str) -> str:
    """A value with its unit, scaled to what reads naturally.

    Detectors report in base units (``ms``, ``s``, ``ratio``); people read
    ``1.8 s`` and ``23.4 %``. Unknown units pass through unchanged.
    """
    u = unit.strip().lower()
    if u in ("ratio", "fraction"):
        return f"{format_number(value * 100)} %"
    if u in ("%", "percent", "pct"):
        return f"{format_number(value)} %"
    if u == "ms":
        return _duration(value / 1000) if abs(value) >= 1000 else f"{format_number(value)} ms"
    if u in ("s", "sec", "seconds"):
        return _duration(value)
    if u in ("rps", "req/s", "1/s"):
        return f"{format_number(value)} req/s"
    if u in ("", "count", "1"):
        return format_number(value)
    return f"{format_number(value)} {unit.strip()}"


def _band(low: float, high: float, unit: str) -> str:
    lo, hi = format_quantity(low, unit), format_quantity(high, unit)
    lo_num, _, lo_unit = lo.partition(" ")
    hi_num, _, hi_unit = hi.partition(" ")
    if lo_unit == hi_unit:
        return f"{lo_num}–{hi_num}{' ' + hi_unit if hi_unit else ''}"
    return f"{lo}–{hi}"


def _factor(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def metric_name(finding: Finding) -> str:
    return METRIC_NAMES.get(finding.kind, finding.kind.replace("_", " "))


def summary_line(finding: Finding) -> str:
    """Observed value against the expected band, e.g. for the first line of a message.

    A lower bound of zero (or none) says nothing for ratios and latencies, so
    it is shown as a ceiling only; a value outside a two-sided band says by
    how much, because "how bad" is the first thing on-call asks.
    """
    name = metric_name(finding)
    obs, low, high, unit = (
        finding.observed,
        finding.expected_low,
        finding.expected_high,
        finding.unit,
    )
    head = f"{name}: no data" if obs is None else f"{name} {format_quantity(obs, unit)}"
    has_low = low is not None and low > 0
    if high is not None and has_low and low is not None:
        text = f"{head}, expected {_band(low, high, unit)}"
        if obs is not None and high > 0 and obs > high:
            text += f" ({_factor(obs / high)}× the upper bound)"
        elif obs is not None and obs < low:
            text += f" ({format_number((1 - obs / low) * 100)} % below the lower bound)"
        return text
    if high is not None:
        return f"{head} (expected ≤ {format_quantity(high, unit)})"
    if has_low and low is not None:
        return f"{head} (expected ≥ {format_quantity(low, unit)})"
    return head


# --------------------------------------------------------------------------
# Time


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def format_utc(ts: float, *, date: bool = True) -> str:
    return utc(ts).strftime("%Y-%m-%d %H:%M UTC" if date else "%H:%M UTC")


def format_elapsed(seconds: float) -> str:
    """Whole minutes up to two hours, then hours and minutes: how on-call counts."""
    minutes = max(0, int(seconds // 60))
    if minutes < 1:
        return "< 1 min"
    if minutes < 120:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


def started_at(n: Notification) -> float:
    """When the incident began: the alerter's record, stable across firing and resolve."""
    return n.incident.first_seen


def ended_at(n: Notification) -> float | None:
    return n.finding.window_end if n.resolved else None


def since_line(n: Notification) -> str:
    """Elapsed time measured to the finding's window, not the wall clock.

    That keeps the text identical when a notification is retried or replayed.
    """
    start = started_at(n)
    end = ended_at(n)
    if end is not None:
        same_day = utc(start).date() == utc(end).date()
        return (
            f"from {format_utc(start)} to {format_utc(end, date=not same_day)} "
            f"({format_elapsed(end - start)})"
        )
    return f"since {format_utc(start)} ({format_elapsed(n.finding.window_end - start)})"


# --------------------------------------------------------------------------
# Titles and bodies


STATUS_TAGS: dict[str, str] = {"firing": "FIRING", "update": "UPDATE", "resolved": "RESOLVED"}


def route_label(finding: Finding) -> str:
    """``shop/deploy/web inbound GET /api/users``: the route as people say it."""
    return f"{finding.workload_key} {finding.direction} {finding.route}"


def subject(finding: Finding) -> str:
    """What is wrong where, without the status: ``latency — shop/deploy/web inbound GET /``."""
    return f"{finding.kind} — {route_label(finding)}"


def group_label(n: Notification) -> str:
    """What a group has in common, as people say it: ``shop/deploy/web`` or ``namespace shop``."""
    labels = n.group_labels
    ns, kind, name = (labels.get(k) for k in ("namespace", "workload_kind", "workload"))
    if ns and kind and name:
        rest = {
            k: v for k, v in labels.items() if k not in ("namespace", "workload_kind", "workload")
        }
        head = f"{ns}/{kind}/{name}"
        return " ".join([head, *(f"{k}={v}" for k, v in sorted(rest.items()))])
    if labels:
        return ", ".join(f"{k} {v}" for k, v in labels.items())
    return n.finding.workload_key


def group_subject(n: Notification) -> str:
    """``3 alerts — shop/deploy/web (latency, error_rate)`` for a grouped notification."""
    kinds = sorted({m.finding.kind for m in n.members})
    return f"{len(n.members)} alerts — {group_label(n)} ({', '.join(kinds)})"


def title(n: Notification) -> str:
    """``[FIRING] latency — shop/deploy/web inbound GET /api/users``; tests say so first."""
    what = group_subject(n) if n.grouped else subject(n.finding)
    tag = f"[{STATUS_TAGS[n.action]}] {what}"
    return f"[TEST] {tag}" if n.test else tag


def headline(n: Notification) -> str:
    """Subject and numbers on one line: what a phone notification can show."""
    text = f"{subject(n.finding)}: {summary_line(n.finding)}"
    if n.grouped:
        text = f"{group_subject(n)}: {text}"
        others = len(n.members) - 1
        text += f" (+{others} more)"
    return f"[TEST] {text}" if n.test else text


def member_line(m: Member) -> str:
    """One member of a group: ``[FIRING] latency — … GET /a: p99 1.8 s (expected ≤ 95 ms)``."""
    return f"[{STATUS_TAGS[m.action]}] {subject(m.finding)}: {summary_line(m.finding)}"


def suspect_line(finding: Finding) -> str | None:
    return f"suspect pod: {finding.suspect_pod}" if finding.suspect_pod else None


#: Members listed by name in a group's text when a sink gives no size
#: budget; the rest are counted ("+N more").
MAX_MEMBER_LINES = 20


def more_line(hidden: int) -> str:
    return f"+{hidden} more"


def fit_lines(
    lines: Sequence[str], budget: int, measure: Callable[[str], int] = len, sep: int = 1
) -> list[str]:
    """As many ``lines`` as fit in ``budget`` (joined by ``sep``-long separators), then ``+N more``.

    The count line is part of the budget, so the result never exceeds it:
    a target's size limit is met by listing fewer members, never by cutting
    one in half or dropping the count.
    """
    total = sum(measure(x) for x in lines) + sep * max(0, len(lines) - 1)
    if total <= budget:
        return list(lines)
    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        reserve = measure(more_line(len(lines) - i - 1)) + sep if i < len(lines) - 1 else 0
        cost = measure(line) + (sep if out else 0)
        if used + cost + reserve > budget:
            out.append(more_line(len(lines) - i))
            return out
        out.append(line)
        used += cost
    return out


def member_lines(n: Notification, render: Callable[[Member], str] | None = None) -> list[str]:
    """One line per member of a group (worst first, as decided), in the shared wording."""
    return [(render or member_line)(m) for m in n.members]


def group_heading(n: Notification) -> str:
    return f"In this group ({len(n.members)}):"


def body_lines(
    n: Notification, member_budget: int | None = None, *, with_members: bool = True
) -> list[str]:
    """The plain lines under the title; sinks add their own markup around them.

    A grouped notification lists its members after the lead's details, so a
    sink that renders only these lines still names every incident; with a
    ``member_budget`` (characters) the list is cut to fit it, otherwise after
    :data:`MAX_MEMBER_LINES` lines, and the rest are counted as ``+N more``.
    ``with_members=False`` leaves the list out for a sink that lays it out
    (and fits it to its own limits) itself, after :func:`group_heading`.
    """
    lines = [summary_line(n.finding), since_line(n)]
    if n.finding.explanation:
        lines.append(n.finding.explanation)
    suspect = suspect_line(n.finding)
    if suspect:
        lines.append(suspect)
    if n.reason == "repeat":
        lines.append("Reminder: still firing.")
    if n.grouped and with_members:
        lines.append(group_heading(n))
        listed = [f"- {line}" for line in member_lines(n)]
        if member_budget is not None:
            lines.extend(fit_lines(listed, member_budget))
        else:
            lines.extend(listed[:MAX_MEMBER_LINES])
            if len(listed) > MAX_MEMBER_LINES:
                lines.append(more_line(len(listed) - MAX_MEMBER_LINES))
    if n.test:
        lines.append("This is a test notification from meshwatch; no action is needed.")
    return lines


def plain_text(n: Notification) -> str:
    """Title, body and links as plain text, for targets without markup."""
    lines = [title(n), *body_lines(n)]
    lines.extend(f"{name}: {url}" for name, url in n.links.items())
    return "\n".join(lines)


def render_links(templates: dict[str, str], finding: Finding) -> dict[str, str]:
    """Fill the configured link templates for one finding.

    Values are percent-encoded in full (``/`` included) because route names
    are HTTP paths and would otherwise change the shape of the URL.
    """
    values = {name: str(getattr(finding, name)) for name in LINK_FIELDS}

    def fill(match: re.Match[str]) -> str:
        return quote(values[match.group(1)], safe="")

    return {name: _PLACEHOLDER.sub(fill, template) for name, template in templates.items()}


def sample_notification(now: float, links: dict[str, str] | None = None) -> Notification:
    """A made-up, clearly marked notification to check that a sink is wired up.

    Its route and fingerprint are its own, so a target that deduplicates
    will never merge it with a real incident.
    """
    route_key = "meshwatch/deploy/meshwatch/inbound/test"
    finding = Finding(
        id=finding_id(route_key, "latency", now, "firing"),
        route_key=route_key,
        namespace="meshwatch",
        workload_kind="deploy",
        workload="meshwatch",
        direction="inbound",
        route="test",
        kind="latency",
        status="firing",
        severity="info",
        score=1.0,
        observed=812.0,
        expected_low=40.0,
        expected_high=95.0,
        unit="ms",
        window_end=now,
        started_at=now - 600,
        model="test",
        model_version="0",
        explanation="Test notification: nothing is wrong with the mesh.",
    )
    incident = Incident(
        fingerprint=fingerprint(route_key, "latency"),
        route_key=route_key,
        kind="latency",
        status="firing",
        severity="info",
        first_seen=now - 600,
        last_seen=now,
        count=1,
        last_finding=finding,
    )
    return Notification(incident, finding, "firing", test=True, links=dict(links or {}))


def summary_fields(n: Notification) -> list[tuple[str, str]]:
    """The name/value facts every chat card shows beside the text."""
    f = n.finding
    return [
        ("Namespace", f.namespace),
        ("Workload", f"{f.workload_kind}/{f.workload}"),
        ("Route", f"{f.direction} {f.route}"),
        ("Severity", n.incident.severity),
        ("Score", format_number(f.score)),
        ("Occurrences", str(n.incident.count)),
    ]


def worst_severity(n: Notification) -> str:
    rank = {"critical": 3, "warning": 2, "info": 1}
    return max((m.incident.severity for m in n.all_members()), key=lambda s: rank.get(s, 0))


def group_fields(n: Notification) -> list[tuple[str, str]]:
    """The facts a chat card shows for a group: what the members share, and how many."""
    if not n.grouped:
        return summary_fields(n)
    f = n.finding
    kinds = sorted({m.finding.kind for m in n.members})
    workloads = sorted({f"{m.finding.workload_kind}/{m.finding.workload}" for m in n.members})
    namespaces = sorted({m.finding.namespace for m in n.members})
    return [
        ("Namespace", ", ".join(namespaces) if len(namespaces) <= 3 else f.namespace + ", …"),
        ("Workload", ", ".join(workloads) if len(workloads) <= 3 else f"{len(workloads)} in all"),
        ("Alerts", str(len(n.members))),
        ("Kinds", ", ".join(kinds)),
        ("Severity", worst_severity(n)),
    ]


def web_links(n: Notification) -> list[tuple[str, str]]:
    """The configured links a chat or ticket system can open (http and https only)."""
    return [(name, url) for name, url in n.links.items() if url.startswith(("https://", "http://"))]
