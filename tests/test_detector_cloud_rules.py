"""Opt-in rules for plain series (the cloud-monitoring configuration): a
smaller surge that holds long enough, a lone one-window spike, error bursts
that widen the spread, and two suspicious error windows in a row.

Both are off in the mesh default; each test shows the rule firing where it
should, staying quiet where it should not, and the default not firing."""

from __future__ import annotations

import numpy as np

from models.detector import DetectorParams, RouteDetector
from tests.test_detector_models import obs


def _traffic(det: RouteDetector, counts: list[float], step: float) -> tuple[list[int], list[int]]:
    """Feed one route's request counts; (windows that fired a surge, anomalous surge windows)."""
    fired, anomalous = [], []
    for i, n in enumerate(counts):
        v = det.process(
            obs(
                [0], [step * (i + 1)], window_seconds=[step], requests=[n], failures=[0.0], mtls=[n]
            )
        )
        if v.kinds["traffic_surge"].fired.any():
            fired.append(i)
        if v.kinds["traffic_surge"].anomalous.any():
            anomalous.append(i)
    return fired, anomalous


def _steady(rng: np.random.Generator, n: int, rate: float = 1000.0) -> list[float]:
    return [float(x) for x in rng.poisson(rate, n)]


def _params(**kw: float) -> DetectorParams:
    return DetectorParams(warmup_windows=30, season_period_seconds=0.0, **kw)  # type: ignore[arg-type]


def test_a_held_surge_under_the_surge_ratio_fires_once_it_has_held() -> None:
    rng = np.random.default_rng(30)
    counts = _steady(rng, 60) + [2.0 * x for x in _steady(rng, 4)] + _steady(rng, 20)
    # hourly windows: one window is an hour of the surge
    fired, _ = _traffic(RouteDetector(_params(traffic_surge_held_ratio=1.6)), counts, 3600.0)
    assert fired == [60]
    # off (the mesh default): 2x is under traffic_surge_ratio (3x)
    assert _traffic(RouteDetector(_params()), counts, 3600.0)[0] == []


def test_a_short_burst_is_not_a_held_surge_but_a_longer_one_is() -> None:
    """The hold is in time: minute windows need that many of them in a row."""
    rng = np.random.default_rng(31)
    p = _params(traffic_surge_held_ratio=1.6, traffic_surge_hold_seconds=600.0)
    burst = _steady(rng, 60) + [2.0 * x for x in _steady(rng, 5)] + _steady(rng, 30)
    assert _traffic(RouteDetector(p), burst, 60.0)[0] == []  # five minutes of 2x
    held = _steady(rng, 60) + [2.0 * x for x in _steady(rng, 20)] + _steady(rng, 10)
    fired, _ = _traffic(RouteDetector(p), held, 60.0)
    # anomalous from its tenth minute; persistence (two windows) fires at the eleventh
    assert fired == [60 + 10]


def test_a_lone_spike_fires_one_window_late_and_a_burst_does_not() -> None:
    rng = np.random.default_rng(32)
    counts = _steady(rng, 120)
    counts[80] *= 2.5  # one minute at 2.5x, then back
    p = _params(traffic_spike_ratio=2.0)
    fired, anomalous = _traffic(RouteDetector(p), counts, 60.0)
    assert fired == [81] and anomalous == [81]
    # the default: persistence filters a one-minute spike (and 2.5x is under 3x)
    assert _traffic(RouteDetector(_params()), counts, 60.0)[0] == []
    # a burst of several minutes is no lone spike
    burst = _steady(rng, 120)
    for i in range(80, 86):
        burst[i] *= 2.5
    assert _traffic(RouteDetector(p), burst, 60.0)[0] == []


def test_a_spike_must_stand_out_from_the_windows_around_it() -> None:
    """A window over the ratio against a lagging baseline, but not against the
    window before it (a ramp), is no spike."""
    rng = np.random.default_rng(33)
    counts = [*_steady(rng, 80), 1600.0, 2600.0, 1000.0, *_steady(rng, 20)]
    p = _params(traffic_spike_ratio=2.0)
    # 2600 is 2.6x the usual rate but only 1.6x the window before it
    assert _traffic(RouteDetector(p), counts, 60.0)[0] == []


