"""Incidents: one per fingerprint (route + kind), firing → resolved.

The book is pure state, no I/O: given a Finding it says which incident it
belongs to and whether anybody must be told. Whether a sink *has* been told
is recorded per sink on the incident (``notified``), so a replayed finding or
a restarted alerter never tells a sink the same thing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pipeline.schema import Finding, Incident

Action = Literal["firing", "update", "resolved"]
#: How many recent finding ids an incident remembers to drop replays.
RECENT_IDS = 32


@dataclass(frozen=True, slots=True)
class Change:
    incident: Incident
    finding: Finding
    action: Action | None  # None: state changed, nobody to notify


class IncidentBook:
    def __init__(self) -> None:
        self.incidents: dict[str, Incident] = {}

    def restore(self, incidents: Iterable[Incident]) -> None:
        """Load incidents in log order; a later record of a fingerprint wins."""
        for inc in incidents:
            self.incidents[inc.fingerprint] = inc

    def forget(self, fingerprints: Iterable[str]) -> None:
        for fp in fingerprints:
            self.incidents.pop(fp, None)

    def open(self) -> list[Incident]:
        return [i for i in self.incidents.values() if i.status == "firing"]

    def apply(self, f: Finding) -> Change | None:
        """Fold one finding in; None when it is a replay or changes nothing."""
        fp = f.fingerprint
        cur = self.incidents.get(fp)
        if cur is not None and f.id in cur.finding_ids:
            return None  # replayed after a crash: already handled
        ids = ((cur.finding_ids if cur else ()) + (f.id,))[-RECENT_IDS:]
        action: Action | None
        if f.status == "firing":
            if cur is None or cur.status == "resolved":
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
                    # a new occurrence starts a new thread/ticket everywhere
                    notified={},
                    sink_refs={},
                )
                action = "firing"
            else:
                escalated = f.severity == "critical" and cur.severity != "critical"
                new = cur.model_copy(
                    update={
                        "last_seen": f.window_end,
                        "count": cur.count + 1,
                        "last_finding": f,
                        "finding_ids": ids,
                        "severity": "critical" if escalated else cur.severity,
                    }
                )
                action = "update" if escalated else None
        else:
            if cur is None or cur.status == "resolved":
                return None  # a resolve for something we never saw firing
            new = cur.model_copy(
                update={
                    "status": "resolved",
                    "last_seen": f.window_end,
                    "last_finding": f,
                    "finding_ids": ids,
                }
            )
            action = "resolved"
        self.incidents[fp] = new
        return Change(new, f, action)

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


FAILED = "failed:"


def needs(incident: Incident, sink: str) -> Action | None:
    """What this sink has not been told yet about the incident, if anything.

    A delivery that failed for good is recorded as ``failed:<action>`` and is
    not tried again on the next finding (it went to the DLQ instead); a
    resolve is only sent to a sink that was told about the firing.
    """
    return next_action(incident.status, incident.notified.get(sink))


def next_action(status: str, told: str | None) -> Action | None:
    if status == "firing":
        return None if told in ("firing", "update", FAILED + "firing") else "firing"
    if told in (None, FAILED + "firing", "resolved", FAILED + "resolved"):
        return None  # never told it fired: a lone resolve would only confuse
    return "resolved"
