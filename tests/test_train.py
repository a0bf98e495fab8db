"""``meshwatch train`` on simulated history replayed from the real broker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from models.registry import Registry
from pipeline.cli import main
from pipeline.config import MeshwatchConfig
from pipeline.registry.events import ModelEvent
from pipeline.schema import decode, encode
from pipeline.train import simulated
from pipeline.train.dataset import DatasetBuilder
from pipeline.train.evaluate import Evaluation, compare
from pipeline.train.job import EXIT_NO_DATA, EXIT_PUBLISHED
from tests.kafka_helpers import produce, read_records

WINDOWS = 80


def _config(cfg: MeshwatchConfig, tmp: Path) -> Path:
    path = tmp / "meshwatch.yaml"
    data = {
        "kafka": {
            "bootstrap_servers": cfg.kafka.bootstrap_servers,
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 500,
        },
        "topics": {"prefix": cfg.topics.prefix},
        "models": {
            "registry_dir": str(tmp / "registry"),
            "reports_dir": str(tmp / "reports"),
            "min_training_windows": 300,
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _replayable_history(cfg: MeshwatchConfig) -> int:
    """Simulated golden history onto the golden topic, as the collector sends it."""
    records = []
    samples = 0
    for _, batches, _sim in simulated.batches(WINDOWS, seed=5):
        for b in batches:
            records.append((b.workload_key.encode(), encode(b)))
            samples += len(b.samples)
    produce(cfg, cfg.topics.golden, records)
    return samples


@pytest.mark.integration
def test_train_replays_the_golden_topic_publishes_and_announces(
    kafka_cfg: MeshwatchConfig, tmp_path: Path
) -> None:
    produced = _replayable_history(kafka_cfg)
    config = _config(kafka_cfg, tmp_path)
    report = tmp_path / "report"
    code = main(
        ["train", "-c", str(config), "--since", "0", "--report", str(report),
         "--scenario-windows", "80"]
    )  # fmt: skip
    assert code == EXIT_PUBLISHED
    reg = Registry.at(tmp_path / "registry")
    assert reg.versions() == ["v0001"] and reg.production() == "v0001"
    manifest = reg.manifest("v0001")
    assert manifest["training"]["samples"] == produced  # every replayed sample was read
    assert manifest["training"]["routes"] > 10
    assert manifest["metrics"]["candidate"]["flag_rate"]
    # evaluated on the labelled scenario (its first fault: a latency spike)
    assert "latency" in manifest["metrics"]["candidate"]["auc"]
    for name in ("index.html", "scores.png", "flagged.png", "summary.json"):
        assert (report / name).stat().st_size > 0
    assert "Candidate against production" in (report / "index.html").read_text()
    # the produced model loads and scores features built by the detector's code
    loaded = reg.load("v0001")
    hist = simulated.history(35, seed=9)
    builder = DatasetBuilder(kafka_cfg.detector)
    builder.add(hist.samples)
    ds = builder.finish()
    scores = loaded.model.score(ds.features, ds.judged)
    assert scores and all(((s >= 0) & (s <= 1)).all() for s in scores.values())
    assert any(np.any(s > 0) for s in scores.values())
    # and every running detector was told
    events = read_records(kafka_cfg, kafka_cfg.topics.models, lambda r: len(r) >= 1)
    event = decode(ModelEvent, events[-1].value)
    assert (event.action, event.version) == ("publish", "v0001")


@pytest.mark.integration
def test_train_without_history_in_the_range_exits_no_data(
    kafka_cfg: MeshwatchConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(kafka_cfg, tmp_path)
    code = main(["train", "-c", str(config), "--since", "0", "--scenario-windows", "0"])
    assert code == EXIT_NO_DATA
    assert "not enough history" in capsys.readouterr().out
    assert Registry.at(tmp_path / "registry").versions() == []


def test_a_candidate_is_published_only_if_no_worse() -> None:
    prod = Evaluation("production", flag_rate={"latency": 1e-4}, auc={"latency": 0.95})
    same = Evaluation("candidate", flag_rate={"latency": 1e-4}, auc={"latency": 0.951})
    ok, reasons = compare(same, prod, 1e-4)
    assert ok and any("+0.0010" in r for r in reasons)
    worse_rank = Evaluation("candidate", flag_rate={"latency": 1e-4}, auc={"latency": 0.9})
    ok, reasons = compare(worse_rank, prod, 1e-4)
    assert not ok and any("ranks labelled faults worse" in r for r in reasons)
    noisy = Evaluation("candidate", flag_rate={"latency": 5e-3}, auc={"latency": 0.99})
    ok, reasons = compare(noisy, prod, 1e-4)
    assert not ok and any("more than the allowed" in r for r in reasons)
    ok, reasons = compare(same, None, 1e-4)
    assert ok and any("no model in production" in r for r in reasons)


@pytest.mark.integration
def test_a_workload_share_keeps_whole_workloads_and_skips_the_rest(
    kafka_cfg: MeshwatchConfig,
) -> None:
    from pipeline.train.history import topic_chunks
    from tests.test_registry_follow import window

    records = []
    for w in range(12):
        for i in range(5):
            b = window(i, 1_700_000_000.0)
            wk = f"ns{w}/deploy/api"
            b = b.model_copy(
                update={
                    "workload_key": wk,
                    "samples": tuple(
                        s.model_copy(update={"namespace": f"ns{w}"}) for s in b.samples
                    ),
                }
            )
            records.append((wk.encode(), encode(b)))
    produce(kafka_cfg, kafka_cfg.topics.golden, records)
    stats: dict[str, int] = {}
    read = [d for chunk in topic_chunks(kafka_cfg, 0, 4e9, stats=stats, workload_share=0.5)
            for d in chunk]  # fmt: skip
    kept: dict[str, int] = {}
    for d in read:
        kept[d.workload_key] = kept.get(d.workload_key, 0) + 1
    assert 0 < len(kept) < 12  # some workloads in, some out
    assert set(kept.values()) == {5}  # a kept workload has all its windows
    assert stats["records"] == 60 and stats["sampled_out"] == 60 - len(read)
    everything = [d for chunk in topic_chunks(kafka_cfg, 0, 4e9) for d in chunk]
    assert len(everything) == 60
