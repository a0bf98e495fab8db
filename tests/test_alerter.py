"""Incidents and the alerter stage, against a real broker and a local webhook."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.alert.incidents import IncidentBook, needs
from pipeline.alert.stage import AlerterProcessor
from pipeline.config import MeshwatchConfig
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import DeadLetter, Finding, decode, encode
from pipeline.stage.loop import StageRunner
from tests.kafka_helpers import produce, read_records, wait_until
from tests.test_alerter_support import RunningAlerter, configure, webhook
from tests.test_sinks_factories import make_finding

T0 = 1_700_000_000.0


def firing(t: float, **kw: object) -> Finding:
    return make_finding(window_end=t, started_at=T0, status="firing", **kw)


def resolved(t: float, **kw: object) -> Finding:
    return make_finding(window_end=t, started_at=T0, status="resolved", **kw)


# -- the incident book (pure) ----------------------------------------------


def test_lifecycle_and_replays() -> None:
    book = IncidentBook()
    c = book.apply(firing(T0 + 10))
    assert c is not None and c.action == "firing" and c.incident.count == 1
    assert book.apply(firing(T0 + 10)) is None  # the same finding replayed
    c = book.apply(firing(T0 + 20))
    assert c is not None and c.action is None and c.incident.count == 2
    c = book.apply(resolved(T0 + 30))
    assert c is not None and c.action == "resolved"
    assert book.apply(resolved(T0 + 30)) is None
    # the next firing of the same fingerprint is a new incident
    c = book.apply(firing(T0 + 100))
    assert c is not None and c.action == "firing" and c.incident.count == 1
    assert c.incident.notified == {}


def test_a_resolve_for_an_unknown_incident_is_ignored() -> None:
    assert IncidentBook().apply(resolved(T0)) is None


def test_escalation_is_an_update() -> None:
    book = IncidentBook()
    book.apply(firing(T0 + 10, severity="warning"))
    c = book.apply(firing(T0 + 20, severity="critical"))
    assert c is not None and c.action == "update" and c.incident.severity == "critical"


def test_what_each_sink_still_needs() -> None:
    book = IncidentBook()
    c = book.apply(firing(T0 + 10))
    assert c is not None
    inc = c.incident
    assert needs(inc, "a") == "firing"
    inc = book.mark_delivered(inc.fingerprint, "a", "firing", {"ts": "1"})
    assert needs(inc, "a") is None and needs(inc, "b") == "firing"
    inc = book.mark_delivered(inc.fingerprint, "b", "failed:firing", {})
    assert needs(inc, "b") is None  # dead-lettered, not retried on every finding
    c = book.apply(resolved(T0 + 20))
    assert c is not None
    assert needs(c.incident, "a") == "resolved"
    assert needs(c.incident, "b") is None  # never told it fired
    assert c.incident.sink_refs == {"a": {"ts": "1"}, "b": {}}


# -- the stage against the real broker -------------------------------------


def alerter_cfg(cfg: MeshwatchConfig, url: str) -> MeshwatchConfig:
    """One webhook sink, and timers at zero: every change is told at once."""
    return configure(
        cfg,
        [webhook("hook", url)],
        grouping={"group_wait_seconds": 0, "group_interval_seconds": 0},
        flap_damping_seconds=0,
    )


def run_alerter(
    cfg: MeshwatchConfig, group: str, until: Callable[[], bool]
) -> tuple[AlerterProcessor, StageRunner]:
    running = RunningAlerter(cfg, group)
    try:
        wait_until(until, what="alerter progress")
    finally:
        running.stop()
    return running.processor, running.runner


@pytest.mark.integration
def test_one_alert_one_resolve_and_no_duplicates_after_a_replay(
    kafka_cfg: MeshwatchConfig,
) -> None:
    with ReceiverThread(WebhookReceiver()) as rx:
        cfg = alerter_cfg(kafka_cfg, rx.url)
        key = firing(T0).workload_key.encode()
        running = RunningAlerter(cfg, "alerter")
        try:
            # a replayed finding (the same one twice) is one finding
            produce(cfg, cfg.topics.findings, [(key, encode(f)) for f in (firing(T0 + 10),) * 2])
            rx.wait_for_count(1, timeout=30)
            produce(cfg, cfg.topics.findings, [(key, encode(firing(T0 + 20)))])
            produce(cfg, cfg.topics.findings, [(key, encode(resolved(T0 + 30)))])
            rx.wait_for_count(2, timeout=30)
            wait_until(lambda: running.runner.stats.consumed >= 4, what="all consumed")
        finally:
            running.stop()
        got = [r.payload for r in rx.accepted()]
        assert [p["status"] for p in got] == ["firing", "resolved"]
        assert got[0]["alerts"][0]["fingerprint"] == got[1]["alerts"][0]["fingerprint"]
        assert running.processor.pending() == 0

        # A new alerter reading the findings again from the start (as after a
        # crash before its commit) restores the incidents and posts nothing.
        replay = RunningAlerter(cfg, "alerter-replay")
        try:
            wait_until(lambda: replay.runner.stats.consumed >= 4, what="replay consumed")
        finally:
            replay.stop()
        assert len(rx.requests()) == 2
        assert len(replay.processor.book.incidents) == 1


@pytest.mark.integration
def test_a_rejecting_sink_sends_the_finding_to_the_dlq(kafka_cfg: MeshwatchConfig) -> None:
    rx_obj = WebhookReceiver()
    with ReceiverThread(rx_obj) as rx:
        rx_obj.refuse(times=10, status=400)
        cfg = alerter_cfg(kafka_cfg, rx.url)
        f = firing(T0 + 10)
        produce(cfg, cfg.topics.findings, [(f.workload_key.encode(), encode(f))])
        processor, _ = run_alerter(cfg, "alerter", lambda: len(rx.requests()) >= 1)
        dlq = read_records(cfg, cfg.topics.dlq, lambda r: len(r) >= 1)
        letter = decode(DeadLetter, dlq[0].value)
        assert letter.reason == "rejected by sink"
        assert "status=400" in letter.error and "sink=hook" in letter.error
        assert decode(Finding, letter.value.encode()).id == f.id
        assert len(rx.requests()) == 1  # a 400 is not retried
        inc = next(iter(processor.book.incidents.values()))
        assert inc.notified == {"hook": "failed:firing"}
        assert processor.pending() == 0
