"""``meshwatch alert test DESTINATION`` against local receivers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.receivers import ReceiverThread
from pipeline.receivers.pagerduty import PagerDutyReceiver
from pipeline.receivers.slack_api import SlackApiReceiver


def write_config(tmp_path: Path, sinks: str) -> Path:
    path = tmp_path / "meshwatch.yaml"
    path.write_text(
        "alerter:\n"
        "  retry: {max_attempts: 2, initial_backoff_seconds: 0.01, timeout_seconds: 5}\n"
        "  links:\n"
        "    grafana: https://grafana.example.com/d/x?var-route={route_key}\n"
        "  sinks:\n" + sinks
    )
    return path


def test_success_prints_status_attempts_and_refs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with ReceiverThread(SlackApiReceiver()) as rx:
        monkeypatch.setenv("TEST_SLACK_TOKEN", rx.receiver.token)
        cfg = write_config(
            tmp_path,
            "    - type: slack_bot\n      name: oncall\n      token_env: TEST_SLACK_TOKEN\n"
            f"      channel: '#alerts'\n      api_url: {rx.receiver.api_url}\n",
        )
        code = main(["alert", "test", "oncall", "-c", str(cfg)])
        (parent,) = rx.receiver.top_level("C0ALERTS01")
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "test firing to 'oncall' (slack_bot): delivered" in out.out
    assert "status:   200" in out.out
    assert "attempts: 1" in out.out
    assert f'"ts": "{parent.ts}"' in out.out
    assert parent.text.startswith("🧪 [TEST] [FIRING]")
    assert rx.receiver.token not in out.out + out.err


def test_resolve_option_closes_what_the_test_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ReceiverThread(PagerDutyReceiver()) as rx:
        key = rx.receiver.routing_keys[0]
        cfg = write_config(
            tmp_path,
            f"    - type: pagerduty\n      name: pd\n      routing_key: {key}\n"
            f"      url: {rx.receiver.enqueue_url}\n",
        )
        code = main(["alert", "-c", str(cfg), "test", "pd", "--resolve"])
        alerts = list(rx.receiver.alerts)
    out = capsys.readouterr()
    assert code == 0, out.err
    (alert,) = alerts
    assert alert.status == "resolved"
    assert alert.events[0]["payload"]["severity"] == "info"
    assert alert.events[0]["payload"]["summary"].startswith("[TEST] ")
    assert "test resolved to 'pd' (pagerduty): delivered" in out.out
    assert key not in out.out + out.err


def test_failure_exits_1_with_the_redacted_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ReceiverThread(SlackApiReceiver()) as rx:
        cfg = write_config(
            tmp_path,
            "    - type: slack_bot\n      name: oncall\n      token: xoxb-wrong-token-SECRET\n"
            f"      channel: C0ALERTS01\n      api_url: {rx.receiver.api_url}\n",
        )
        code = main(["alert", "test", "oncall", "-c", str(cfg)])
    out = capsys.readouterr()
    assert code == 1
    assert "FAILED" in out.out
    assert "invalid_auth (permanent)" in out.out
    assert "SECRET" not in out.out + out.err


def test_unknown_destination_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "    - type: console\n      name: console\n")
    assert main(["alert", "test", "nowhere", "-c", str(cfg)]) == 2
    assert "no sink named 'nowhere' (configured: console)" in capsys.readouterr().err


def test_an_unbuildable_sink_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = write_config(
        tmp_path,
        "    - type: teams\n      name: teams\n      webhook_url_env: NOT_SET_ANYWHERE\n",
    )
    assert main(["alert", "test", "teams", "-c", str(cfg)]) == 1
    assert "NOT_SET_ANYWHERE is not set" in capsys.readouterr().err
