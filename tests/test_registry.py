"""The model registry: versions, manifests, verification, promotion and rollback."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import sklearn
import skops.io as sio

from models.features import FEATURE_NAMES
from models.learned import LEARNED_KINDS, LearnedModel, fit
from models.registry import (
    DEFAULT_DIR,
    MANIFEST,
    MODEL_FILE,
    ArtifactError,
    Registry,
    load_dir,
    sha256,
)
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.detect.scoring import ModelScoring
from pipeline.registry.follow import ModelFollower


def _features(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURE_NAMES)))
    return x, {k: np.ones(n, dtype=np.bool_) for k in LEARNED_KINDS}


@pytest.fixture(scope="module")
def model() -> LearnedModel:
    x, judged = _features(2000, 0)
    return fit(x, judged, false_alert_budget=0.01, n_estimators=10)


def _publish(reg: Registry, model: LearnedModel, note: str = "") -> str:
    return reg.publish(
        model,
        training={"source": "test", "window_start": 0.0, "window_end": 600.0, "routes": 3},
        metrics={"candidate": {"mean_auc": 0.9}},
        false_alert_budget=0.01,
        note=note,
    )


def test_a_published_version_has_a_complete_manifest_and_scores_the_same(
    tmp_path: Path, model: LearnedModel
) -> None:
    reg = Registry.at(tmp_path)
    v = _publish(reg, model)
    assert v == "v0001" and reg.versions() == ["v0001"]
    m = reg.manifest(v)
    assert m["features"] == list(FEATURE_NAMES)
    assert m["training"]["window_end"] == 600.0 and m["training"]["routes"] == 3
    assert m["metrics"]["candidate"]["mean_auc"] == 0.9
    assert m["sklearn_version"] == sklearn.__version__ and m["meshwatch_version"]
    data = (tmp_path / "versions" / v / MODEL_FILE).read_bytes()
    assert m["files"][MODEL_FILE] == {"sha256": sha256(data), "bytes": len(data)}
    with zipfile.ZipFile(io.BytesIO(data)) as z:  # skops, not a pickle
        assert "schema.json" in z.namelist()
    loaded = reg.load(v)
    x, judged = _features(300, 1)
    a, b = model.score(x, judged), loaded.model.score(x, judged)
    for k in model.kinds:
        assert np.array_equal(a[k], b[k])


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "tampered":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    else:
        path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize(
    ("how", "message"), [("tampered", "checksum mismatch"), ("truncated", "truncated")]
)
def test_a_damaged_artifact_is_refused_and_production_stays(
    tmp_path: Path, model: LearnedModel, how: str, message: str
) -> None:
    reg = Registry.at(tmp_path)
    v1 = _publish(reg, model)
    reg.promote(v1)
    v2 = _publish(reg, model)
    _corrupt(tmp_path / "versions" / v2 / MODEL_FILE, how)
    with pytest.raises(ArtifactError, match=message):
        reg.load(v2)
    with pytest.raises(ArtifactError, match=message):
        reg.promote(v2)
    assert reg.production() == v1


def _edit_manifest(path: Path, **changes: object) -> None:
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


def test_an_incompatible_artifact_is_refused(tmp_path: Path, model: LearnedModel) -> None:
    reg = Registry.at(tmp_path)
    v = _publish(reg, model)
    manifest = tmp_path / "versions" / v / MANIFEST
    _edit_manifest(manifest, sklearn_version="0.24.2")
    with pytest.raises(ArtifactError, match=r"incompatible: built with scikit-learn 0\.24\.2"):
        reg.load(v)
    _edit_manifest(manifest, sklearn_version=sklearn.__version__, features=["a", "b"])
    with pytest.raises(ArtifactError, match="other features"):
        reg.load(v)


def test_a_file_with_types_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    """Consistent checksums do not make an arbitrary object safe to load."""
    from sklearn.linear_model import LogisticRegression

    reg = Registry.at(tmp_path)
    payload = {"estimators": {"latency": LogisticRegression()}, "reference": {}}
    data = sio.dumps(payload)
    folder = tmp_path / "versions" / "v0001"
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(data)
    manifest = json.loads(json.dumps(_manifest_like(data)))
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not allowed"):
        reg.load("v0001")


def _manifest_like(data: bytes) -> dict[str, object]:
    from models.features import FEATURES_VERSION

    return {
        "format": 1,
        "version": "v0001",
        "features": list(FEATURE_NAMES),
        "features_version": FEATURES_VERSION,
        "sklearn_version": sklearn.__version__,
        "files": {MODEL_FILE: {"sha256": sha256(data), "bytes": len(data)}},
    }


def test_promote_and_rollback_move_the_pointer(tmp_path: Path, model: LearnedModel) -> None:
    reg = Registry.at(tmp_path)
    with pytest.raises(ArtifactError, match="nothing to roll back"):
        reg.rollback()
    v1, v2, v3 = (_publish(reg, model) for _ in range(3))
    reg.promote(v1)
    reg.promote(v2)
    reg.promote(v3)
    assert reg.production() == v3
    assert reg.rollback()["version"] == v2
    assert reg.rollback()["version"] == v1
    assert reg.production() == v1
    with pytest.raises(ArtifactError, match="no such version"):
        reg.promote("v0099")


def test_rollback_refuses_a_previous_version_that_no_longer_loads(
    tmp_path: Path, model: LearnedModel
) -> None:
    reg = Registry.at(tmp_path)
    v1, v2 = _publish(reg, model), _publish(reg, model)
    reg.promote(v1)
    reg.promote(v2)
    _corrupt(tmp_path / "versions" / v1 / MODEL_FILE, "tampered")
    with pytest.raises(ArtifactError, match="checksum"):
        reg.rollback()
    assert reg.production() == v2


def test_the_shipped_default_loads_and_is_used_when_nothing_is_promoted(tmp_path: Path) -> None:
    assert (DEFAULT_DIR / MANIFEST).exists(), "build it: meshwatch train --default"
    default = load_dir(DEFAULT_DIR)
    assert default.version == "default" and default.model.kinds
    reg = Registry.at(tmp_path)
    loaded = reg.load_production()
    assert loaded is not None and loaded.version == "default"
    assert ModelScoring().version == "default"


def test_the_follower_keeps_its_model_when_production_is_damaged(
    tmp_path: Path, model: LearnedModel
) -> None:
    cfg = load_config(None, {"models": {"registry_dir": str(tmp_path)}})
    reg = Registry.at(tmp_path)
    v1, v2 = _publish(reg, model), _publish(reg, model)
    reg.promote(v1)
    scoring = ModelScoring(use_default=False)
    follower = ModelFollower(cfg, scoring)  # not started: refresh() is what an event triggers
    assert follower.refresh() == v1
    assert scoring.adopt() == v1
    reg.promote(v2)
    _corrupt(tmp_path / "versions" / v2 / MODEL_FILE, "tampered")
    assert follower.refresh() is None
    assert scoring.adopt() is None and scoring.version == v1
    assert "checksum mismatch" in follower.refused[-1]


def test_models_commands(
    tmp_path: Path, model: LearnedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = Registry.at(tmp_path)
    v1, v2 = _publish(reg, model), _publish(reg, model)
    args = ["--registry", str(tmp_path)]
    assert main(["models", "promote", v1, *args, "--no-event"]) == 0
    assert main(["models", "promote", v2, *args, "--no-event"]) == 0
    assert main(["models", "list", *args]) == 0
    out = capsys.readouterr().out
    assert v1 in out and v2 in out
    assert main(["models", "show", *args]) == 0
    out = capsys.readouterr().out
    assert '"version": "v0002"' in out and "verified" in out
    assert main(["models", "rollback", *args, "--no-event"]) == 0
    assert reg.production() == v1
    _corrupt(tmp_path / "versions" / v2 / MODEL_FILE, "truncated")
    assert main(["models", "promote", v2, *args, "--no-event"]) == 1
    assert "truncated" in capsys.readouterr().err
    assert main(["models", "show", v2, *args]) == 1
    assert reg.production() == v1
