"""``meshwatch train`` publishes only a candidate no worse than production, unless forced.

The comparison itself is tested in ``tests/test_train.py``; here it is made
to say "worse" so the job's gate, exit code and ``--force`` are exercised
end to end on the real broker and registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.registry import DEFAULT_DIR, Registry, load_dir
from pipeline.cli import main
from pipeline.config import MeshwatchConfig
from pipeline.schema import encode
from pipeline.train import job, simulated
from pipeline.train.evaluate import Evaluation
from tests.kafka_helpers import produce
from tests.test_train import _config

WINDOWS = 80


@pytest.mark.integration
def test_a_worse_candidate_is_not_published_and_force_publishes_it(
    kafka_cfg: MeshwatchConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [
        (b.workload_key.encode(), encode(b))
        for _, batches, _sim in simulated.batches(WINDOWS, seed=5)
        for b in batches
    ]
    produce(kafka_cfg, kafka_cfg.topics.golden, records)
    config = _config(kafka_cfg, tmp_path)
    reg = Registry.at(tmp_path / "registry")
    current = reg.publish(
        load_dir(DEFAULT_DIR).model, training={}, metrics={}, false_alert_budget=1e-4
    )
    reg.promote(current)
    seen: list[tuple[str, str | None]] = []

    def worse(cand: Evaluation, prod: Evaluation | None, budget: float) -> tuple[bool, list[str]]:
        seen.append((cand.name, prod.name if prod else None))
        return False, ["ranks labelled faults worse: AUC 0.5000 vs production 0.9000"]

    monkeypatch.setattr(job, "compare", worse)
    args = ["train", "-c", str(config), "--since", "0", "--scenario-windows", "0"]

    assert main([*args, "--report", str(tmp_path / "r1")]) == job.EXIT_NOT_BETTER
    out = capsys.readouterr().out
    assert "ranks labelled faults worse" in out and "not published" in out
    assert seen == [("candidate", f"production {current}")]  # compared with production
    assert reg.versions() == [current] and reg.production() == current
    summary = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert summary["reasons"] == ["ranks labelled faults worse: AUC 0.5000 vs production 0.9000"]

    assert main([*args, "--force", "--report", str(tmp_path / "r2")]) == job.EXIT_PUBLISHED
    assert "published anyway (--force)" in capsys.readouterr().out
    assert reg.production() == "v0002" and reg.pointer()["history"] == [current]
    assert "published anyway (--force)" in reg.manifest("v0002")["metrics"]["reasons"]
