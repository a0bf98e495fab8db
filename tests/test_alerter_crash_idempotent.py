"""SIGKILL in the one risky instant, for targets that can be made exactly-once.

The risky instant is after the target has taken a notice and before the
alerter has written its outbox tombstone: the notice is restored after the
restart and sent again. Each receiver here kills ``meshwatch alert`` (a child
process) from inside its request handler on the first notice of a phase —
after the target has stored it, before the answer leaves — and the test
restarts the alerter. What must hold for these targets: the repeat happens
(the kill was real) and still nothing is duplicated where people look:

- PagerDuty: one alert per incident (the repeat has the same ``dedup_key``);
- Slack bot: one message per incident and one resolve reply in its thread
  (a restored notice is looked up by its metadata before posting);
- Google Chat: one message per notice (the repeat has the same ``requestId``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import MeshwatchConfig
from pipeline.receivers.base import Received
from pipeline.receivers.google_chat import GoogleChatReceiver
from pipeline.receivers.pagerduty import PagerDutyReceiver
from pipeline.receivers.slack_api import SlackApiReceiver
from pipeline.receivers.threaded import ReceiverThread
from pipeline.schema import encode
from tests.kafka_helpers import produce
from tests.test_alerter_crash import Alerter
from tests.test_alerter_support import finding, resolved

pytestmark = pytest.mark.integration

ROUTES = ["GET /a", "GET /b", "POST /c"]
CHANNEL = "C0ALERTS01"


class KillOnFirst:
    """A receiver hook: SIGKILL the alerter at the first notice it stores while armed."""

    def __init__(self, alerter: Alerter, route: str) -> None:
        self.alerter = alerter
        self.route = route
        self.armed = threading.Event()
        self.kills: list[float] = []

    def __call__(self, record: Received) -> None:
        if record.route != self.route or not record.accepted or not self.armed.is_set():
            return
        proc = self.alerter.proc
        if proc is None or proc.poll() is not None:
            return  # sent just before another hook's kill: wait for the next one
        self.armed.clear()
        self.kills.append(time.time())
        os.kill(proc.pid, signal.SIGKILL)  # before this request's answer is sent


def supervise(alerter: Alerter, done: Any, timeout: float, what: str) -> int:
    """Restart the alerter whenever it died, until ``done()``; returns the restarts."""
    restarts = 0
    pace = threading.Event()  # never set: the polling interval
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        proc = alerter.proc
        if proc is not None and proc.poll() is not None:
            alerter.start()
            restarts += 1
        pace.wait(0.05)
    return restarts


def test_sigkill_between_receipt_and_tombstone_duplicates_nothing_at_idempotent_targets(
    kafka_cfg: MeshwatchConfig, tmp_path: Path
) -> None:
    config = tmp_path / "alerter.yaml"
    alerter = Alerter(config, tmp_path / "alerter.log")
    hooks = {
        "pd": KillOnFirst(alerter, "enqueue"),
        "slack": KillOnFirst(alerter, "chat.postMessage"),
        "chat": KillOnFirst(alerter, "create"),
    }
    pd_rx = PagerDutyReceiver(on_request=hooks["pd"])
    slack_rx = SlackApiReceiver(on_request=hooks["slack"])
    chat_rx = GoogleChatReceiver(on_request=hooks["chat"])
    with (
        ReceiverThread(pd_rx) as pd,
        ReceiverThread(slack_rx) as slack,
        ReceiverThread(chat_rx) as chat,
    ):
        names = ["pd", "slack", "chat"]
        fast = {"per_second": 100, "burst": 20}
        config.write_text(
            yaml.safe_dump(
                {
                    "kafka": {
                        "bootstrap_servers": kafka_cfg.kafka.bootstrap_servers,
                        "session_timeout_ms": 2000,
                        "heartbeat_interval_ms": 500,
                        "poll_timeout_ms": 100,
                        "linger_ms": 0,
                    },
                    "topics": {"prefix": kafka_cfg.topics.prefix},
                    "observe": {"enabled": False},
                    "log_level": "WARNING",
                    "alerter": {
                        "sinks": [
                            {
                                "type": "pagerduty",
                                "name": "pd",
                                "routing_key": pd_rx.routing_keys[0],
                                "url": pd_rx.enqueue_url,
                            },
                            {
                                "type": "slack_bot",
                                "name": "slack",
                                "token": slack_rx.token,
                                "channel": CHANNEL,
                                "api_url": slack_rx.api_url,
                                "thread_replies": True,
                            },
                            {
                                "type": "google_chat",
                                "name": "chat",
                                "webhook_url": chat_rx.webhook_url,
                            },
                        ],
                        "grouping": {
                            "group_by": ["..."],
                            "group_wait_seconds": 0,
                            "group_interval_seconds": 0,
                        },
                        "flap_damping_seconds": 0,
                        "rate_limits": dict.fromkeys(names, fast),
                        "retry": {"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.5},
                    },
                }
            )
        )
        alerter.start()
        try:
            # phase 1: three incidents fire; every target kills the alerter once
            for h in hooks.values():
                h.armed.set()
            produce(
                kafka_cfg,
                kafka_cfg.topics.findings,
                [(f.workload_key.encode(), encode(f)) for f in (finding(r) for r in ROUTES)],
            )

            def fired() -> bool:
                return (
                    len(pd_rx.alerts) >= 3
                    and len(slack_rx.top_level(CHANNEL)) >= 3
                    and len(chat_rx.messages) >= 3
                    and all(not h.armed.is_set() for h in hooks.values())
                )

            supervise(alerter, fired, 120, "three incidents at every target")
            # phase 2: they resolve; again every target kills the alerter once
            for h in hooks.values():
                h.armed.set()
            produce(
                kafka_cfg,
                kafka_cfg.topics.findings,
                [(f.workload_key.encode(), encode(f)) for f in (resolved(r) for r in ROUTES)],
            )

            def settled() -> bool:
                parents = slack_rx.top_level(CHANNEL)
                return (
                    sum(a.status == "resolved" for a in pd_rx.alerts) >= 3
                    and sum(bool(slack_rx.thread(CHANNEL, p.ts)) for p in parents) >= 3
                    and len(chat_rx.messages) >= 6
                    and all(not h.armed.is_set() for h in hooks.values())
                )

            supervise(alerter, settled, 120, "three resolves at every target")
        finally:
            alerter.stop()
        log_tail = (tmp_path / "alerter.log").read_text()[-3000:]

        kills = [k for h in hooks.values() for k in h.kills]
        assert len(kills) == 6, (kills, log_tail)  # each target killed it once per phase

        # PagerDuty: one alert per incident, triggered and resolved, whatever was repeated
        assert len(pd_rx.alerts) == 3, [a.dedup_key for a in pd_rx.alerts]
        assert all(a.status == "resolved" for a in pd_rx.alerts)
        assert len(pd_rx.accepted()) > 6  # the killed requests were sent again

        # Slack: one message per incident, one resolve reply each, edited in place
        parents = slack_rx.top_level(CHANNEL)
        assert len(parents) == 3, [p.text for p in parents]
        for p in parents:
            assert len(slack_rx.thread(CHANNEL, p.ts)) == 1, p.text
            assert p.text.startswith("✅")  # the resolve edited the incident's message
        assert slack_rx.calls("conversations.history") or slack_rx.calls("conversations.replies")

        # Google Chat: one message per notice; the repeat was answered with the first
        assert len(chat_rx.messages) == 6
        ids = Counter(r.query["requestId"] for r in chat.accepted())
        assert len(ids) == 6 and max(ids.values()) >= 2, ids
        assert not (pd.rejected() or slack.rejected() or chat.rejected())
