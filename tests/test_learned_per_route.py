"""Per-route parameters of the trained layer: route offsets, class fallback, storage, hot path."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio

from models.detector import DetectorParams, RouteDetector
from models.features import FEATURE_NAMES, kind_columns
from models.learned import LEARNED_KINDS, ROUTE_CLASSES, LearnedModel, ModelError, fit, route_class
from models.registry import (
    DEFAULT_DIR,
    MANIFEST,
    MODEL_FILE,
    Loaded,
    allowed,
    build_manifest,
    load_dir,
    types_in,
    write_dir,
)
from pipeline.detect.scoring import ModelScoring
from pipeline.train.dataset import Dataset
from pipeline.train.evaluate import evaluate
from tests.test_learned import ROUTES, window

STEADY = [f"shop/deploy/w{i}/inbound/GET /r{i}" for i in range(24)]
NOISY = "shop/deploy/jumpy/inbound/GET /slow"
SHORT = "shop/deploy/new/outbound/pay.payments.svc:8080"
BUDGET = 0.01
LAT = kind_columns("latency")


def history(
    windows: int, seed: int, *, noisy_scale: float = 2.5, short_windows: int = 40
) -> tuple[np.ndarray, dict[str, np.ndarray], list[str], np.ndarray]:
    """Latency-kind feature rows: 24 steady routes, one whose normal is noisier,
    one with little history. Rows are in time order (window by window)."""
    rng = np.random.default_rng(seed)
    keys = [*STEADY, NOISY]
    rows, routes, t = [], [], []
    for w in range(windows):
        n = len(keys) + (1 if w < short_windows else 0)
        x = np.zeros((n, len(FEATURE_NAMES)))
        x[:, LAT] = rng.normal(0.0, 1.0, (n, len(LAT)))
        x[len(STEADY), LAT] *= noisy_scale
        rows.append(x)
        routes += keys + ([SHORT] if w < short_windows else [])
        t += [float(w)] * n
    feats = np.concatenate(rows)
    judged = {k: np.zeros(feats.shape[0], dtype=np.bool_) for k in LEARNED_KINDS}
    judged["latency"][:] = True
    return feats, judged, routes, np.asarray(t)


@pytest.fixture(scope="module")
def trained() -> LearnedModel:
    x, judged, routes, t = history(600, seed=1)
    holdout = t >= np.quantile(t, 0.8)
    return fit(x, judged, holdout=holdout, false_alert_budget=BUDGET, seed=0, routes=routes,
               route_min_windows=100)  # fmt: skip


def _flagged(model: LearnedModel, x: np.ndarray, judged: dict[str, np.ndarray],
             routes: list[str], own: bool) -> np.ndarray:  # fmt: skip
    s = model.score(x, judged, model.param_index(routes, own=own))["latency"]
    return np.asarray(s >= 1.0 - BUDGET)


def test_a_noisier_route_gets_a_higher_threshold_and_fewer_false_alerts(
    trained: LearnedModel,
) -> None:
    m = trained
    assert m.kinds == ("latency",)
    assert set(m.route_keys) == {*STEADY, NOISY}  # SHORT: too little history
    assert m.route_stats["routes_with_own_parameters"] == len(STEADY) + 1
    li = LEARNED_KINDS.index("latency")
    assert m.offsets is not None
    own = dict(zip(m.route_keys, m.offsets[: len(m.route_keys), li], strict=True))
    steady = np.array([own[k] for k in STEADY])
    # a higher threshold: its raw-score offset is above every steady route's
    assert own[NOISY] > steady.max() + 0.02
    assert np.abs(steady).max() < own[NOISY] / 3

    # fresh normal history: with class parameters the noisy route takes most of the
    # false alerts; with its own it flags about the budget, and nobody flags more
    x, judged, routes, _ = history(400, seed=2, short_windows=0)
    key = np.asarray(routes)
    with_own = _flagged(m, x, judged, routes, own=True)
    class_only = _flagged(m, x, judged, routes, own=False)
    noisy = key == NOISY
    assert class_only[noisy].mean() > 0.05
    assert with_own[noisy].mean() < class_only[noisy].mean() / 3
    assert with_own[noisy].mean() < 4 * BUDGET
    assert with_own.mean() < class_only.mean()
    assert with_own[~noisy].mean() < 3 * BUDGET


def test_routes_without_enough_history_and_unknown_routes_use_their_class(
    trained: LearnedModel,
) -> None:
    m = trained
    n = len(m.route_keys)
    unknown = "other-ns/deploy/fresh/outbound/api.other-ns.svc:80"
    idx = m.param_index([NOISY, SHORT, unknown, "web/deploy/x/inbound/*", "bad key"])
    assert idx[0] == m.route_keys.index(NOISY)
    assert list(idx[1:]) == [n + ROUTE_CLASSES.index(c)
                             for c in ("outbound", "outbound", "inbound-all", "other")]  # fmt: skip
    assert route_class("a/deploy/b/inbound/GET /x") == ROUTE_CLASSES.index("inbound")
    # an unknown route scores exactly as a route on its class's parameters
    x, judged, _, _ = history(3, seed=5, short_windows=0)
    as_unknown = m.score(x, judged, m.param_index([unknown] * len(x)))["latency"]
    as_class = m.score(x, judged, m.param_index([NOISY] * len(x), own=False))
    assert np.allclose(as_unknown, m.score(x, judged, m.param_index([SHORT] * len(x)))["latency"])
    assert not np.allclose(as_unknown, as_class["latency"])  # inbound vs outbound class


def test_offsets_of_the_wrong_shape_are_refused(trained: LearnedModel) -> None:
    bad = LearnedModel(FEATURE_NAMES, trained.estimators, trained.reference, trained.thresholds,
                       route_keys=trained.route_keys[:-1], offsets=trained.offsets)  # fmt: skip
    with pytest.raises(ModelError, match="offsets"):
        bad.check()


def test_per_route_parameters_survive_the_registry(trained: LearnedModel, tmp_path: Path) -> None:
    manifest = write_dir(tmp_path, trained, training={}, metrics={}, false_alert_budget=BUDGET)
    assert manifest["per_route"]["routes_with_own_parameters"] == len(STEADY) + 1
    # nothing beyond the allow-list: a str and a float array
    assert all(allowed(t) for t in types_in((tmp_path / "model.skops").read_bytes()))
    loaded = load_dir(tmp_path).model
    assert loaded.route_keys == trained.route_keys
    assert loaded.offsets is not None and trained.offsets is not None
    assert np.array_equal(loaded.offsets, trained.offsets)
    x, judged, routes, _ = history(5, seed=7)
    a = trained.score(x, judged, trained.param_index(routes))["latency"]
    b = loaded.score(x, judged, loaded.param_index(routes))["latency"]
    assert np.array_equal(a, b)


def _old_format(model: LearnedModel, where: Path) -> None:
    """An artifact as written before per-route parameters (no keys, no offsets)."""
    payload = {"estimators": dict(model.estimators), "reference": dict(model.reference)}
    data = bytes(sio.dumps(payload, compression=zipfile.ZIP_DEFLATED))
    manifest = build_manifest("default", model, {MODEL_FILE: data}, training={}, metrics={},
                              false_alert_budget=BUDGET)  # fmt: skip
    manifest.pop("per_route")
    where.mkdir(parents=True, exist_ok=True)
    (where / MODEL_FILE).write_bytes(data)
    (where / MANIFEST).write_text(json.dumps(manifest))


def test_an_artifact_without_per_route_parameters_still_loads_and_scores(
    trained: LearnedModel, tmp_path: Path
) -> None:
    _old_format(trained, tmp_path / "old")
    m = load_dir(tmp_path / "old").model
    assert m.offsets is None and m.route_keys == ()
    x, judged, routes, _ = history(5, seed=11)
    plain = m.score(x, judged)["latency"]
    assert np.array_equal(plain, m.score(x, judged, m.param_index(routes))["latency"])
    assert ((plain >= 0) & (plain <= 1)).all() and plain.max() > 0
    # through the detector's scoring too (no parameter lookup for such a model)
    scoring = ModelScoring(Loaded("old", m, {}), prefilter_score=0.0)
    det = RouteDetector(DetectorParams(warmup_windows=3))
    rng = np.random.default_rng(1)
    raised = 0
    for w in range(8):
        obs = window(rng, 10.0 * (w + 1))
        v = det.process(obs)
        base = v.kinds["latency"].score.copy()
        raised += int((scoring.apply(det, obs, v).kinds["latency"].score > base).sum())
    assert raised > 0
    # and the shipped default, whichever format it is in
    if (DEFAULT_DIR / MANIFEST).exists():
        assert load_dir(DEFAULT_DIR).model.kinds


def test_the_detector_looks_up_each_route_once_and_scores_with_its_parameters(
    trained: LearnedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counted(model: LearnedModel) -> LearnedModel:
        original = model.param_index

        def counting(keys: list[str], *, own: bool = True) -> np.ndarray:
            calls.append(len(keys))
            return original(keys, own=own)

        monkeypatch.setattr(model, "param_index", counting)
        return model

    scoring = ModelScoring(Loaded("vroute", counted(trained), {}), prefilter_score=0.0)
    det = RouteDetector(DetectorParams(warmup_windows=3))
    more = [f"shop/deploy/more/inbound/GET /m{i}" for i in range(ROUTES)]
    keys = [*STEADY, NOISY, *more][:ROUTES]
    rng = np.random.default_rng(3)

    def batch(t: float) -> int:
        obs = window(rng, t)
        obs.rows[:] = det.rows_for(keys)
        v = det.process(obs)
        base = v.kinds["latency"].score.copy()
        scoring.apply(det, obs, v)
        return int((v.kinds["latency"].score > base).sum())

    scored = sum(batch(10.0 * (w + 1)) for w in range(12))
    assert calls == [ROUTES]  # every route looked up once, in the first scored batch
    assert scored > 0
    # another model takes over: its parameter rows are looked up again, once
    scoring.offer(Loaded("vother", counted(dataclasses.replace(trained)), {}))
    scoring.adopt()
    batch(130.0)
    batch(140.0)
    assert calls == [ROUTES, ROUTES]


def test_evaluation_reports_flags_with_and_without_per_route_parameters(
    trained: LearnedModel,
) -> None:
    x, judged, routes, t = history(200, seed=9, short_windows=0)
    n = len(t)
    zeros = {k: np.zeros(n) for k in LEARNED_KINDS}
    ds = Dataset(x, judged, zeros, {k: np.zeros(n, dtype=np.bool_) for k in LEARNED_KINDS}, t,
                 routes)  # fmt: skip
    ev = evaluate("candidate", trained, ds, np.arange(n), None, BUDGET)
    assert ev.routes_with_own_parameters == len(STEADY) + 1
    assert ev.flag_rate["latency"] < ev.flag_rate_class_only["latency"]
    assert ev.as_dict()["flag_rate_class_only"] == ev.flag_rate_class_only
