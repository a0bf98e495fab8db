"""The alerter's policy without I/O: matchers, routing, group timers, damping, buckets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.alert.grouping import Decision, Grouper
from pipeline.alert.incidents import IncidentBook, due_action
from pipeline.alert.matchers import Matcher, MatcherError
from pipeline.alert.ratelimit import DEFAULT_LIMITS, TokenBucket, Unlimited, limiter_for
from pipeline.alert.routing import Router, incident_labels
from pipeline.alert.settings import GroupingConfig, MaintenanceWindow, RouteConfig
from pipeline.alert.silences import SilenceSet, new_silence
from pipeline.config import ConfigError, load_config
from pipeline.schema import Finding, Incident
from tests.test_sinks_factories import make_finding

T0 = 1_700_000_000.0


def finding(route: str = "GET /a", workload: str = "web", **kw: Any) -> Finding:
    ns = kw.pop("namespace", "shop")
    kw.setdefault("window_end", T0 + 10)
    kw.setdefault("started_at", T0)
    return make_finding(
        route_key=f"{ns}/deploy/{workload}/inbound/{route}",
        namespace=ns,
        workload=workload,
        route=route,
        **kw,
    )


# -- matchers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "hit"),
    [
        ("namespace=shop", {"namespace": "shop"}, True),
        ('namespace="shop"', {"namespace": "shopping"}, False),
        ("severity!=info", {"severity": "critical"}, True),
        ("severity!=info", {"severity": "info"}, False),
        ('workload=~"web|api"', {"workload": "api"}, True),
        ('workload=~"web|api"', {"workload": "web-v2"}, False),  # anchored, as in Alertmanager
        ("workload!~web.*", {"workload": "web-v2"}, False),
        ("route=~GET /api/.*", {"route": "GET /api/users"}, True),
        ("kind=latency", {}, False),  # a missing label is ""
        ('route=""', {}, True),
    ],
)
def test_matchers(text: str, labels: dict[str, str], hit: bool) -> None:
    assert Matcher.parse(text).matches(labels) is hit


@pytest.mark.parametrize(
    ("text", "error"),
    [("nmespace=shop", "unknown label"), ("workload=~(", "invalid regular"), ("shop", "not a")],
)
def test_bad_matchers_say_why(text: str, error: str) -> None:
    with pytest.raises(MatcherError, match=error):
        Matcher.parse(text)


def test_matcher_text_round_trips() -> None:
    m = Matcher.parse('route=~"GET /a\\"b"')
    assert Matcher.parse(str(m)) == m


# -- routing --------------------------------------------------------------------


def router(routes: list[dict[str, Any]], sinks: tuple[str, ...] = ("a", "b", "c")) -> Router:
    return Router(
        [RouteConfig.model_validate(r) for r in routes],
        GroupingConfig(),
        list(sinks),
        default_sinks=["c"],
        group_interval=10,
    )


def labels(**kw: Any) -> dict[str, str]:
    book = IncidentBook()
    change = book.apply(finding(**kw))
    assert change is not None
    return incident_labels(change.incident)


def test_first_matching_route_wins_without_continue() -> None:
    r = router(
        [
            {"match": ["severity=critical"], "sinks": ["a"]},
            {"match": ["namespace=shop"], "sinks": ["b"]},
        ]
    )
    assert set(r.route(labels(severity="critical"))) == {"a"}
    assert set(r.route(labels(severity="warning"))) == {"b"}
    assert set(r.route(labels(severity="warning", namespace="pay"))) == {"c"}  # default


def test_continue_goes_on_and_each_sink_is_reached_once() -> None:
    r = router(
        [
            {"name": "pager", "match": ["severity=critical"], "sinks": ["a"], "continue": True},
            {"name": "team", "match": ["namespace=~sh.*"], "sinks": ["a", "b"]},
            {"name": "never", "match": [], "sinks": ["c"]},
        ]
    )
    got = r.route(labels(severity="critical"))
    assert {s: p.route for s, p in got.items()} == {"a": "pager", "b": "team"}
    assert set(r.route(labels(severity="warning"))) == {"a", "b"}


def test_route_timers_override_the_defaults() -> None:
    r = router([{"match": [], "sinks": ["a"], "group_by": ["..."], "group_wait_seconds": 0}])
    policy = r.route(labels())["a"]
    assert policy.group_by == ("...",) and policy.group_wait == 0
    assert policy.group_interval == 10 and policy.repeat_interval == 4 * 3600


def test_config_rejects_routes_to_unknown_sinks_and_bad_matchers() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"alerter": {"routes": [{"match": ["kind=x"], "sinks": ["nope"]}]}})
    assert any("routes.0.sinks" in p and "nope" not in p for p in info.value.problems)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"alerter": {"routes": [{"match": ["kin=x"], "sinks": ["console"]}]}})
    assert any("unknown label 'kin'" in p for p in info.value.problems)
    with pytest.raises(ValidationError, match="stands alone"):
        GroupingConfig(group_by=["...", "namespace"])


# -- the incident book: flap damping and what is due -------------------------------


def test_a_refire_within_damping_continues_the_incident() -> None:
    book = IncidentBook(flap_damping=60)
    first = book.apply(finding(window_end=T0 + 10), now=1000)
    assert first is not None and first.action == "firing"
    book.record(first.incident.fingerprint, T0, "s", "firing", 1000)
    book.apply(finding(status="resolved", window_end=T0 + 20), now=1010)
    inc = book.incidents[first.incident.fingerprint]
    assert due_action(inc, "s", 1030, 60) == (None, 1070)  # resolve held back
    again = book.apply(finding(window_end=T0 + 30), now=1040)
    assert again is not None and again.action is None and again.superseded is None
    assert again.incident.flaps == 1 and again.incident.first_seen == T0
    assert due_action(again.incident, "s", 1040, 60) == (None, None)  # nothing to say


def test_a_refire_after_damping_is_a_new_occurrence_that_supersedes() -> None:
    book = IncidentBook(flap_damping=60)
    first = book.apply(finding(window_end=T0 + 10), now=1000)
    assert first is not None
    book.record(first.incident.fingerprint, T0, "s", "firing", 1000)
    book.apply(finding(status="resolved", window_end=T0 + 20), now=1010)
    late = book.apply(finding(window_end=T0 + 500, started_at=T0 + 490), now=1071)
    assert late is not None and late.action == "firing" and late.incident.notified == {}
    assert late.superseded is not None and late.superseded.notified == {"s": "firing"}


def test_escalation_is_due_as_an_update_once() -> None:
    book = IncidentBook()
    c = book.apply(finding(severity="warning"), now=0)
    assert c is not None
    fp = c.incident.fingerprint
    book.record(fp, T0, "s", "firing", 0)
    book.apply(finding(severity="critical", window_end=T0 + 20), now=1)
    assert due_action(book.incidents[fp], "s", 1) == ("update", None)
    book.record(fp, T0, "s", "update", 1)
    assert due_action(book.incidents[fp], "s", 2) == (None, None)


# -- groups and their timers --------------------------------------------------------


class Harness:
    """A book and a grouper for one sink, advanced by hand."""

    def __init__(self, *, grouped: bool = True, damping: float = 0.0, **grouping: Any) -> None:
        self.book = IncidentBook(damping)
        cfg = GroupingConfig(**grouping)
        self.grouper = Grouper(
            Router([], cfg, ["s"], group_interval=cfg.group_interval_seconds or 10),
            accepts_groups=lambda _: grouped,
            flap_damping=damping,
            max_group_size=cfg.max_group_size,
        )

    def feed(self, f: Finding, now: float) -> None:
        c = self.book.apply(f, now)
        if c is not None:
            self.grouper.place(c.incident, now)

    def turn(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        for g in self.grouper.due_groups(now):
            out += self.grouper.evaluate(g, self.book.incidents, [], now)
        for d in out:  # what the alerter does once the decision is in the outbox
            for m in d.members:
                self.book.record(m.incident.fingerprint, m.incident.first_seen, "s", d.action, now)
        return out


def test_group_wait_collects_a_workload_into_one_notice() -> None:
    h = Harness(group_wait_seconds=5, group_interval_seconds=30)
    h.feed(finding("GET /a"), 100)
    assert h.turn(100) == []
    h.feed(finding("GET /b"), 102)
    h.feed(finding("GET /c", severity="warning"), 103)
    h.feed(finding("GET /x", workload="api"), 103)
    assert h.turn(104) == []
    assert h.grouper.next_wake() == 105
    out = h.turn(105)
    web = [d for d in out if d.group_labels["workload"] == "web"]
    assert len(web) == 1 and web[0].grouped and web[0].action == "firing"
    assert [m.finding.route for m in web[0].members] == ["GET /a", "GET /b", "GET /c"]
    assert web[0].notification_id.startswith("group:")
    # the other workload was its own group, due at 103 + 5
    assert [d.group_labels["workload"] for d in h.turn(108)] == ["api"]


def test_later_changes_wait_for_group_interval() -> None:
    h = Harness(group_wait_seconds=0, group_interval_seconds=30)
    h.feed(finding("GET /a"), 100)
    assert len(h.turn(100)) == 1
    h.feed(finding("GET /b"), 101)
    h.feed(finding("GET /a", status="resolved", window_end=T0 + 20), 102)
    assert h.turn(110) == []
    out = h.turn(130)
    assert [(d.action, [m.finding.route for m in d.members]) for d in out] == [
        ("firing", ["GET /b"]),
        ("resolved", ["GET /a"]),
    ]


def test_a_group_that_resolves_before_group_wait_says_both_in_order() -> None:
    """Unlike Alertmanager, a short incident is told: fired (as it opened), then resolved."""
    h = Harness(group_wait_seconds=5, group_interval_seconds=10)
    h.feed(finding(observed=900.0), 100)
    h.feed(finding(status="resolved", window_end=T0 + 20, observed=60.0), 101)
    assert h.turn(104) == []
    fired = h.turn(105)
    assert [(d.action, [m.finding.observed for m in d.members]) for d in fired] == [
        ("firing", [900.0])
    ]
    assert h.grouper.next_wake() == 115  # the resolve follows on the next group tick
    assert h.turn(114) == []
    assert [d.action for d in h.turn(115)] == ["resolved"]
    assert h.turn(10_000) == []


def test_reminders_repeat_while_firing_and_stop_after_the_resolve() -> None:
    h = Harness(group_wait_seconds=0, group_interval_seconds=10, repeat_interval_seconds=3600)
    h.feed(finding("GET /a"), 0)
    h.feed(finding("GET /b"), 0)
    assert len(h.turn(0)) == 1
    assert h.turn(3599) == []
    reminder = h.turn(3600)
    assert len(reminder) == 1 and reminder[0].reason == "repeat"
    assert reminder[0].action == "update" and len(reminder[0].members) == 2
    second = h.turn(7200)
    assert second[0].reason == "repeat"
    assert second[0].notification_id != reminder[0].notification_id
    h.feed(finding("GET /a", status="resolved", window_end=T0 + 20), 7300)
    h.feed(finding("GET /b", status="resolved", window_end=T0 + 20), 7300)
    assert [d.action for d in h.turn(7300)] == ["resolved"]
    assert h.turn(20000) == []


def test_sinks_with_a_thread_per_incident_get_one_notice_each_on_group_timing() -> None:
    h = Harness(grouped=False, group_wait_seconds=5)
    for r in ("GET /a", "GET /b"):
        h.feed(finding(r), 100)
    out = h.turn(105)
    assert [len(d.members) for d in out] == [1, 1] and not any(d.grouped for d in out)
    assert all(not d.notification_id.startswith("group:") for d in out)


def test_large_groups_are_split() -> None:
    h = Harness(group_wait_seconds=0, max_group_size=2)
    for i in range(5):
        h.feed(finding(f"GET /{i}"), 0)
    assert [len(d.members) for d in h.turn(0)] == [2, 2, 1]


def test_damped_resolve_waits_then_goes_on_the_group_tick() -> None:
    h = Harness(damping=30, group_wait_seconds=0, group_interval_seconds=10)
    h.feed(finding(), 0)
    assert len(h.turn(0)) == 1
    h.feed(finding(status="resolved", window_end=T0 + 20), 5)
    assert h.turn(20) == []
    assert h.grouper.next_wake() == 35
    assert [d.action for d in h.turn(35)] == ["resolved"]


def test_silenced_members_are_left_out_until_the_silence_ends() -> None:
    h = Harness(group_wait_seconds=0)
    h.feed(finding("GET /a"), 0)
    h.feed(finding("GET /b"), 0)
    muted = [("s1", (Matcher.parse("route=GET /a"),))]
    out = []
    for g in h.grouper.due_groups(0):
        out += h.grouper.evaluate(g, h.book.incidents, muted, 0)
    assert [m.finding.route for d in out for m in d.members] == ["GET /b"]


# -- rate limits --------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    t = [0.0]
    bucket = TokenBucket(per_second=2.0, burst=3, clock=lambda: t[0])
    for _ in range(3):
        assert bucket.wait_time() == 0
        bucket.take()
    assert bucket.wait_time() == pytest.approx(0.5)
    t[0] = 0.5
    assert bucket.wait_time() == 0
    bucket.take()
    bucket.pause(10)
    t[0] = 5.0
    assert bucket.wait_time() == pytest.approx(5.5)


def test_defaults_come_from_the_reference() -> None:
    assert DEFAULT_LIMITS["slack"].per_second == 1.0
    assert DEFAULT_LIMITS["pagerduty"].per_second == 2.0
    assert isinstance(limiter_for("console", None, lambda: 0.0), Unlimited)


# -- silences and maintenance windows ------------------------------------------------


def test_silence_set_matches_only_while_active() -> None:
    s = SilenceSet()
    sil = new_silence(["namespace=shop", "kind=~lat.*"], starts_at=100, ends_at=200, now=50)
    assert s.update(sil) and not s.update(sil)
    lab = labels()
    assert s.muting(lab, 99) == [] and s.muting(lab, 100) == [sil.id]
    assert s.muting({**lab, "namespace": "pay"}, 150) == []
    assert s.muting(lab, 200) == []
    assert s.next_change(50) == 100 and s.next_change(150) == 200 and s.next_change(250) is None


def test_weekly_maintenance_window_in_its_time_zone() -> None:
    w = MaintenanceWindow(
        name="db",
        match=["namespace=shop"],
        weekdays=["sat"],
        start="23:00",
        end="01:00",
        timezone="Europe/Berlin",
    )
    s = SilenceSet([w])
    # Saturday 2026-01-10 23:30 in Berlin is 22:30 UTC; Sunday 00:30 too; 01:30 not
    sat_2330 = datetime(2026, 1, 10, 22, 30, tzinfo=UTC).timestamp()
    assert s.muting(labels(), sat_2330) == ["maintenance:db"]
    assert s.muting(labels(), sat_2330 + 3600) == ["maintenance:db"]
    assert s.muting(labels(), sat_2330 + 7200) == []
    assert s.next_change(sat_2330) == sat_2330 + 5400


def test_maintenance_window_must_be_one_kind() -> None:
    with pytest.raises(ValidationError, match="either"):
        MaintenanceWindow(name="x", weekdays=["mon"], start="01:00", end="02:00", ends_at=T0)


def incident_of(f: Finding) -> Incident:
    c = IncidentBook().apply(f)
    assert c is not None
    return c.incident
