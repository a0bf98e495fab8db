"""The plain-CSV path reads an error ratio with the evidence it carries (exact fractions)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.backtest.inputs import exact_fraction, read_plain_csv
from pipeline.backtest.run import backtest
from pipeline.config import DetectorConfig

T0 = 1_700_000_000.0


def _write(path: Path, values: list[float]) -> Path:
    with path.open("w") as fh:
        fh.write("TimeStamp,Value,Label\n")
        for i, v in enumerate(values):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0 + 3600 * i))
            fh.write(f"{stamp},{v!r},0\n")
    return path


def test_exact_fractions_are_found_to_float32_precision() -> None:
    assert exact_fraction(0.125, 1000) == (1, 8)
    assert exact_fraction(float(np.float32(1 / 14)), 1000) == (1, 14)  # 0.0714285746
    assert exact_fraction(0.0714285746, 1000) == (1, 14)
    assert exact_fraction(10 / 11, 1000) == (10, 11)
    assert exact_fraction(1 / 969, 1000) == (1, 969)
    # a ratio measured over more requests than the nominal stays nominal
    assert exact_fraction(1 / 18462, 1000) is None
    assert exact_fraction(0.0123, 1000) is None
    assert exact_fraction(0.0, 1000) is None
    assert exact_fraction(1.0, 1000) is None
    assert exact_fraction(1.9, 1000) is None


def test_error_ratios_become_failures_of_their_own_denominator(tmp_path: Path) -> None:
    src = _write(tmp_path / "ratio.csv", [0.0, 0.125, 0.0, 0.0123, 0.0, 1.9, 0.6153846])
    got, rows = read_plain_csv(src, "error_rate")
    assert len(got) == len(rows) == 7
    assert [(s.failures, s.requests) for s in got] == [
        (0, 1000),  # nothing seen yet: the nominal denominator
        (1, 8),
        (0, 8),  # a zero keeps the last denominator
        (12, 1000),  # not a fraction of a small denominator: nominal, as before
        (0, 1000),
        (1000, 1000),  # above 1: clipped, nominal
        (8, 13),
    ]
    assert all(s.successes + s.failures == s.requests for s in got)


def test_a_quiet_services_single_failures_do_not_alert_but_its_incident_does(
    tmp_path: Path,
) -> None:
    """One failed request of 8-20 in an hour is routine for a quiet service;
    read as 125 of 1,000 it alerted (the nominal reading, checked here too)."""
    rng = np.random.default_rng(3)
    values: list[float] = []
    for i in range(400):
        n = int(rng.integers(8, 21))
        k = 1 if rng.random() < 0.15 else 0
        if 300 <= i < 303:
            k = n - 2  # an incident: most requests fail for three hours
        values.append(float(np.float32(k / n)))
    src = _write(tmp_path / "quiet.csv", values)
    cfg = DetectorConfig(min_requests=5, resolve_after=1)
    samples, _ = read_plain_csv(src, "error_rate")
    fired = [f.window_end for f in backtest(samples, cfg, kinds=("error_rate",)).alerts()]
    incident = (T0 + 3600 * 300, T0 + 3600 * 303)
    assert fired and all(incident[0] <= t <= incident[1] for t in fired), fired
    # the nominal reading (1 of 8 as 125 of 1,000) alerts outside the incident
    nominal = [
        s.model_copy(
            update={
                "requests": 1000,
                "failures": round(v * 1000),
                "successes": 1000 - round(v * 1000),
            }
        )
        for s, v in zip(samples, values, strict=True)
    ]
    fired_nominal = [f.window_end for f in backtest(nominal, cfg, kinds=("error_rate",)).alerts()]
    assert any(not incident[0] <= t <= incident[1] for t in fired_nominal)
