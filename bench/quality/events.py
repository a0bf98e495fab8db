"""Event-level scoring of alerts against labelled events.

Definitions (the same for the simulator and the real series):

- An **event** is one labelled anomaly: a fault of the simulator (its route
  keys and its time span) or a run of consecutive labelled points of a real
  series. Its *first window* is the first window (or point) inside it, its
  *last window* the last one.
- An **alert** is a finding that *opens* (status ``firing``) on one route at
  one window; a finding that stays open is one alert, however long.
- An alert **matches** an event when it is on one of the event's route keys
  and its window lies in ``[first window, last window + grace]``.
- Alerts are taken in time order. An alert matching an event not yet
  detected is a **true positive** and detects it (each event is detected at
  most once; the earliest-starting event wins if several match). An alert
  matching only already-detected events is a **duplicate** (a re-alert of
  the same incident): counted apart, neither true nor false, and split in
  two — an alert on *another route or kind* of the incident (a fault on a
  workload shows on each of its routes and on its callers' outbound edges;
  the alerter groups these into one notification) and a **re-fire**, the
  same route and kind alerting again after its finding resolved (flapping,
  which pages twice). Every other
  alert is a **false alert** — except during the tolerance of a *settle*
  event (below).
- **Must-not-alert events** are scored as false alerts: a ``no_alert``
  event (a one-window blip) must draw no alert at all within its span plus
  the grace; a ``settle`` event (a deploy that shifts latency and stays)
  tolerates alerts during its first ``settle_windows`` windows (the
  re-baseline delay plus persistence), and after that every new alert on its
  routes is false, and so is a finding on its routes still open then.
- precision = TP / (TP + false alerts); recall = detected events / events;
  F1 their harmonic mean.
- **time to detect** = windows from the event's first window to the
  detecting alert's window, counting both (an alert at the second window of
  an event took 2 windows; fire-after-2 cannot do better).
- **false alerts per 1,000 route-hours** = false alerts / hours of normal
  traffic × 1,000, where normal traffic is every route-window after the
  warm-up that is not inside an alert event's span plus grace on its routes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    id: str
    kind: str
    keys: frozenset[str]
    first: float  # first window end (or point) inside the event
    last: float  # last window end (or point) inside the event
    expect: str = "alert"  # alert | no_alert | settle
    group: str = ""


@dataclass(frozen=True)
class Alert:
    key: str
    t: float
    kind: str
    closed_at: float | None = None  # window the finding resolved at, if it did


@dataclass
class Score:
    events: int = 0
    detected: int = 0
    tp: int = 0
    fp: int = 0
    duplicates: int = 0
    refires: int = 0  # duplicates that repeat an earlier alert's route and kind
    ttd: list[float] = field(default_factory=list)
    exposure_hours: float = 0.0
    fp_by_cause: dict[str, int] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    detected_by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else (1.0 if self.events else 0.0)

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def median_ttd(self) -> float:
        return statistics.median(self.ttd) if self.ttd else math.nan

    @property
    def fp_per_1000h(self) -> float:
        return 1000.0 * self.fp / self.exposure_hours if self.exposure_hours else math.nan

    def add(self, other: Score) -> None:
        self.events += other.events
        self.detected += other.detected
        self.tp += other.tp
        self.fp += other.fp
        self.duplicates += other.duplicates
        self.refires += other.refires
        self.ttd += other.ttd
        self.exposure_hours += other.exposure_hours
        self.missed += other.missed
        for k, v in other.fp_by_cause.items():
            self.fp_by_cause[k] = self.fp_by_cause.get(k, 0) + v
        for k, (d, n) in other.detected_by_kind.items():
            d0, n0 = self.detected_by_kind.get(k, (0, 0))
            self.detected_by_kind[k] = (d0 + d, n0 + n)


def score(
    events: Sequence[Event],
    alerts: Iterable[Alert],
    *,
    step: float,
    grace: float,
    settle_windows: int,
    exposure_hours: float,
    end_of_data: float = math.inf,
    cause_of: dict[str, str] | None = None,
) -> Score:
    """Match ``alerts`` to ``events`` as the module docstring defines; ``step`` is the window."""
    out = Score(exposure_hours=exposure_hours)
    targets = [e for e in events if e.expect == "alert"]
    out.events = len(targets)
    detected: set[str] = set()
    alerted: dict[str, set[tuple[str, str]]] = {}  # event → (route, kind) that alerted on it
    for a in sorted(alerts, key=lambda a: (a.t, a.key)):
        hits = [e for e in targets if a.key in e.keys and e.first <= a.t <= e.last + grace]
        fresh = [e for e in hits if e.id not in detected]
        if fresh:
            e = min(fresh, key=lambda e: e.first)
            detected.add(e.id)
            alerted.setdefault(e.id, set()).add((a.key, a.kind))
            out.tp += 1
            out.ttd.append(round((a.t - e.first) / step) + 1)
            continue
        if hits:
            out.duplicates += 1
            if any((a.key, a.kind) in alerted.get(e.id, ()) for e in hits):
                out.refires += 1
            for e in hits:
                alerted.setdefault(e.id, set()).add((a.key, a.kind))
            continue
        cause = _quiet_cause(events, a, grace, step, settle_windows)
        if cause == "tolerated":
            continue
        cause = cause or (cause_of or {}).get(a.key, "normal traffic")
        out.fp += 1
        out.fp_by_cause[cause] = out.fp_by_cause.get(cause, 0) + 1
    # a settle event's routes must be quiet once it has settled
    for e in events:
        if e.expect != "settle":
            continue
        deadline = e.first + settle_windows * step
        if deadline > end_of_data:
            continue
        for a in alerts:
            if (
                a.key in e.keys
                and a.t <= deadline
                and (a.closed_at is None or a.closed_at > deadline)
            ):
                out.fp += 1
                out.fp_by_cause["deploy shift still alerting"] = (
                    out.fp_by_cause.get("deploy shift still alerting", 0) + 1
                )
                break
    out.detected = len(detected)
    for e in targets:
        d, n = out.detected_by_kind.get(e.kind, (0, 0))
        out.detected_by_kind[e.kind] = (d + (e.id in detected), n + 1)
        if e.id not in detected:
            out.missed.append(e.id)
    return out


def _quiet_cause(
    events: Sequence[Event], a: Alert, grace: float, step: float, settle_windows: int
) -> str | None:
    # Every event on the alert's route counts, not the first one found: two
    # deploys that share a route (a workload's ``*`` route, a caller's edge)
    # each tolerate alerts while they settle, however long ago the other did.
    causes = set()
    for e in events:
        if a.key not in e.keys:
            continue
        if e.expect == "no_alert" and e.first <= a.t <= e.last + grace:
            causes.add("blip")
        if e.expect == "settle" and a.t >= e.first:
            if a.t <= e.first + settle_windows * step:
                causes.add("tolerated")
            else:
                causes.add("deploy shift after settling")
    for cause in ("tolerated", "blip", "deploy shift after settling"):
        if cause in causes:
            return cause
    return None


def label_runs(times: Sequence[float], labels: Sequence[int]) -> list[tuple[float, float]]:
    """Consecutive labelled points as (first, last) time pairs."""
    runs: list[tuple[float, float]] = []
    start: float | None = None
    prev = 0.0
    for t, lab in zip(times, labels, strict=True):
        if lab and start is None:
            start = t
        if not lab and start is not None:
            runs.append((start, prev))
            start = None
        prev = t
    if start is not None:
        runs.append((start, prev))
    return runs