def test_a_checkpoint_without_the_new_counters_restores_warm() -> None:
    rng = np.random.default_rng(34)
    det = RouteDetector(_params(traffic_surge_held_ratio=1.6, traffic_spike_ratio=2.0))
    _traffic(det, _steady(rng, 40), 60.0)
    new = {"surge_held", "spike_prev"}
    old = {k: a for k, a in det.export_state(np.arange(1)).items() if k not in new}
    fresh = RouteDetector(_params(traffic_surge_held_ratio=1.6, traffic_spike_ratio=2.0))
    rows = fresh.load_state(["plain/deploy/x/inbound/*"], old)
    assert fresh.windows[rows[0]] == 40
    assert (fresh.surge_held[rows] == 0).all() and not fresh.spike_prev[rows].any()


def _errors(det: RouteDetector, ratios: list[float], start: int = 0) -> list[int]:
    """Hourly error ratios of 1,000 requests each; the hours that fired."""
    fired = []
    for h, ratio in enumerate(ratios, start):
        v = det.process(
            obs(
                [0],
                [3600.0 * (h + 1)],
                window_seconds=[3600.0],
                requests=[1000.0],
                failures=[float(round(ratio * 1000))],
                mtls=[1000.0],
            )
        )
        if v.kinds["error_rate"].fired.any():
            fired.append(h)
    return fired


def _bursty(rng: np.random.Generator, hours: int) -> list[float]:
    """Near 0.3 % failures, with a routine 2 % burst every 4 hours from hour 40."""
    return [
        0.02 if h >= 40 and h % 4 == 0 else float(rng.uniform(0.002, 0.004)) for h in range(hours)
    ]


def test_routine_error_bursts_widen_the_spread_only_when_asked() -> None:
    ratios = _bursty(np.random.default_rng(35), 600)
    # the default (the mesh): level and spread leave every burst out, so each
    # routine burst alerts again, for as long as they go on
    default = _errors(RouteDetector(_params()), ratios)
    assert len(default) == len(range(40, 600, 4))
    # with the bursts moving the spread (clipped), they stop alerting
    det = RouteDetector(_params(error_outlier_spread_clip=4.0))
    fired = _errors(det, ratios)
    assert 1 <= len(fired) <= 60 and max(fired) < 300
    # a burst four times the routine one still alerts
    assert _errors(det, [0.003, 0.08, 0.003], start=600) == [601]


def _usual_errors(seed: int) -> list[float]:
    """80 hours of a 0.5-2.5 % error ratio (1,000 requests an hour)."""
    rng = np.random.default_rng(seed)
    return [float(rng.uniform(0.005, 0.025)) for _ in range(80)]


def test_two_suspicious_error_hours_in_a_row_fire_and_one_does_not() -> None:
    base = _usual_errors(36)
    # 4.5 % scores about 0.998 here: suspicious, under error_threshold (0.999)
    probe = RouteDetector(_params())
    _errors(probe, base)
    v = probe.process(
        obs(
            [0],
            [3600.0 * 81],
            window_seconds=[3600.0],
            requests=[1000.0],
            failures=[45.0],
            mtls=[1000.0],
        )
    )
    assert 0.99 <= v.kinds["error_rate"].score[0] < 0.999
    held = [*base, 0.045, 0.045, 0.015, 0.015]
    lone = [*base, 0.045, 0.015, 0.045, 0.015]
    p = _params(error_pair_threshold=0.99)
    assert _errors(RouteDetector(p), held) == [81]  # the second hour of it
    assert _errors(RouteDetector(p), lone) == []
    # off (the mesh default): neither fires
    assert _errors(RouteDetector(_params()), held) == []


def test_a_checkpoint_without_the_error_pair_flag_restores_warm() -> None:
    det = RouteDetector(_params(error_pair_threshold=0.99))
    _errors(det, [*_usual_errors(36), 0.045])
    assert det.error_prev[0]
    old = {k: a for k, a in det.export_state(np.arange(1)).items() if k != "error_prev"}
    fresh = RouteDetector(_params(error_pair_threshold=0.99))
    rows = fresh.load_state(["plain/deploy/x/inbound/*"], old)
    assert fresh.windows[rows[0]] == 81 and not fresh.error_prev[rows].any()
