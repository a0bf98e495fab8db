"""`meshwatch demo --duration` as a user runs it: a subprocess, start to finish."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_alerts_the_injected_fault_and_resolves_it(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "demo",
            "--duration",
            "90",
            "--no-live",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "meshwatch demo summary" in proc.stdout
    assert "fault start" in proc.stdout
    report = json.loads((out / "summary.json").read_text())
    (fault,) = report["faults"]
    # alerted within 60 s of the fault's start, and resolved after it ended
    assert fault["seconds_to_alert"] is not None and fault["seconds_to_alert"] < 60
    assert fault["seconds_to_resolve_after_end"] is not None
    assert fault["alerted_route"] in fault["route_keys"]
    assert report["webhook_rejected"] == 0
    assert report["webhook_firing"] >= 1 and report["webhook_resolved"] >= 1
    # every alert that reached the webhook is about the injected fault
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    routes = {a["alerts"][0]["labels"]["route_key"] for a in alerts}
    # (the faulted catalog route, its workload aggregate, or its callers' edges to it)
    assert all("catalog" in r for r in routes), routes
    truth = [json.loads(line) for line in (out / "ground-truth.jsonl").read_text().splitlines()]
    assert [t["event"] for t in truth] == ["start", "end"]
