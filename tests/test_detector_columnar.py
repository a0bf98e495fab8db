"""The detector's fast decode (msgspec → columns) against the pydantic contract.

The fast path must accept only what pydantic accepts, with the same values,
and judge exactly as the GoldenSample path does; everything else must end
with pydantic's precise error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from pipeline.config import load_config
from pipeline.detect import columnar
from pipeline.detect.columnar import FastGolden, decode_golden
from pipeline.detect.engine import DetectionEngine
from pipeline.schema import GoldenBatch, decode, describe_error, encode
from pipeline.stage.loop import Inbound

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import MeshShape, generate_records


def _records(routes: int = 200, windows: int = 14) -> list[bytes]:
    shape = MeshShape(
        routes=routes, windows=windows, routes_per_batch=20, fault_share=0.05, fault_from=8
    )
    return [v for _, v in generate_records(shape)]


def _message(**sample_kw: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "window_end": 1_700_000_010.0,
        "window_seconds": 10.0,
        "namespace": "shop",
        "workload_kind": "deploy",
        "workload": "web",
        "direction": "inbound",
        "route": "GET /x",
        "requests": 100,
        "successes": 98,
        "failures": 2,
        "latency_buckets": [0] * 5 + [100] + [0] * 20,
        "p99_ms": 9.9,
    }
    s.update(sample_kw)
    return {
        "schema": "meshwatch.golden_batch/v1",
        "workload_key": "shop/deploy/web",
        "window_end": 1_700_000_010.0,
        "window_seconds": 10.0,
        "samples": [s],
    }


def _raw(msg: dict[str, Any]) -> bytes:
    return orjson.dumps(msg)


def test_fast_columns_equal_the_pydantic_columns() -> None:
    raws = _records(windows=2)
    fast = [decode_golden(r) for r in raws]
    assert all(isinstance(d, FastGolden) for d in fast)
    slow = [decode(GoldenBatch, r) for r in raws]
    cols, rejected = columnar.columns(fast)
    ref, _ = columnar.columns(slow)
    assert rejected == []
    assert len(cols) == len(ref) == 400
    np.testing.assert_array_equal(cols.values, ref.values)
    np.testing.assert_array_equal(cols.buckets, ref.buckets)
    assert cols.keys == ref.keys
    assert cols.bounds is None
    # missing quantiles and TTLs are NaN, present ones are the sample's values
    ttl = cols.col("cert_ttl_seconds")
    assert np.isnan(ttl).any() and np.isfinite(ttl).any()
    assert cols.model(0) == slow[0].samples[0]


def test_engine_judges_fast_and_pydantic_batches_alike() -> None:
    cfg = load_config(None, {"detector": {"warmup_windows": 5}})
    raws = _records()
    fast_engine, slow_engine = DetectionEngine(cfg.detector), DetectionEngine(cfg.detector)
    fast_findings, slow_findings = [], []
    for i in range(0, len(raws), 30):  # poll-sized chunks, windows straddle them
        chunk = raws[i : i + 30]
        found, rejected = fast_engine.process_decoded([decode_golden(r) for r in chunk])
        assert rejected == []
        fast_findings += found
        slow_findings += slow_engine.process([decode(GoldenBatch, r) for r in chunk])
    assert fast_findings, "the faulty routes should have fired"
    assert [encode(f) for f in fast_findings] == [encode(f) for f in slow_findings]
    for name, arr in fast_engine.detector.state_arrays().items():
        np.testing.assert_array_equal(arr, slow_engine.detector.state_arrays()[name], err_msg=name)


@pytest.mark.parametrize(
    "bad",
    [
        {"requests": -1},
        {"p99_ms": -3.0},
        {"namespace": ""},
        {"direction": "sideways"},
        {"surprise": 1},
        {"window_seconds": 0},
        {"requests": "many"},
        {"pods": [{"pod": "a", "requests": -2}]},
        {"status_classes": {"5xx": -1}},
        {"requests": True},
    ],
)
def test_what_the_fast_decoder_refuses_gets_the_pydantic_error(bad: dict[str, Any]) -> None:
    raw = _raw(_message(**bad))
    with pytest.raises(ValidationError) as fast_err:
        decode_golden(raw)
    with pytest.raises(ValidationError) as ref_err:
        decode(GoldenBatch, raw)
    assert describe_error(fast_err.value) == describe_error(ref_err.value)


def test_nan_and_infinity_never_reach_the_columns() -> None:
    raw = _raw(_message()).replace(b'"p99_ms":9.9', b'"p99_ms":1e999')
    with pytest.raises(ValidationError):
        decode_golden(raw)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"successes": 99, "failures": 2}, "successes + failures exceed requests"),
        ({"latency_buckets": [1, 2, 3]}, "latency_buckets has 3 counts for 26 bucket bounds"),
    ],
)
def test_cross_field_rules_are_checked_per_batch_and_dead_lettered(
    bad: dict[str, Any], message: str
) -> None:
    good, broken = _raw(_message()), _raw(_message(**bad))
    decoded = [decode_golden(good), decode_golden(broken)]
    assert all(isinstance(d, FastGolden) for d in decoded)  # field by field, both look fine
    cols, rejected = columnar.columns(decoded)
    assert len(cols) == 1
    assert [r.position for r in rejected] == [1]
    assert message in str(rejected[0].error)
    batch = [Inbound("golden", 0, off, b"shop/deploy/web", d, 0) for off, d in enumerate(decoded)]
    (letter,) = columnar.dead_letters("detector", "dlq", batch, rejected)
    body = orjson.loads(letter.value)
    assert body["reason"] == "invalid message" and message in body["error"]
    assert body["value"] == broken.decode() and body["source_offset"] == 1


def test_what_only_pydantic_accepts_still_joins_the_batch() -> None:
    lax = _raw(_message(requests=100.0))  # pydantic takes an integral float as an int
    custom = _message(latency_bounds_ms=[10, 100, "+Inf"], latency_buckets=[50, 40, 10])
    decoded = [decode_golden(lax), decode_golden(_raw(custom))]
    assert isinstance(decoded[0], GoldenBatch)  # msgspec refused it, pydantic did not
    assert isinstance(decoded[1], FastGolden)  # custom bounds are left to pydantic ...
    cols, rejected = columnar.columns(decoded)
    assert rejected == []  # ... which accepts them
    assert len(cols) == 2
    assert cols.bounds is not None
    assert cols.bounds[1, :3].tolist() == [10.0, 100.0, np.inf]
    assert cols.buckets[1, :3].tolist() == [50.0, 40.0, 10.0]
    assert cols.col("requests").tolist() == [100.0, 100.0]
