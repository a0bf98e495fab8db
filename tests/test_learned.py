"""The trained layer: features, per-kind models, calibration, and how it joins the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from models.detector import KINDS, DetectorParams, Observations, RouteDetector, Verdicts
from models.features import FEATURE_NAMES, kind_columns, surprise, window_features
from models.learned import LEARNED_KINDS, LearnedModel, ModelError, calibrate, fit
from models.registry import Loaded
from pipeline.detect.scoring import ModelScoring

ROUTES = 40


def window(rng: np.random.Generator, t: float, slow: np.ndarray | None = None) -> Observations:
    """One window of ROUTES routes; ``slow`` marks routes whose latency is 6x."""
    reqs = rng.poisson(200, ROUTES).astype(float)
    factor = np.where(slow, 6.0, 1.0) if slow is not None else np.ones(ROUTES)
    p50 = 20.0 * factor * np.exp(rng.normal(0, 0.05, ROUTES))
    return Observations(
        rows=np.arange(ROUTES, dtype=np.int64),
        window_end=np.full(ROUTES, t),
        requests=reqs,
        failures=rng.binomial(reqs.astype(int), 0.005).astype(float),
        p50_ms=p50,
        p95_ms=2 * p50,
        p99_ms=3 * p50,
        tls_failures=np.zeros(ROUTES),
        plaintext=np.zeros(ROUTES),
        mtls=reqs,
        cert_ttl=np.full(ROUTES, np.nan),
    )


def stream(windows: int, spike: tuple[int, int] | None = None, seed: int = 0):
    """Yield (det, obs, verdicts, labels) per window; routes 0-4 slow inside ``spike``."""
    rng = np.random.default_rng(seed)
    det = RouteDetector(DetectorParams(warmup_windows=10))
    for w in range(windows):
        slow = np.zeros(ROUTES, dtype=np.bool_)
        if spike and spike[0] <= w < spike[1]:
            slow[:5] = True
        o = window(rng, 10.0 * (w + 1), slow)
        v = det.process(o)
        yield det, o, v, slow[v.index]


def dataset(windows: int, spike: tuple[int, int] | None = None, seed: int = 0):
    feats, judged, labels = [], {k: [] for k in LEARNED_KINDS}, []
    for det, o, v, lab in stream(windows, spike, seed):
        feats.append(window_features(det, o, v))
        for k in LEARNED_KINDS:
            judged[k].append(v.kinds[k].judged)
        labels.append(lab)
    return (
        np.concatenate(feats),
        {k: np.concatenate(x) for k, x in judged.items()},
        np.concatenate(labels),
    )


@pytest.fixture(scope="module")
def normal() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    return dataset(200, seed=1)


@pytest.fixture(scope="module")
def model(normal: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]) -> LearnedModel:
    x, judged, _ = normal
    return fit(x, judged, false_alert_budget=0.01, seed=0)


def test_features_are_one_finite_row_per_judged_entry() -> None:
    for det, o, v, _ in stream(15):
        f = window_features(det, o, v)
    assert f.shape == (ROUTES, len(FEATURE_NAMES))
    assert np.isfinite(f).all()
    # a subset gives the same rows as the full matrix
    pos = np.array([3, 7, 11])
    assert np.array_equal(window_features(det, o, v, pos), f[pos])
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    for k in LEARNED_KINDS:
        names = [FEATURE_NAMES[i] for i in kind_columns(k)]
        assert f"{k}.surprise" in names and "traffic.log_requests" in names


def test_surprise_counts_the_nines() -> None:
    s = surprise(np.array([0.0, 0.9, 0.999, 1.0]))
    assert s[0] == 0.0
    assert s[1] == pytest.approx(1.0)
    assert s[2] == pytest.approx(3.0)
    assert s[3] == 12.0  # clipped, finite


def test_calibrated_scores_flag_about_the_budget_on_normal_windows(model: LearnedModel) -> None:
    assert set(model.kinds) >= {"latency", "error_rate", "traffic_drop"}
    fresh, fj, _ = dataset(100, seed=2)
    scores = model.score(fresh, fj)
    for k in model.kinds:
        rate = float((scores[k][fj[k]] >= model.thresholds[k]).mean())
        assert rate <= 0.05, (k, rate)  # budget 1 %, sampling noise allowed
        assert ((scores[k] >= 0) & (scores[k] <= 1)).all()
        assert (scores[k][~fj[k]] == 0).all()


def test_an_unsupervised_model_ranks_a_latency_spike_above_normal(model: LearnedModel) -> None:
    xs, js, lab = dataset(60, spike=(40, 50), seed=4)
    s = model.score(xs, js)["latency"]
    assert s[lab & js["latency"]].mean() > 0.99
    assert s[~lab & js["latency"]].mean() < 0.8


def test_labelled_windows_train_a_classifier() -> None:
    x, judged, lab = dataset(160, spike=(100, 115), seed=5)
    labels = {k: (lab if k == "latency" else np.zeros_like(lab)) for k in LEARNED_KINDS}
    model = fit(x, judged, labels, false_alert_budget=0.01)
    assert type(model.estimators["latency"]).__name__ == "HistGradientBoostingClassifier"
    assert type(model.estimators["error_rate"]).__name__ == "IsolationForest"
    xs, js, lab2 = dataset(60, spike=(40, 50), seed=6)
    s = model.score(xs, js)["latency"]
    assert s[lab2 & js["latency"]].min() > s[~lab2 & js["latency"]].mean()


def test_calibrate_is_the_share_of_normal_scores_below_with_an_exponential_tail() -> None:
    ref = np.sort(np.random.default_rng(0).exponential(1.0, 2000))
    s = calibrate(ref, np.array([-1.0, float(np.median(ref)), 9.0, 12.0, 1e9]))
    assert s[0] == 0.0
    assert s[1] == pytest.approx(0.5, abs=0.01)
    # beyond the reference: the exponential tail, not the 1 - 1/2001 ceiling
    assert s[2] == pytest.approx(1 - np.exp(-9.0), rel=0, abs=5e-4)
    assert s[2] < s[3] < s[4] == 1.0
    assert 1 - s[3] < 1e-4 < 1 - s[2]


def test_a_model_for_other_features_is_refused(
    model: LearnedModel, normal: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]
) -> None:
    x, judged, _ = normal
    bad = LearnedModel(("a", "b"), model.estimators, model.reference, model.thresholds)
    with pytest.raises(ModelError, match="features"):
        bad.check()
    with pytest.raises(ModelError, match="expected"):
        model.score(x[:, :5], judged)


def _run(scoring: ModelScoring | None, windows: int = 70) -> list[Verdicts]:
    out = []
    for det, o, v, _ in stream(windows, spike=(40, 52), seed=8):
        out.append(scoring.apply(det, o, v) if scoring else v)
    return out


def test_combining_with_max_never_changes_what_fires(model: LearnedModel) -> None:
    loaded = Loaded("vtest", model, {})
    plain = _run(None)
    joined = _run(ModelScoring(loaded, combine="max", prefilter_score=0.0))
    raised = 0
    for a, b in zip(plain, joined, strict=True):
        for k in KINDS:
            va, vb = a.kinds[k], b.kinds[k]
            for f in ("judged", "anomalous", "fired", "resolved"):
                assert np.array_equal(getattr(va, f), getattr(vb, f)), (k, f)
            assert (vb.score >= va.score).all()
            raised += int((vb.score > va.score).sum())
    assert raised > 0  # the model did change reported scores
    assert any(v.kinds["latency"].fired.any() for v in joined)


def test_combine_off_and_no_model_leave_scores_alone(model: LearnedModel) -> None:
    loaded = Loaded("vtest", model, {})
    plain = _run(None, 50)
    for scoring in (ModelScoring(loaded, combine="off"), ModelScoring(use_default=False)):
        got = _run(scoring, 50)
        for a, b in zip(plain, got, strict=True):
            for k in KINDS:
                assert np.array_equal(a.kinds[k].score, b.kinds[k].score)


def test_an_offered_model_takes_over_only_when_adopted(model: LearnedModel) -> None:
    a = Loaded("v0001", model, {})
    b = Loaded("v0002", model, {})
    scoring = ModelScoring(a)
    scoring.offer(b)
    assert scoring.version == "v0001"
    assert scoring.adopt() == "v0002"
    assert scoring.version == "v0002"
    assert scoring.adopt() is None
    scoring.offer(a)
    scoring.cancel()
    assert scoring.adopt() is None and scoring.version == "v0002"
