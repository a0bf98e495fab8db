"""The REST fakes' shared machinery, the chart, and the new sink settings."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pipeline.alert.sinks.chart import DPI, HEIGHT_IN, PNG_SIGNATURE, WIDTH_IN, render_png
from pipeline.config import ConfigError, load_config
from pipeline.receivers.github import TOKEN, GitHubReceiver
from pipeline.schema import EvidencePoint
from tests.sink_targets import serve
from tests.test_sinks_factories import STARTED, make_notification

AUTH = {"Authorization": f"Bearer {TOKEN}", "User-Agent": "t"}


def test_route_scripts_fail_one_operation_and_leave_the_others() -> None:
    async def body(rx: GitHubReceiver, client: httpx.AsyncClient) -> None:
        issues = f"{rx.url}/repos/acme/mesh-alerts/issues"
        rx.fail_on("create", 502)
        listed = await client.get(issues, headers=AUTH)
        assert listed.status_code == 200
        failed = await client.post(issues, json={"title": "t"}, headers=AUTH)
        assert failed.status_code == 502
        assert rx.issues == {}  # a scripted failure does not act
        created = await client.post(issues, json={"title": "t"}, headers=AUTH)
        assert created.status_code == 201
        assert [r.route for r in rx.requests()] == ["list", "create", "create"]
        assert [r.scripted for r in rx.requests()] == [False, True, False]
        with pytest.raises(KeyError):
            rx.script_on("no-such-route", rx.error_reply(500, {}))

    serve(GitHubReceiver(), body)


def test_unknown_paths_methods_and_credentials() -> None:
    async def body(rx: GitHubReceiver, client: httpx.AsyncClient) -> None:
        issues = f"{rx.url}/repos/acme/mesh-alerts/issues"
        assert (await client.get(f"{rx.url}/nowhere", headers=AUTH)).status_code == 404
        assert (await client.delete(issues, headers=AUTH)).status_code == 404
        bad = await client.get(issues, headers={"Authorization": "Bearer nope", "User-Agent": "t"})
        assert (bad.status_code, bad.json()["message"]) == (401, "Bad credentials")
        anonymous = await client.get(issues, headers={"User-Agent": ""})
        assert anonymous.status_code == 403
        problems = [r.reason for r in rx.rejected()]
        assert all(problems)

    serve(GitHubReceiver(), body)


def test_chart_is_a_small_png_and_needs_evidence() -> None:
    evidence = tuple(EvidencePoint(t=STARTED + 60 * i, value=0.01 * i) for i in range(10))
    png = render_png(
        make_notification(
            evidence=evidence, unit="ratio", observed=0.09, expected_low=0.0, expected_high=0.02
        )
    )
    assert png is not None
    assert png.startswith(PNG_SIGNATURE)
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    assert (width, height) == (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI))
    assert len(png) < 100_000
    assert render_png(make_notification()) is None
    gaps = (EvidencePoint(t=STARTED, value=None),)
    assert render_png(make_notification(evidence=gaps)) is None


@pytest.mark.parametrize(
    ("sink_yaml", "expected"),
    [
        ("type: slack_bot\n      channel: C1", "exactly one of token, token_file, token_env"),
        (
            "type: slack_bot\n      channel: C1\n      token: a\n      token_env: B",
            "exactly one of token",
        ),
        ("type: pagerduty", "exactly one of routing_key"),
        (
            "type: jira_cloud\n      url: https://x\n      project: OPS\n      email: a@b\n"
            "      api_token_env: T\n      labels: ['has space']",
            "cannot be empty or contain spaces",
        ),
        (
            "type: servicenow\n      instance_url: https://x\n      password_env: P",
            "a password needs a username",
        ),
        ("type: github\n      repository: not-a-repo\n      token_env: T", "repository"),
        ("type: alertmanager\n      url: ftp://x", "is not an http(s) URL"),
        (
            "type: alertmanager\n      url: http://x\n      bearer_token: a\n"
            "      bearer_token_env: B",
            "at most one of bearer_token",
        ),
        ("type: teams\n      webhook_url_env: T\n      colour: red", "unknown setting"),
    ],
)
def test_sink_settings_are_checked(tmp_path: Path, sink_yaml: str, expected: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(f"alerter:\n  sinks:\n    - {sink_yaml}\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert any(expected in p for p in info.value.problems), info.value.problems
