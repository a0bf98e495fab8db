"""Which sinks hear about an incident, and how its notices are grouped and timed.

Rules are Alertmanager's routing tree flattened to one level: tried in order,
the first rule whose matchers all match takes the incident, and a rule with
``continue: true`` lets the search go on to later rules. When no rule
matches, the default route applies (``default_sinks``, or every sink).

Where we differ on purpose: an incident reaches each sink at most once, via
the first matching rule that names that sink. Two ``continue`` rules naming
the same sink would otherwise post the same incident twice to one channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.alert.matchers import Matcher, match_all, parse_all
from pipeline.alert.settings import EVERY_LABEL, GroupingConfig, RouteConfig
from pipeline.schema import Incident

DEFAULT_ROUTE = "default"


@dataclass(frozen=True, slots=True)
class Policy:
    """The grouping and timers a rule applies, with defaults already filled in."""

    route: str
    group_by: tuple[str, ...]
    group_wait: float
    group_interval: float
    repeat_interval: float


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    matchers: tuple[Matcher, ...]
    sinks: tuple[str, ...]
    cont: bool
    policy: Policy


def incident_labels(inc: Incident) -> dict[str, str]:
    """The labels matchers and ``group_by`` see; severity is the incident's (escalated)."""
    f = inc.last_finding
    return {
        "namespace": f.namespace,
        "workload_kind": f.workload_kind,
        "workload": f.workload,
        "workload_key": f.workload_key,
        "direction": f.direction,
        "route": f.route,
        "route_key": f.route_key,
        "kind": f.kind,
        "severity": inc.severity,
        "fingerprint": inc.fingerprint,
    }


class Router:
    def __init__(
        self,
        routes: Sequence[RouteConfig],
        grouping: GroupingConfig,
        sinks: Sequence[str],
        *,
        default_sinks: Sequence[str] | None = None,
        group_interval: float,
    ) -> None:
        """``group_interval`` is the resolved default (the config may leave it null)."""
        base = Policy(
            route=DEFAULT_ROUTE,
            group_by=tuple(grouping.group_by),
            group_wait=grouping.group_wait_seconds,
            group_interval=group_interval,
            repeat_interval=grouping.repeat_interval_seconds,
        )
        self.default = base
        self.sinks = tuple(sinks)
        self.default_sinks = tuple(default_sinks) if default_sinks is not None else self.sinks
        self.rules: list[_Rule] = []
        for i, r in enumerate(routes):
            name = r.name or f"route-{i}"
            policy = Policy(
                route=name,
                group_by=tuple(r.group_by) if r.group_by is not None else base.group_by,
                group_wait=_or(r.group_wait_seconds, base.group_wait),
                group_interval=_or(r.group_interval_seconds, base.group_interval),
                repeat_interval=_or(r.repeat_interval_seconds, base.repeat_interval),
            )
            self.rules.append(_Rule(name, parse_all(r.match), tuple(r.sinks), r.continue_, policy))

    def route(self, labels: Mapping[str, str]) -> dict[str, Policy]:
        """Sink name → the policy of the rule that sends the incident there."""
        out: dict[str, Policy] = {}
        matched = False
        for rule in self.rules:
            if not match_all(rule.matchers, labels):
                continue
            matched = True
            for sink in rule.sinks:
                out.setdefault(sink, rule.policy)
            if not rule.cont:
                break
        if not matched:
            for sink in self.default_sinks:
                out.setdefault(sink, self.default)
        return out


def group_values(policy: Policy, labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The labels that make an incident's group under ``policy``."""
    if EVERY_LABEL in policy.group_by:
        return (("route_key", labels["route_key"]), ("kind", labels["kind"]))
    return tuple((name, labels.get(name, "")) for name in policy.group_by)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
