"""Quality smoke test: simulated faults of every kind go through the real collector
and the detectors; each fault is detected on its routes, a blip is not.

The full harness (many instances, references, the real series) is
``bench/quality/run.py``; this keeps a fast guard on the same path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "quality"))

from mesh import T0, WINDOW, record

from pipeline.backtest.inputs import read_golden_jsonl
from pipeline.backtest.run import backtest
from pipeline.config import DetectorConfig
from pipeline.simulate import FaultSpec, FaultTarget, Scenario

WARMUP = 400.0  # 40 windows: the detector warms up in 30
DB = "db.data.svc.cluster.local:8080"


def _fault(
    kind: str, fid: str, duration: float = 80.0, m: float = 1.0, **target: object
) -> FaultSpec:
    return FaultSpec(
        id=fid, kind=kind, target=FaultTarget(**target), start=0, duration=duration, magnitude=m
    )  # type: ignore[arg-type]


RUN_A = [
    _fault("latency_spike", "spike", m=6.0, namespace="shop", workload="front", route="GET /"),
    _fault(
        "error_burst", "errors", m=0.3, namespace="shop", workload="api", route="POST /api/orders"
    ),
    _fault("mtls_loss", "mtls", m=0.6, namespace="shop", workload="auth"),
    _fault("tls_handshake_failure", "tls", m=0.4, namespace="data", workload="db"),
    _fault("bad_pod", "bad-pod", m=6.0, namespace="pool", workload="worker", pod=1),
]
RUN_B = [
    _fault("traffic_drop", "no-traffic", m=0.0, namespace="shop", workload="front"),
    _fault(
        "network_slow",
        "slow-path",
        m=5.0,
        namespace="shop",
        workload="api",
        route=DB,
        direction="outbound",
    ),
    _fault("error_trickle", "trickle", m=0.05, namespace="shop", workload="auth"),
    _fault("blip", "blip", duration=10.0, m=10.0, namespace="pool", workload="worker"),
]


@pytest.mark.parametrize("faults", [RUN_A, RUN_B], ids=["run-a", "run-b"])
def test_each_fault_kind_is_detected_and_a_blip_is_not(
    faults: list[FaultSpec], tmp_path: Path
) -> None:
    path = tmp_path / "golden.jsonl"
    info = record(
        Scenario(name="smoke", faults=faults),
        int(WARMUP / WINDOW) + 14,
        path,
        seed=3,
        warmup_seconds=WARMUP,
    )
    result = backtest(read_golden_jsonl(path), DetectorConfig())
    fired = [f for f in result.findings if f.status == "firing"]
    assert all(f.window_end > T0 + WARMUP for f in fired), "an alert before any fault"
    for label in info["labels"]:
        keys = set(label["route_keys"])
        hits = [
            f
            for f in fired
            if (f.route_key in keys or f.route_key.split(" ")[0] in keys)
            and label["start"] < f.window_end <= label["end"] + 3 * WINDOW
        ]
        if label["expect"] == "alert":
            assert hits, f"{label['fault_id']} ({label['kind']}) was not detected"
        else:
            assert not hits, f"{label['fault_id']} should not alert: {hits[0].explanation}"
    # nothing fires on routes no fault touched
    touched = {k for label in info["labels"] for k in label["route_keys"]}
    stray = [
        f for f in fired if f.route_key not in touched and f.route_key.split(" ")[0] not in touched
    ]
    assert not stray, [f"{f.route_key}: {f.explanation}" for f in stray]
