"""Aggregation groups and their timers, after Alertmanager (reference §3.2).

Each sink an incident is routed to puts it in one group of that sink, keyed
by the route and the values of the route's ``group_by`` labels (by default
namespace + workload). A group speaks when it has something to say:

- its first notice waits ``group_wait`` after the first member needing one,
  so the findings of one detection window become one message;
- later notices (new members, updates, resolves) go out at most every
  ``group_interval``;
- a group with members still firing and nothing new is reminded of every
  ``repeat_interval``;
- a resolve is held for the flap damping time, and a silenced member is
  left out until its silence ends;
- a member that resolved before the sink was told it fired (a short
  incident) is told as firing first, from its opening finding, and its
  resolve follows on a later tick; one a silence hides by then is settled
  untold (``hushed``, for the alerter to record).

What a member is owed is never stored here: it is worked out from the
incident itself (:func:`due_action`), which is on the incidents topic. So
groups are rebuilt from restored incidents after a restart, and only the
timers (kept in memory) start afresh. Nothing here does I/O; the alerter
turns the returned :class:`Decision` s into outbox entries.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.alert.incidents import (
    SEVERITY_RANK,
    TOLD_FIRING,
    Action,
    due_action,
    notice_finding,
    owes_late_firing,
)
from pipeline.alert.matchers import Matcher, match_all
from pipeline.alert.message import Member, group_notification_id, notification_id
from pipeline.alert.routing import Policy, Router, group_values, incident_labels
from pipeline.schema import Incident

ACTION_ORDER: tuple[Action, ...] = ("firing", "update", "resolved")
Muted = Sequence[tuple[str, tuple[Matcher, ...]]]


@dataclass
class Group:
    key: str
    sink: str
    policy: Policy
    labels: tuple[tuple[str, str], ...]
    members: set[str] = field(default_factory=set)
    #: When a member first needed a notice since the last flush.
    first_pending_at: float | None = None
    last_flush_at: float | None = None
    scheduled: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """One notice to queue for one sink."""

    sink: str
    action: Action
    members: tuple[Member, ...]
    grouped: bool
    notification_id: str
    group_labels: dict[str, str]
    reason: str = ""


def muted_by(muted: Muted, labels: Mapping[str, str]) -> list[str]:
    return [name for name, matchers in muted if match_all(matchers, labels)]


class Grouper:
    def __init__(
        self,
        router: Router,
        *,
        accepts_groups: Callable[[str], bool],
        flap_damping: float,
        max_group_size: int,
    ) -> None:
        self.router = router
        self.accepts_groups = accepts_groups
        self.flap_damping = flap_damping
        self.max_group_size = max_group_size
        self.groups: dict[str, Group] = {}
        #: fingerprint → sink → group key
        self.membership: dict[str, dict[str, str]] = {}
        self._heap: list[tuple[float, str]] = []
        self._dirty: set[str] = set()
        #: Resolved incidents a silence hid from a sink never told they fired;
        #: the alerter settles them (``IncidentBook.settle_untold``) and clears this.
        self.hushed: set[str] = set()

    # -- membership ---------------------------------------------------------

    def place(self, inc: Incident, now: float) -> None:
        """Put (or keep) the incident in the groups its routes give; mark them for a look.

        ``now`` starts a group's ``group_wait`` if nothing was pending in it
        (the look that follows clears it again when nothing is). A sink that
        was told the incident fired stays a member even if the incident no
        longer routes there (its severity changed), so it still hears the
        resolve.
        """
        fp = inc.fingerprint
        labels = incident_labels(inc)
        routed = self.router.route(labels)
        mine = self.membership.setdefault(fp, {})
        for sink, policy in routed.items():
            key = _group_key(sink, policy, group_values(policy, labels))
            old = mine.get(sink)
            if old == key:
                continue
            if old is not None and inc.notified.get(sink) in TOLD_FIRING:
                continue  # stay where the sink knows it
            if old is not None:
                self._leave(fp, old)
            self._join(fp, sink, key, policy, group_values(policy, labels), inc)
            mine[sink] = key
        for sink in [s for s in mine if s not in routed]:
            if inc.notified.get(sink) not in TOLD_FIRING:
                self._leave(fp, mine.pop(sink))
        for key in mine.values():
            group = self.groups[key]
            if group.first_pending_at is None:
                group.first_pending_at = now
            self._dirty.add(key)

    def remove(self, fp: str) -> None:
        for key in self.membership.pop(fp, {}).values():
            self._leave(fp, key)

    def _join(
        self,
        fp: str,
        sink: str,
        key: str,
        policy: Policy,
        labels: tuple[tuple[str, str], ...],
        inc: Incident,
    ) -> None:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key, sink, policy, labels)
        group.members.add(fp)
        told_at = inc.notified_at.get(sink)
        if told_at is not None and (group.last_flush_at is None or told_at > group.last_flush_at):
            # restored after a restart: the group last spoke when its members were told
            group.last_flush_at = told_at

    def _leave(self, fp: str, key: str) -> None:
        group = self.groups.get(key)
        if group is None:
            return
        group.members.discard(fp)
        if not group.members:
            del self.groups[key]
            self._dirty.discard(key)

    def touch_all(self) -> None:
        """Look at every group on the next turn (a silence started or ended)."""
        self._dirty.update(self.groups)

    # -- timers -------------------------------------------------------------

    def due_groups(self, now: float) -> list[Group]:
        keys = set(self._dirty)
        self._dirty.clear()
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            keys.add(key)
        out = []
        for key in sorted(keys):
            group = self.groups.get(key)
            if group is not None:
                if group.scheduled is not None and group.scheduled <= now:
                    group.scheduled = None
                out.append(group)
        return out

    def has_dirty(self) -> bool:
        return bool(self._dirty)

    def next_wake(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def _schedule(self, group: Group, at: float) -> None:
        if group.scheduled is not None and group.scheduled <= at:
            return
        group.scheduled = at
        heapq.heappush(self._heap, (at, group.key))

    # -- decisions ------------------------------------------------------------

    def evaluate(
        self, group: Group, incidents: Mapping[str, Incident], muted: Muted, now: float
    ) -> list[Decision]:
        """What ``group`` says now (often nothing), and when to look again."""
        sink, policy = group.sink, group.policy
        pending: dict[Action, list[Incident]] = {}
        still_firing: list[Incident] = []
        wake: list[float] = []
        for fp in group.members:
            inc = incidents.get(fp)
            if inc is None:
                continue
            if muted and muted_by(muted, incident_labels(inc)):
                if owes_late_firing(inc) and inc.notified.get(sink) is None:
                    self.hushed.add(fp)
                continue
            action, at = due_action(inc, sink, now, self.flap_damping)
            if action is not None:
                pending.setdefault(action, []).append(inc)
            elif at is not None:
                wake.append(at)
            if inc.status == "firing" and inc.notified.get(sink) in TOLD_FIRING:
                still_firing.append(inc)
        decisions: list[Decision] = []
        if pending:
            if group.first_pending_at is None:
                group.first_pending_at = now
            if group.last_flush_at is None:
                due = group.first_pending_at + policy.group_wait
            else:
                due = group.last_flush_at + policy.group_interval
            if now >= due:
                for action in ACTION_ORDER:
                    told = sorted(pending.get(action, []), key=_reading_order)
                    members = [Member(i, notice_finding(i, action), action) for i in told]
                    decisions += self._decide(group, action, members, "")
                for inc in pending.get("firing", []):
                    if inc.status == "resolved":  # its resolve is owed on a later tick
                        damped = (inc.resolved_at or now) + self.flap_damping
                        wake.append(max(now + policy.group_interval, damped))
            else:
                wake.append(due)
        elif still_firing:
            last = group.last_flush_at
            if last is None:
                last = max(inc.notified_at.get(sink, now) for inc in still_firing)
            due = last + policy.repeat_interval
            if now >= due:
                told = sorted(still_firing, key=_reading_order)
                members = [Member(i, i.last_finding, "update") for i in told]
                decisions = self._decide(group, "update", members, "repeat", since=last)
            else:
                wake.append(due)
        if decisions:
            group.last_flush_at = now
            group.first_pending_at = None
            if still_firing or any(d.action != "resolved" for d in decisions):
                wake.append(now + policy.repeat_interval)
        elif not pending:
            group.first_pending_at = None
        if wake:
            self._schedule(group, min(wake))
        return decisions

    def _decide(
        self,
        group: Group,
        action: Action,
        members: list[Member],
        reason: str,
        *,
        since: float | None = None,
    ) -> list[Decision]:
        if not members:
            return []
        labels = dict(group.labels)
        if not self.accepts_groups(group.sink):
            return [
                Decision(
                    group.sink,
                    action,
                    (m,),
                    False,
                    single_id(m, action, reason, since),
                    labels,
                    reason,
                )
                for m in members
            ]
        out = []
        size = self.max_group_size
        for start in range(0, len(members), size):
            chunk = tuple(members[start : start + size])
            if len(chunk) == 1:
                nid = single_id(chunk[0], action, reason, since)
            else:
                tag = f"{reason}@{since:.3f}" if reason and since is not None else reason
                nid = group_notification_id(group.key, action, chunk, tag)
            out.append(Decision(group.sink, action, chunk, len(chunk) > 1, nid, labels, reason))
        return out


def _reading_order(inc: Incident) -> tuple[int, float, str, str]:
    """Worst first, then oldest, then by route: the order a person reads a group in."""
    return (-SEVERITY_RANK[inc.severity], inc.first_seen, inc.route_key, inc.kind)


def single_id(m: Member, action: Action, reason: str = "", since: float | None = None) -> str:
    """A single-incident notice keeps the id it always had; a reminder adds when it follows."""
    nid = notification_id(m.incident, action, m.finding)
    if reason:
        nid = f"{nid}:{reason}"
        if since is not None:
            nid = f"{nid}@{since:.3f}"
    return nid


def _group_key(sink: str, policy: Policy, values: tuple[tuple[str, str], ...]) -> str:
    inner = ",".join(f"{k}={v}" for k, v in values)
    return f"{sink}/{policy.route}/{{{inner}}}"
