"""Silences and maintenance windows: the CLI round trip and what the alerter does with them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from pipeline.alert.silences import new_silence, read_silences, write_silence
from pipeline.alert.stage import AlerterProcessor
from pipeline.cli import main
from pipeline.config import MeshwatchConfig
from pipeline.receivers import WebhookReceiver
from pipeline.receivers.threaded import ReceiverThread
from tests.kafka_helpers import wait_until
from tests.test_alerter_support import FakeClock, configure, finding, inbound, resolved, webhook

pytestmark = pytest.mark.integration


@pytest.fixture
def hook() -> Iterator[ReceiverThread[WebhookReceiver]]:
    with ReceiverThread(WebhookReceiver()) as rx:
        yield rx


def config_file(cfg: MeshwatchConfig, tmp_path: Path) -> Path:
    path = tmp_path / "meshwatch.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": cfg.kafka.bootstrap_servers, "linger_ms": 0},
                "topics": {"prefix": cfg.topics.prefix},
                "observe": {"enabled": False},
            }
        )
    )
    return path


def test_silence_cli_add_list_expire_round_trip(
    kafka_cfg: MeshwatchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(config_file(kafka_cfg, tmp_path))
    assert main(["silence", "add", "-c", c, "namespace=shop", 'workload=~"web|api"',
                 "-d", "2h", "-m", "deploy of web", "--author", "ana"]) == 0  # fmt: skip
    sid = capsys.readouterr().out.strip()
    tomorrow = datetime.fromtimestamp(time.time() + 86400, UTC).replace(microsecond=0)
    starts, ends = tomorrow.isoformat(), tomorrow.replace(hour=0, minute=0).isoformat()
    assert ends < starts or tomorrow.hour == tomorrow.minute == 0
    assert main(["silence", "add", "-c", c, "kind=latency", "--starts-at", starts,
                 "--ends-at", ends]) == 2  # fmt: skip
    assert "must end after it starts" in capsys.readouterr().err
    assert main(["silence", "add", "-c", c, "nmespace=shop"]) == 2
    assert "unknown label 'nmespace'" in capsys.readouterr().err

    assert main(["silence", "list", "-c", c]) == 0
    table = capsys.readouterr().out
    assert sid in table and "active" in table and "deploy of web" in table
    assert 'workload=~"web|api"' in table and "ana" in table

    assert main(["silence", "expire", "-c", c, sid]) == 0
    assert f"{sid}: expired" in capsys.readouterr().out
    assert main(["silence", "list", "-c", c]) == 0
    assert sid not in capsys.readouterr().out
    assert main(["silence", "list", "-c", c, "--all", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == sid and listed["ends_at"] <= time.time()
    assert main(["silence", "expire", "-c", c, sid]) == 0
    assert "already expired" in capsys.readouterr().out
    assert main(["silence", "expire", "-c", c, "nope"]) == 2
    assert read_silences(kafka_cfg)[sid].comment == "deploy of web"


def test_a_silenced_incident_is_tracked_not_told_and_told_when_the_silence_ends(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    cfg = configure(
        kafka_cfg,
        [webhook("hook", hook.url)],
        grouping={"group_wait_seconds": 0, "group_interval_seconds": 0},
        flap_damping_seconds=0,
        silence_refresh_seconds=1,
    )
    clock = FakeClock()
    write_silence(cfg, new_silence(["workload=web"], starts_at=clock() - 1, ends_at=clock() + 600))
    p = AlerterProcessor(cfg, clock=clock, sleep=clock.sleep)
    try:
        p.process(inbound([finding("GET /a"), finding("GET /x", workload="api")]))
        p.process(inbound([finding("GET /a", window_end=1_700_000_030.0)]))
        assert [r.payload["alerts"][0]["labels"]["workload"] for r in hook.accepted()] == ["api"]
        web = next(i for i in p.book.incidents.values() if "web" in i.route_key)
        assert web.count == 2 and web.notified == {}  # tracked, not told
        assert p.muted_now(web)
        clock.advance(599)
        p.idle(0)
        assert len(hook.accepted()) == 1
        clock.advance(1)  # the silence ends; the incident still fires
        p.idle(0)
        got = hook.accepted()
        assert len(got) == 2 and got[1].payload["alerts"][0]["labels"]["workload"] == "web"
        assert got[1].payload["status"] == "firing"
    finally:
        p.close()


def test_expiring_a_silence_with_the_cli_releases_what_is_owed(
    kafka_cfg: MeshwatchConfig,
    hook: ReceiverThread[WebhookReceiver],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = configure(
        kafka_cfg,
        [webhook("hook", hook.url)],
        grouping={"group_wait_seconds": 0, "group_interval_seconds": 0},
        flap_damping_seconds=0,
        silence_refresh_seconds=0.05,
    )
    p = AlerterProcessor(cfg)  # the real clock: the CLI stamps real times
    try:
        p.process(inbound([finding("GET /a")]))
        assert [r.payload["status"] for r in hook.accepted()] == ["firing"]
        c = str(config_file(kafka_cfg, tmp_path))
        assert main(["silence", "add", "-c", c, "route=GET /a", "-d", "1h"]) == 0
        sid = capsys.readouterr().out.strip()
        wait_until(lambda: bool(p.idle(0) or p.silences.silences), 20, "silence seen")
        # resolved under the silence: nothing is said yet
        p.process(inbound([resolved("GET /a")]))
        p.idle(0)
        assert len(hook.accepted()) == 1
        assert main(["silence", "expire", "-c", c, sid]) == 0

        def told() -> bool:
            p.idle(0)
            return len(hook.accepted()) == 2

        wait_until(told, 20, "resolve after the silence")
        assert hook.accepted()[1].payload["status"] == "resolved"
    finally:
        p.close()


def test_a_maintenance_window_from_the_config_mutes_its_matches(
    kafka_cfg: MeshwatchConfig, hook: ReceiverThread[WebhookReceiver]
) -> None:
    clock = FakeClock()
    start = datetime.fromtimestamp(clock() - 60, UTC)
    end = datetime.fromtimestamp(clock() + 300, UTC)
    cfg = configure(
        kafka_cfg,
        [webhook("hook", hook.url)],
        grouping={"group_wait_seconds": 0, "group_interval_seconds": 0},
        maintenance_windows=[
            {"name": "db", "match": ["severity!=critical"], "starts_at": start, "ends_at": end}
        ],
    )
    p = AlerterProcessor(cfg, clock=clock, sleep=clock.sleep)
    try:
        p.process(inbound([finding("GET /a", severity="warning"), finding("GET /b", "api")]))
        assert [r.payload["alerts"][0]["labels"]["route"] for r in hook.accepted()] == ["GET /b"]
        clock.advance(300)
        p.idle(0)
        assert [r.payload["alerts"][0]["labels"]["route"] for r in hook.accepted()] == [
            "GET /b",
            "GET /a",
        ]
    finally:
        p.close()
