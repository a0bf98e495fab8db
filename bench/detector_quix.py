"""The per-route baseline as a Quix Streams app, against meshwatch's detector stage.

Issue 4 asks for "the same per-route baseline written as a Quix Streams app
(a bench-only dependency) on the same data". This loads the same
GoldenBatches as ``bench/detector_rate.py`` onto the embedded broker (Tansu)
and measures, alternating, in one process each time:

  (q) Quix     a Quix Streams ``Application`` (librdkafka underneath) that
               reads the golden topic (its JSON deserializer: orjson), keeps
               per route — in Quix state (RocksDB, changelog topic on the
               broker), keyed by the message's workload key with one state
               entry per route — the same robust baseline meshwatch keeps
               for three features (log p99, error ratio, log request rate:
               a Huber-clipped EWMA of level and absolute deviation, plain
               running mean while warming up), scores each window against
               it, and produces one finding message per anomalous
               route-window to an output topic;
  (b) meshwatch the real detector stage (``StageRunner`` +
               ``DetectorProcessor``): all seven kinds, persistence, findings.

The Quix app does strictly less per sample (three features, no persistence,
no count tests); it is the shape of the baseline, written the way Quix apps
are written (per message, per sample, in Python). Rates are route-samples
per second, timed from the first message handled to the last; the group
join is left out on both sides.

Needs the bench extra: ``pip install -e '.[bench]'``.

    python bench/detector_quix.py                  # N=5000, W=20, K=20
    python bench/detector_quix.py --no-changelog   # Quix state without its changelog topic
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from common import (
    MeshShape,
    bench_broker,
    bench_config,
    fmt_rate,
    generate_records,
    machine_line,
    produce_all,
)
from detector_rate import Run, detector_stage

from pipeline.kafka.topics import ensure_topics
from pipeline.keys import route_key, workload_key

#: The baseline's constants, as in models/baseline.py and models/detector.py.
HALF_LIFE = 60.0
ALPHA = 1.0 - 0.5 ** (1.0 / HALF_LIFE)
CLIP = 2.5
SPREAD_CLIP = 5.0
MIN_SPREAD = (0.15, 0.002, 0.1)  # log p99, error ratio, log requests
THRESHOLD_Z = 4.0  # ≈ score 0.9999 one-sided
FEATURES = ("latency", "error_rate", "traffic")


def features(s: dict[str, Any]) -> tuple[float, float, float]:
    p99 = s.get("p99_ms")
    req = s.get("requests", 0)
    return (
        math.log(p99) if p99 else math.nan,
        s.get("failures", 0) / req if req else math.nan,
        math.log1p(req),
    )


def judge_and_learn(
    state: list[float] | None, x: tuple[float, float, float], warmup: int
) -> tuple[list[float], list[tuple[str, float]]]:
    """One route-window: (new state, anomalous features with their z).

    State: [n, level×3, spread×3] — the robust baseline of models/baseline.py.
    """
    st = state or [0.0] * 7
    n = st[0]
    out: list[tuple[str, float]] = []
    anomalous = False
    for i in range(3):
        xi = x[i]
        if xi != xi:  # NaN: nothing to judge or learn
            continue
        level, spread = st[1 + i], st[4 + i]
        eff = max(spread, MIN_SPREAD[i])
        resid = xi - level
        z = resid / eff
        if n >= warmup and abs(z) >= THRESHOLD_Z:
            out.append((FEATURES[i], z))
            anomalous = True
    if not anomalous:  # an incident is not learned as normal
        n1 = n + 1
        a = max(1.0 / n1, ALPHA)
        for i in range(3):
            xi = x[i]
            if xi != xi:
                continue
            level, spread = st[1 + i], st[4 + i]
            eff = max(spread, MIN_SPREAD[i])
            resid = xi - level
            if n1 == 1:
                st[1 + i], st[4 + i] = xi, 0.0
                continue
            step = resid if n1 <= 5 else max(-CLIP * eff, min(CLIP * eff, resid))
            bound = math.inf if n1 <= 5 else SPREAD_CLIP * eff
            st[1 + i] = level + a * step
            st[4 + i] = spread + a * (min(abs(resid), bound) * 1.2533 - spread)
        st[0] = n1
    return st, out


def quix_run(
    bootstrap: str,
    golden: str,
    findings_topic: str,
    expected_msgs: int,
    warmup: int,
    timeout: float,
    changelog: bool,
) -> Run:
    from quixstreams import Application, State

    done = {"msgs": 0, "samples": 0, "findings": 0}
    clock: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=bootstrap,
            consumer_group=f"bench-quix-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
            use_changelog_topics=changelog,
            consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
            loglevel="WARNING",
        )
        topic = app.topic(golden, value_deserializer="json", key_deserializer="str")
        out = app.topic(findings_topic, value_serializer="json", key_serializer="str")

        def judge(batch: dict[str, Any], state: State[Any, Any]) -> list[dict[str, Any]]:
            if "t0" not in clock:
                clock["t0"] = time.perf_counter()
                clock["c0"] = time.process_time()
            found: list[dict[str, Any]] = []
            wk_cache: dict[tuple[str, str, str], str] = {}
            for s in batch["samples"]:
                parts = (s["namespace"], s["workload_kind"], s["workload"])
                wk = wk_cache.get(parts) or wk_cache.setdefault(parts, workload_key(*parts))
                rk = route_key(wk, s["direction"], s["route"])
                st, anomalies = judge_and_learn(state.get(rk), features(s), warmup)
                state.set(rk, st)
                for kind, z in anomalies:
                    found.append(
                        {"route_key": rk, "kind": kind, "z": z, "window_end": s["window_end"]}
                    )
            done["msgs"] += 1
            done["samples"] += len(batch["samples"])
            done["findings"] += len(found)
            if done["msgs"] >= expected_msgs:
                clock["t1"] = time.perf_counter()
                clock["c1"] = time.process_time()
                app.stop()
            return found

        sdf = app.dataframe(topic)
        sdf = sdf.apply(judge, stateful=True, expand=True)
        sdf.to_topic(out, key=lambda v: v["route_key"])
        timer = threading.Timer(timeout, app.stop)
        timer.daemon = True
        timer.start()
        try:
            app.run()
        finally:
            timer.cancel()
    if "t1" not in clock:
        raise TimeoutError(f"Quix handled {done['msgs']}/{expected_msgs} messages")
    return Run(
        clock["t1"] - clock["t0"],
        done["msgs"],
        done["samples"],
        cpu=clock["c1"] - clock["c0"],
        extra={"findings": done["findings"]},
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", type=int, default=5_000)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--routes-per-batch", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-changelog", action="store_true", help="Quix state without changelog")
    ap.add_argument("--bootstrap", help="use this broker instead of starting Tansu")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    logging.getLogger("quixstreams").setLevel(logging.WARNING)

    shape = MeshShape(
        routes=args.routes,
        windows=args.windows,
        routes_per_batch=args.routes_per_batch,
        fault_from=max(args.warmup + 2, args.windows // 2),
    )
    print(f"detector vs Quix Streams — {machine_line()}")
    records = list(generate_records(shape))
    n_msgs, n_samples = len(records), shape.routes * shape.windows
    print(
        f"N={shape.routes} routes × W={shape.windows} windows: "
        f"{n_msgs} messages, {n_samples} samples"
    )
    load = [os.getloadavg()[0]]
    with bench_broker(args.bootstrap) as bootstrap:
        cfg = bench_config(
            bootstrap, golden_retention_ms=7 * 86_400_000, warmup_windows=args.warmup
        )
        ensure_topics(cfg)
        produce_all(cfg, cfg.topics.golden, records)
        del records
        quix: list[Run] = []
        ours: list[Run] = []
        for rep in range(args.repeat):
            quix.append(
                quix_run(
                    bootstrap,
                    cfg.topics.golden,
                    f"{cfg.topics.prefix}quix-findings-{rep}",
                    n_msgs,
                    args.warmup,
                    args.timeout,
                    not args.no_changelog,
                )
            )
            ours.append(detector_stage(cfg, n_msgs, args.timeout))
            load.append(os.getloadavg()[0])
    q = max(quix, key=lambda r: r.rate)
    b = max(ours, key=lambda r: r.rate)
    print()
    print(
        f"route-samples per second (best of {args.repeat}; per wall second and per CPU "
        "second of this process, all threads):"
    )
    changelog = "changelog on" if not args.no_changelog else "no changelog"
    print(
        f"  (q) Quix Streams app, baseline in Quix state ({changelog}): "
        f"{fmt_rate(q.rate):>9}/s wall {fmt_rate(q.cpu_rate):>9}/s CPU  "
        f"({q.extra['findings']} anomalous route-windows, no persistence)"
    )
    print(
        f"  (b) meshwatch detector stage:                            "
        f"{fmt_rate(b.rate):>9}/s wall {fmt_rate(b.cpu_rate):>9}/s CPU  "
        f"({b.extra['findings']} findings)"
    )
    print(f"  all runs (q): {', '.join(fmt_rate(r.rate) for r in quix)}")
    print(f"  all runs (b): {', '.join(fmt_rate(r.rate) for r in ours)}")
    print()
    print("SUMMARY")
    print(f"  load average during the runs: {', '.join(f'{x:.1f}' for x in load)}")
    print(
        f"  meshwatch / Quix Streams: {b.rate / q.rate:.2f}× per wall second, "
        f"{b.cpu_rate / q.cpu_rate:.2f}× per CPU second"
    )
    print(
        "  (Quix commits every 5 s, its default, and its clock stops at the last message "
        "handled; meshwatch's after that batch's findings are acknowledged and committed)"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
