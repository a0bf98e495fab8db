"""Incidents: one per fingerprint (route + kind), firing → updated → resolved.

The book is pure state, no I/O: given a Finding it says which incident it
belongs to and how it changed. Whether a sink *has* been told is recorded per
sink on the incident (``notified``, with when and at which revision), so a
replayed finding or a restarted alerter never tells a sink the same thing
twice, and what a sink is still owed can always be worked out from the
incident alone (:func:`due_action`).

Flap damping: a resolve is held for ``flap_damping`` seconds before any sink
hears of it. If the route fires again within that time the incident simply
goes on (same start, same threads and tickets, ``flaps`` + 1) and nobody is
told anything; the detector's own hysteresis handles single noisy windows,
this handles a route that keeps crossing the line.

Short incidents: when an incident has resolved before a sink was told it
fired (it fired and resolved in one poll batch because the alerter was down
or behind, or within a group's wait), that sink is still owed both notices:
the firing one first, told from the finding that opened the incident
(``opened_by``: its observed value, band and explanation, not the calm
values of the resolve), then the resolve, after flap damping as usual. The
detector's persistence already filters blips, so every incident that fired
reaches the on-call. The one exception is a silence: a resolved incident a
silence hides when the alerter looks at it is settled for every sink that
never heard of it (:meth:`IncidentBook.settle_untold`), as it was before.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pipeline.schema import Finding, Incident

Action = Literal["firing", "update", "resolved"]
#: How many recent finding ids an incident remembers to drop replays.
RECENT_IDS = 32
FAILED = "failed:"
#: Values of ``notified`` meaning "this sink believes the incident is firing".
TOLD_FIRING = ("firing", "update", FAILED + "update")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class Change:
    incident: Incident
    finding: Finding
    action: Action | None  # None: state changed, nobody to notify (yet)
    #: The previous occurrence of the fingerprint when this finding started a
    #: new one; sinks told it fired may still be owed its resolve.
    superseded: Incident | None = None


class IncidentBook:
    def __init__(self, flap_damping: float = 0.0) -> None:
        self.incidents: dict[str, Incident] = {}
        self.flap_damping = flap_damping

    def restore(self, incidents: Iterable[Incident]) -> None:
        """Load incidents in log order; a later record of a fingerprint wins."""
        for inc in incidents:
            self.incidents[inc.fingerprint] = inc

    def forget(self, fingerprints: Iterable[str]) -> None:
        for fp in fingerprints:
            self.incidents.pop(fp, None)

    def open(self) -> list[Incident]:
        return [i for i in self.incidents.values() if i.status == "firing"]

    def apply(self, f: Finding, now: float | None = None) -> Change | None:
        """Fold one finding in; None when it is a replay or changes nothing.

        ``now`` is the alerter's clock, used for flap damping only; the
        incident's own times come from the findings.
        """
        clock = time.time() if now is None else now
        fp = f.fingerprint
        cur = self.incidents.get(fp)
        if cur is not None and f.id in cur.finding_ids:
            return None  # replayed after a crash: already handled
        ids = ((cur.finding_ids if cur else ()) + (f.id,))[-RECENT_IDS:]
        action: Action | None
        superseded = None
        if f.status == "firing":
            if cur is not None and cur.status == "resolved" and self._damped(cur, clock):
                new = cur.model_copy(
                    update={
                        "status": "firing",
                        "resolved_at": None,
                        "flaps": cur.flaps + 1,
                        "last_seen": f.window_end,
                        "count": cur.count + 1,
                        "last_finding": f,
                        "finding_ids": ids,
                        "opened_by": cur.opened_by or f,
                    }
                )
                action = None
            elif cur is None or cur.status == "resolved":
                superseded = cur
                new = Incident(
                    fingerprint=fp,
                    route_key=f.route_key,
                    kind=f.kind,
                    status="firing",
                    severity=f.severity,
                    first_seen=f.started_at,
                    last_seen=f.window_end,
                    count=1,
                    last_finding=f,
                    finding_ids=ids,
                    opened_by=f,
                    # a new occurrence starts a new thread/ticket everywhere
                    notified={},
                    sink_refs={},
                )
                action = "firing"
            else:
                escalated = SEVERITY_RANK[f.severity] > SEVERITY_RANK[cur.severity]
                update: dict[str, object] = {
                    "last_seen": f.window_end,
                    "count": cur.count + 1,
                    "last_finding": f,
                    "finding_ids": ids,
                }
                if escalated:
                    update["severity"] = f.severity
                    update["revision"] = cur.revision + 1
                new = cur.model_copy(update=update)
                action = "update" if escalated else None
        else:
            if cur is None or cur.status == "resolved":
                return None  # a resolve for something we never saw firing
            new = cur.model_copy(
                update={
                    "status": "resolved",
                    "resolved_at": clock,
                    "last_seen": f.window_end,
                    "last_finding": f,
                    "finding_ids": ids,
                }
            )
            action = "resolved"
        self.incidents[fp] = new
        return Change(new, f, action, superseded)

    def _damped(self, cur: Incident, now: float) -> bool:
        """A re-fire that continues ``cur``: within damping, resolve not yet told anywhere."""
        if self.flap_damping <= 0 or cur.resolved_at is None:
            return False
        if any(v == "resolved" for v in cur.notified.values()):
            return False
        return now - cur.resolved_at < self.flap_damping

    def settle_untold(self, fingerprint: str) -> bool:
        """A silence covered this resolved incident: sinks never told of it stay untold.

        Drops ``opened_by``, which is what makes a firing notice owed after
        the resolve; sinks told it fired still get their resolve. True when
        something changed (the record is to be written).
        """
        inc = self.incidents.get(fingerprint)
        if inc is None or inc.status != "resolved" or inc.opened_by is None:
            return False
        self.incidents[fingerprint] = inc.model_copy(update={"opened_by": None})
        return True

    def record(
        self,
        fingerprint: str,
        first_seen: float,
        sink: str,
        action: str,
        now: float,
        revision: int | None = None,
    ) -> Incident | None:
        """Note that ``sink`` has been (or, from the outbox, will be) told ``action``.

        Ignored when that occurrence has been superseded; returns the
        updated incident otherwise.
        """
        inc = self.incidents.get(fingerprint)
        if inc is None or inc.first_seen != first_seen:
            return None
        new = inc.model_copy(
            update={
                "notified": {**inc.notified, sink: action},
                "notified_at": {**inc.notified_at, sink: now},
                "notified_revision": {
                    **inc.notified_revision,
                    sink: inc.revision if revision is None else revision,
                },
            }
        )
        self.incidents[fingerprint] = new
        return new

    def add_refs(
        self, fingerprint: str, first_seen: float, sink: str, refs: dict[str, str]
    ) -> Incident | None:
        """Keep ids a sink handed back (message ts, ticket key) for later notices."""
        inc = self.incidents.get(fingerprint)
        if not refs or inc is None or inc.first_seen != first_seen:
            return None
        merged = {**inc.sink_refs.get(sink, {}), **refs}
        new = inc.model_copy(update={"sink_refs": {**inc.sink_refs, sink: merged}})
        self.incidents[fingerprint] = new
        return new

    def mark_delivered(
        self,
        fingerprint: str,
        sink: str,
        status: str,
        refs: dict[str, str],
        first_seen: float | None = None,
    ) -> Incident:
        """Record what a sink was told; ignored if that occurrence was superseded."""
        inc = self.incidents[fingerprint]
        if first_seen is not None and inc.first_seen != first_seen:
            return inc
        notified = {**inc.notified, sink: status}
        sink_refs = {**inc.sink_refs, sink: {**inc.sink_refs.get(sink, {}), **refs}}
        new = inc.model_copy(update={"notified": notified, "sink_refs": sink_refs})
        self.incidents[fingerprint] = new
        return new


def due_action(
    inc: Incident, sink: str, now: float, flap_damping: float = 0.0
) -> tuple[Action | None, float | None]:
    """What ``sink`` is owed about ``inc`` now, and otherwise when it will be.

    The second value is a time at which something becomes due without any
    new finding (the end of flap damping); None when only a new finding, a
    silence ending or a reminder can change the answer.
    """
    told = inc.notified.get(sink)
    if inc.status == "firing":
        if told is None or told == "resolved":
            return "firing", None
        if told in TOLD_FIRING and inc.revision > inc.notified_revision.get(sink, 0):
            return "update", None
        return None, None  # told, or refused for good (dead-lettered)
    if told is None and inc.opened_by is not None:
        return "firing", None  # a short incident: its firing first, then its resolve
    if told not in TOLD_FIRING:
        return None, None  # a lone resolve would only confuse
    due = (inc.resolved_at or 0.0) + flap_damping
    if now >= due:
        return "resolved", None
    return None, due


def needs(incident: Incident, sink: str) -> Action | None:
    """What this sink has not been told yet about the incident, if anything.

    A delivery that failed for good is recorded as ``failed:<action>`` and is
    not tried again on the next finding (it went to the DLQ instead); a
    resolve is only sent to a sink that was told about the firing, and a
    sink never told of a resolved incident is owed its firing first.
    """
    opened = incident.opened_by is not None
    return next_action(incident.status, incident.notified.get(sink), opened=opened)


def next_action(status: str, told: str | None, *, opened: bool = False) -> Action | None:
    """``opened``: the incident still knows its opening finding (see :func:`due_action`)."""
    if status == "firing":
        return None if told in ("firing", "update", FAILED + "firing") else "firing"
    if told is None and opened:
        return "firing"  # a short incident: its firing first, then its resolve
    if told in (None, FAILED + "firing", "resolved", FAILED + "resolved"):
        return None  # a lone resolve would only confuse
    return "resolved"


def notice_finding(inc: Incident, action: Action) -> Finding:
    """The finding a notice is told from: the opening one for a late firing notice.

    A firing notice for an incident that has already resolved describes the
    anomaly (observed value, band, explanation), so it comes from the finding
    that opened the incident; every other notice from the latest finding.
    """
    if action == "firing" and inc.status == "resolved" and inc.opened_by is not None:
        return inc.opened_by
    return inc.last_finding


def owes_late_firing(inc: Incident) -> bool:
    """Resolved, and a sink not yet told of it may still be owed its firing notice."""
    return inc.status == "resolved" and inc.opened_by is not None
