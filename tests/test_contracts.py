"""Message contracts: round trips and precise rejections."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.keys import split_route_key
from pipeline.schema import (
    DeadLetter,
    Finding,
    GoldenBatch,
    GoldenSample,
    decode,
    describe_error,
    encode,
    finding_id,
    fingerprint,
)


def sample(**kw: object) -> GoldenSample:
    base: dict[str, object] = dict(
        window_end=1_700_000_000.0,
        window_seconds=10.0,
        namespace="shop",
        workload_kind="deploy",
        workload="web",
        direction="inbound",
        route="GET /api/users",
        requests=100,
        successes=98,
        failures=2,
        p99_ms=42.0,
    )
    base.update(kw)
    return GoldenSample.model_validate(base)


def finding(**kw: object) -> Finding:
    base: dict[str, object] = dict(
        id="x",
        route_key="shop/deploy/web/inbound/GET /api/users",
        namespace="shop",
        workload_kind="deploy",
        workload="web",
        direction="inbound",
        route="GET /api/users",
        kind="latency",
        status="firing",
        score=0.9999,
        observed=800.0,
        expected_low=20.0,
        expected_high=90.0,
        unit="ms",
        window_end=1_700_000_010.0,
        started_at=1_700_000_000.0,
        model="robust-baseline",
        model_version="1.0.0",
        explanation="slow",
    )
    base.update(kw)
    return Finding.model_validate(base)


def test_route_key_and_workload_key() -> None:
    s = sample()
    assert s.workload_key == "shop/deploy/web"
    assert s.route_key == "shop/deploy/web/inbound/GET /api/users"
    assert split_route_key(s.route_key).route == "GET /api/users"
    # routes with slashes survive the split
    assert split_route_key("a/deploy/b/outbound/c.ns.svc:80/x/y").route == "c.ns.svc:80/x/y"


def test_golden_batch_round_trip_has_schema_field() -> None:
    b = GoldenBatch(
        workload_key="shop/deploy/web", window_end=1.0, window_seconds=10.0, samples=(sample(),)
    )
    raw = encode(b)
    assert json.loads(raw)["schema"] == "meshwatch.golden_batch/v1"
    assert decode(GoldenBatch, raw) == b


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"requests": -1}, "requests"),
        ({"direction": "sideways"}, "direction"),
        ({"window_seconds": 0}, "window_seconds"),
        ({"p99_ms": float("nan")}, "p99_ms"),
        ({"successes": 200}, "successes + failures exceed requests"),
        ({"latency_buckets": (1, 2, 3)}, "latency_buckets has 3 counts for 26"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_samples_are_rejected_with_the_path(change: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        sample(**change)
    assert where in describe_error(info.value)


def test_wrong_schema_is_rejected() -> None:
    raw = encode(finding())
    with pytest.raises(ValidationError) as info:
        decode(GoldenBatch, raw)
    text = describe_error(info.value)
    assert "schema" in text and "workload_key" in text


def test_garbage_is_rejected() -> None:
    with pytest.raises(ValidationError):
        decode(Finding, b"\xff\xfe not json")


def test_score_must_be_a_probability() -> None:
    with pytest.raises(ValidationError, match="score"):
        finding(score=1.5)


def test_deterministic_ids() -> None:
    a = finding_id("r", "latency", 10.0, "firing")
    assert a == finding_id("r", "latency", 10.0, "firing")
    assert a != finding_id("r", "latency", 10.0, "resolved")
    assert a != finding_id("r", "latency", 20.0, "firing")
    assert fingerprint("r", "latency") != fingerprint("r", "error_rate")
    assert finding().fingerprint == fingerprint(finding().route_key, "latency")


def test_dead_letter_keeps_the_original_bytes_as_text() -> None:
    d = DeadLetter(stage="s", reason="invalid", error="e", value="\\xff", failed_at=1.0)
    assert decode(DeadLetter, encode(d)).value == "\\xff"
