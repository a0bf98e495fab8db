"""The vectorised isolation-forest walk gives scikit-learn's scores bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from models.features import kind_columns
from models.learned import FlatForest, LearnedModel, ModelError
from pipeline.detect.scoring import shipped_default


def _inputs(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Rows at several scales, with missing values, infinities and float32 overflows."""
    x = rng.normal(size=(n, d)) * rng.choice([0.01, 1.0, 10.0, 1e40], size=(n, 1))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.03] = np.inf
    x[rng.random(x.shape) < 0.03] = -np.inf
    return x


@pytest.mark.parametrize("max_features", [1.0, 0.5])
@pytest.mark.parametrize("missing_in_training", [False, True])
def test_flat_forest_equals_score_samples(max_features: float, missing_in_training: bool) -> None:
    rng = np.random.default_rng(7)
    train = rng.normal(size=(500, 6))
    if missing_in_training:
        train[rng.random(train.shape) < 0.1] = np.nan
    est = IsolationForest(n_estimators=25, max_features=max_features, random_state=3)
    est.fit(train)
    flat = FlatForest(est)
    for n in (1, 2, 17, 400):
        x = _inputs(rng, n, 6)
        with np.errstate(over="ignore"):
            want = -est.score_samples(x)
        np.testing.assert_array_equal(flat.raw(x), want)


def test_flat_forest_small_samples() -> None:
    """max_samples of 1 and 2: the average path length's special cases."""
    rng = np.random.default_rng(1)
    for m in (1, 2, 3):
        est = IsolationForest(n_estimators=5, max_samples=m, random_state=0).fit(
            rng.normal(size=(50, 3))
        )
        x = rng.normal(size=(20, 3))
        np.testing.assert_array_equal(FlatForest(est).raw(x), -est.score_samples(x))


def test_flat_forest_refuses_wrong_width() -> None:
    est = IsolationForest(n_estimators=3, random_state=0).fit(np.zeros((20, 4)) + np.arange(4))
    with pytest.raises(ModelError):
        FlatForest(est).raw(np.zeros((3, 5)))


def test_shipped_model_raw_equals_score_samples() -> None:
    loaded = shipped_default()
    if loaded is None:
        pytest.skip("no shipped default model in this checkout")
    model: LearnedModel = loaded.model
    rng = np.random.default_rng(11)
    forests = [k for k, e in model.estimators.items() if isinstance(e, IsolationForest)]
    assert forests, "the shipped model is expected to hold isolation forests"
    n_features = len(model.feature_names)
    for k in forests:
        features = _inputs(rng, 300, n_features)
        est = model.estimators[k]
        with np.errstate(over="ignore"):
            want = -est.score_samples(features[:, kind_columns(k)])
        np.testing.assert_array_equal(model.raw(k, features), want)
