"""The per-route detector maths on synthetic series with known answers."""

from __future__ import annotations

import numpy as np

from models.detector import DEFAULT_BOUNDS_MS, DetectorParams, Observations, RouteDetector
from models.histogram import quantiles
from models.persistence import Persistence

NAN = float("nan")


def obs(rows: list[int], t: list[float], **cols: list[float]) -> Observations:
    n = len(rows)
    full = {
        "requests": [200.0] * n,
        "failures": [1.0] * n,
        "p50_ms": [20.0] * n,
        "p95_ms": [40.0] * n,
        "p99_ms": [60.0] * n,
        "tls_failures": [0.0] * n,
        "plaintext": [0.0] * n,
        "mtls": [200.0] * n,
        "cert_ttl": [NAN] * n,
    }
    buckets = cols.pop("buckets", None)
    full.update(cols)
    return Observations(
        rows=np.asarray(rows, dtype=np.int64),
        window_end=np.asarray(t, dtype=np.float64),
        buckets=None if buckets is None else np.asarray(buckets, dtype=np.float64),
        **{k: np.asarray(v, dtype=np.float64) for k, v in full.items()},
    )


def latency_window(
    rng: np.random.Generator, n: int, median_ms: float, sigma: float = 0.5
) -> dict[str, object]:
    """Bucket counts of n lognormal latencies, and the quantiles they imply."""
    edges = np.concatenate(([0.0], DEFAULT_BOUNDS_MS))
    counts = np.histogram(rng.lognormal(np.log(median_ms), sigma, n), bins=edges)[0]
    q = quantiles([counts], DEFAULT_BOUNDS_MS, [0.5, 0.95, 0.99])[0]
    return {"buckets": [counts.astype(float)], "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2]}


def run(det: RouteDetector, series: list[dict[str, object]], row: int = 0, start: int = 0):
    """Feed one route window by window; return per-window verdict dicts."""
    out = []
    for i, cols in enumerate(series, start):
        cols = {k: (x if k == "buckets" else [x]) for k, x in cols.items()}
        v = det.process(obs([row], [float(i)], **cols))
        out.append(v)
    return out


def normal_window(rng: np.random.Generator, median_ms: float = 20.0) -> dict[str, object]:
    reqs = int(rng.poisson(200))
    return {
        "requests": float(reqs),
        "failures": float(rng.binomial(reqs, 0.005)),
        "mtls": float(reqs),
        **latency_window(rng, reqs, median_ms),
    }


def fired_at(verdicts, kind: str) -> list[int]:
    return [i for i, v in enumerate(verdicts) if v.kinds and v.kinds[kind].fired.any()]


def resolved_at(verdicts, kind: str) -> list[int]:
    return [i for i, v in enumerate(verdicts) if v.kinds and v.kinds[kind].resolved.any()]


def test_latency_spike_fires_after_two_windows_and_resolves_after_three() -> None:
    rng = np.random.default_rng(1)
    det = RouteDetector(DetectorParams(warmup_windows=20))
    series = [normal_window(rng) for _ in range(60)]
    for i in range(40, 46):
        series[i] = normal_window(rng, median_ms=160.0)
    v = run(det, series[:40])
    before = det.baseline.level[0, 2]
    v += run(det, series[40:], start=40)
    assert fired_at(v, "latency") == [41]
    assert resolved_at(v, "latency") == [48]
    # the spike (8× the latency) was not learned as normal
    assert abs(det.baseline.level[0, 2] - before) < 0.1
    # the firing record says when the anomaly began: the first bad window
    assert det.started[0, 0] == 40.0


def test_no_alerts_on_a_long_normal_run() -> None:
    rng = np.random.default_rng(2)
    det = RouteDetector(DetectorParams(warmup_windows=20))
    v = run(det, [normal_window(rng) for _ in range(2000)])
    for kind in ("latency", "error_rate", "tls_failure", "mtls_regression", "traffic_drop"):
        assert fired_at(v, kind) == [], kind


def test_error_burst_fires() -> None:
    rng = np.random.default_rng(3)
    det = RouteDetector(DetectorParams(warmup_windows=20))
    series = [normal_window(rng) for _ in range(50)]
    for w in series[30:35]:
        w["failures"] = 0.2 * w["requests"]
    v = run(det, series)
    assert fired_at(v, "error_rate") == [31]
    assert fired_at(v, "latency") == []


def test_a_single_blip_does_not_fire() -> None:
    rng = np.random.default_rng(4)
    det = RouteDetector(DetectorParams(warmup_windows=20))
    series = [normal_window(rng) for _ in range(50)]
    series[30] = normal_window(rng, median_ms=400.0)
    series[30]["failures"] = 100.0
    v = run(det, series)
    assert fired_at(v, "latency") == [] and fired_at(v, "error_rate") == []


def test_low_traffic_windows_are_not_judged() -> None:
    rng = np.random.default_rng(5)
    det = RouteDetector(DetectorParams(warmup_windows=20, min_requests=20))
    series = [normal_window(rng) for _ in range(50)]
    for i in range(30, 40):
        series[i] = {
            "requests": 5.0,
            "failures": 0.0,
            "mtls": 5.0,
            **latency_window(rng, 5, 5000.0),
        }
    v = run(det, series)
    assert fired_at(v, "latency") == []
    assert not any(x.kinds["latency"].judged.any() for x in v[30:40])


def test_mtls_loss_tls_failures_traffic_drop_and_cert_expiry() -> None:
    rng = np.random.default_rng(6)
    det = RouteDetector(DetectorParams(warmup_windows=20))
    series = [normal_window(rng) for _ in range(80)]
    for w in series[30:34]:
        w.update(plaintext=0.4 * w["requests"], mtls=0.6 * w["requests"])
    for w in series[45:49]:
        w["tls_failures"] = 25.0
    for w in series[60:64]:
        w.update(requests=0.0, failures=0.0, mtls=0.0, p50_ms=NAN, p95_ms=NAN, p99_ms=NAN)
        w["buckets"] = [np.zeros(len(DEFAULT_BOUNDS_MS))]
    for i, w in enumerate(series):
        w["cert_ttl"] = 20 * 3600.0 if i < 75 else 3 * 3600.0
    v = run(det, series)
    assert fired_at(v, "mtls_regression") == [31]
    assert fired_at(v, "tls_failure") == [46]
    assert fired_at(v, "traffic_drop") == [61]
    assert fired_at(v, "cert_expiry") == [76]


def test_duplicate_and_out_of_order_windows_are_dropped() -> None:
    det = RouteDetector(DetectorParams(warmup_windows=2))
    det.process(obs([0], [10.0]))
    v = det.process(obs([0, 0], [10.0, 5.0]))
    assert v.index.size == 0
    assert det.windows[0] == 1


def test_two_windows_of_one_route_in_one_batch_are_taken_in_order() -> None:
    det = RouteDetector(DetectorParams(warmup_windows=2))
    v = det.process(obs([0, 1, 0], [2.0, 1.0, 1.0], p99_ms=[70.0, 50.0, 60.0]))
    assert det.windows.tolist()[:2] == [2, 1]
    assert det.last_window[0] == 2.0
    assert sorted(v.index.tolist()) == [0, 1, 2]


def test_persistence_n_of_m_and_unjudged_windows() -> None:
    p = Persistence(fire_after=2, fire_window=3, resolve_after=2, capacity=4)
    rows = np.array([0])
    seq = [(True, True), (False, False), (True, True), (False, True), (False, True)]
    fired, resolved = [], []
    for anomalous, judged in seq:
        f, r = p.step(rows, np.array([anomalous]), np.array([judged]))
        fired.append(bool(f[0]))
        resolved.append(bool(r[0]))
    # the unjudged window in between does not break "2 of the last 3"
    assert fired == [False, False, True, False, False]
    assert resolved == [False, False, False, False, True]


def test_state_per_route_is_small() -> None:
    det = RouteDetector(capacity=1024)
    det.rows_for([f"r{i}" for i in range(1024)])
    assert det.state_bytes_per_route() < 2048


def test_tail_score_has_heavier_tails_than_the_normal() -> None:
    from models.significance import normal_score, tail_score

    z = np.array([1.0, 3.09, 5.9])
    t = tail_score(z, 5.0)
    assert np.allclose(tail_score(z, 0.0), normal_score(z))
    # 3.09 spreads: 1 in 1,000 under the normal, about 1 in 70 under t with 5 dof
    assert normal_score(z)[1] > 0.998 and 0.98 < t[1] < 0.99
    assert 0.998 < t[2] < 0.9995
