"""Findings built on the hot path still satisfy their contract: they
validate, round-trip through JSON, and name a suspect pod as before."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from pipeline.config import load_config
from pipeline.detect import columnar
from pipeline.detect.engine import DetectionEngine, suspect_pod
from pipeline.schema import EvidencePoint, Finding, decode, encode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import MeshShape, generate_records


def test_findings_validate_and_round_trip() -> None:
    cfg = load_config(None)
    cfg.detector.warmup_windows = 5
    shape = MeshShape(routes=300, windows=24, fault_share=0.05, fault_from=12)
    raws = [v for _, v in generate_records(shape)]
    engine = DetectionEngine(cfg.detector)
    findings: list[Finding] = []
    for i in range(0, len(raws), 120):
        cols, rejected = columnar.columns([columnar.decode_golden(r) for r in raws[i : i + 120]])
        assert not rejected
        findings += engine.process_columns(cols)
    assert findings, "the faulty routes must raise findings"
    assert any(f.evidence for f in findings)
    for f in findings:
        assert isinstance(f.evidence, tuple)
        assert all(isinstance(p, EvidencePoint) for p in f.evidence)
        assert Finding.model_validate(f.model_dump(by_alias=True)) == f
        assert decode(Finding, encode(f)) == f


def _numpy_suspect(pods: list[Any], kind: str) -> str | None:
    """The numpy form suspect_pod had before (argmax, delete, median)."""
    pods = [p for p in pods if p.requests > 0]
    if len(pods) < 3 or kind not in ("latency", "error_rate"):
        return None
    if kind == "latency":
        vals = np.array([p.latency_sum_ms / p.requests for p in pods])
    else:
        vals = np.array([p.failures / p.requests for p in pods])
    worst = int(np.argmax(vals))
    others = np.delete(vals, worst)
    typical = float(np.median(others))
    if vals[worst] > 2 * typical and vals[worst] > 0 and float(others.max()) < vals[worst] / 1.5:
        return str(pods[worst].pod)
    return None


def test_suspect_pod_matches_the_numpy_form() -> None:
    rng = np.random.default_rng(3)
    named = 0
    for _ in range(3000):
        pods = []
        for i in range(int(rng.integers(0, 7))):
            req = int(rng.choice([0, 1, 3, 10, 100]))
            pods.append(
                SimpleNamespace(
                    pod=f"p{i}",
                    requests=req,
                    failures=min(req, int(rng.choice([0, 0, 1, 2, 5]))),
                    latency_sum_ms=float(rng.choice([0.0, 1.0, 5.0, 30.0, rng.random() * 100])),
                )
            )
        sample = SimpleNamespace(pods=pods)
        for kind in ("latency", "error_rate", "tls_failure"):
            got = suspect_pod(sample, kind)  # type: ignore[arg-type]
            assert got == _numpy_suspect(pods, kind)
            named += got is not None
    assert named > 100  # the comparison covers the pods that stand out
    assert statistics.median([1.0, 3.0]) == float(np.median([1.0, 3.0]))
