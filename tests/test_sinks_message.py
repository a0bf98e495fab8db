"""The shared wording: what every sink says about an incident."""

from __future__ import annotations

import pytest

from pipeline.alert.message import (
    Notification,
    format_elapsed,
    format_number,
    format_quantity,
    notification_id,
    plain_text,
    render_links,
    sample_notification,
    since_line,
    summary_line,
    title,
)
from tests.test_sinks_factories import make_finding, make_notification


def test_latency_summary_shows_band_and_how_far_above() -> None:
    assert summary_line(make_finding()) == "p99 812 ms, expected 40–95 ms (8.5× the upper bound)"


def test_error_ratio_in_percent_with_ceiling_only() -> None:
    f = make_finding(
        kind="error_rate", unit="ratio", observed=0.234, expected_low=0.0, expected_high=0.012
    )
    assert summary_line(f) == "error ratio 23.4 % (expected ≤ 1.2 %)"


def test_latency_over_a_second_reads_in_seconds() -> None:
    f = make_finding(observed=1834.0, expected_low=40.0, expected_high=950.0)
    assert summary_line(f) == "p99 1.83 s, expected 40–950 ms (1.9× the upper bound)"


def test_drop_below_lower_bound_says_by_how_much() -> None:
    f = make_finding(
        kind="traffic_drop", unit="req/s", observed=2.0, expected_low=40.0, expected_high=60.0
    )
    assert (
        summary_line(f) == "request rate 2 req/s, expected 40–60 req/s (95 % below the lower bound)"
    )


def test_floor_only_and_missing_value() -> None:
    f = make_finding(kind="traffic_drop", unit="req/s", observed=None, expected_high=None)
    assert summary_line(f) == "request rate: no data (expected ≥ 40 req/s)"


def test_value_inside_band_has_no_factor() -> None:
    assert summary_line(make_finding(observed=60.0)) == "p99 60 ms, expected 40–95 ms"


@pytest.mark.parametrize(
    ("value", "text"),
    [(812.0, "812"), (23.400000000000002, "23.4"), (1.2, "1.2"), (0.05, "0.05"), (0, "0"),
     (1234.6, "1235"), (-3.25, "-3.25")],
)  # fmt: skip
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(0.5, "s", "500 ms"), (90.0, "s", "90 s"), (7200.0, "seconds", "2 h"),
     (3 * 86400.0, "s", "3 d"), (12.0, "%", "12 %"), (3.0, "widgets", "3 widgets")],
)  # fmt: skip
def test_format_quantity_units(value: float, unit: str, text: str) -> None:
    assert format_quantity(value, unit) == text


def test_title_marks_status_and_test() -> None:
    assert title(make_notification()) == "[FIRING] latency — shop/deploy/web inbound GET /api/users"
    assert title(make_notification("resolved")).startswith("[RESOLVED] latency — ")
    assert title(make_notification(test=True)).startswith("[TEST] [FIRING] ")


def test_since_line_counts_to_the_finding_window_not_the_clock() -> None:
    assert since_line(make_notification()) == "since 2023-11-14 22:13 UTC (10 min)"
    assert since_line(make_notification("resolved")) == (
        "from 2023-11-14 22:13 UTC to 22:23 UTC (10 min)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "< 1 min"), (600, "10 min"), (7200, "2 h"), (7500, "2 h 5 min")]
)
def test_format_elapsed(seconds: float, text: str) -> None:
    assert format_elapsed(seconds) == text


def test_plain_text_carries_everything_a_person_needs() -> None:
    n = make_notification(links={"grafana": "https://g/x"})
    text = plain_text(n)
    for part in (
        "[FIRING] latency",
        "p99 812 ms",
        "since 2023-11-14 22:13 UTC",
        "far above its usual band",
        "suspect pod: web-7d9f-abc",
        "grafana: https://g/x",
    ):
        assert part in text


def test_render_links_fills_and_url_encodes() -> None:
    templates = {
        "grafana": "https://grafana.local/d/mesh?var-route={route_key}&var-ns={namespace}",
        "runbook": "https://wiki/{kind}/{direction}?r={route}&w={workload_kind}/{workload}",
        "raw": "https://x/{unknown}/{{literal}}",
    }
    links = render_links(templates, make_finding())
    assert links["grafana"] == (
        "https://grafana.local/d/mesh?var-route=shop%2Fdeploy%2Fweb%2Finbound%2FGET%20%2Fapi%2Fusers"
        "&var-ns=shop"
    )
    assert links["runbook"] == "https://wiki/latency/inbound?r=GET%20%2Fapi%2Fusers&w=deploy/web"
    assert links["raw"] == "https://x/{unknown}/{{literal}}"


def test_notification_id_is_deterministic_and_distinguishes_events() -> None:
    a, b = make_notification(), make_notification()
    assert a.notification_id == b.notification_id != ""
    assert a.notification_id.startswith(a.fingerprint)
    resolved = make_notification("resolved")
    assert resolved.notification_id != a.notification_id
    assert make_notification(test=True).notification_id != a.notification_id
    u1 = make_notification("update", window_end=a.finding.window_end + 10)
    u2 = make_notification("update", window_end=a.finding.window_end + 20)
    assert u1.notification_id != u2.notification_id
    assert u1.notification_id == notification_id(u1.incident, "update", u1.finding)


def test_explicit_notification_id_is_kept() -> None:
    n = make_notification()
    again = Notification(n.incident, n.finding, n.action, notification_id="given")
    assert again.notification_id == "given"


def test_sample_notification_is_marked_as_test() -> None:
    n = sample_notification(1_700_000_000.0)
    assert n.test
    assert title(n).startswith("[TEST] ")
    assert "no action is needed" in plain_text(n)
