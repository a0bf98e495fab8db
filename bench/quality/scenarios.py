"""The labelled simulator runs of the quality harness.

Each run is one simulated mesh (``mesh.quality_mesh``) with 10 s windows:
ten minutes of normal traffic first (the detector warms up in five), then
its faults one after another, on different targets, far enough apart that
each is over (and its findings resolved) before the next starts. Fault
starts sit on window boundaries.

Runs that must *not* alert: ``blips`` (one-window hiccups), ``deploy-*``
(a latency shift that stays: tolerated for the re-baseline delay, then it
must be quiet), ``daily`` (two compressed two-hour days: the request rate
swings between 30 % and 100 % of its peak every two hours) and ``quiet``
(two hours of plain traffic). Every run carries the low-traffic
``edge/rare`` workload, whose routes see a few requests per window and
whose quantiles jump around: its route-hours are normal traffic everywhere.

Identity certificates live 20 minutes in every run (renewed at 70 %), so a
``cert_expiry`` fault (every renewal fails) shows within the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.simulate import FaultSpec, FaultTarget, Scenario

WARMUP_SECONDS = 600.0
CERT_LIFETIME = 1200.0
CERT_REFRESH_FRACTION = 0.7
DB = "db.data.svc.cluster.local:8080"
AUTH = "auth.shop.svc.cluster.local:8080"
API = "api.shop.svc.cluster.local:8080"


@dataclass(frozen=True)
class Run:
    name: str
    faults: list[dict[str, Any]]
    windows: int
    seed: int
    day_seconds: float = 86400.0
    note: str = ""
    tags: tuple[str, ...] = field(default=())

    def scenario(self) -> Scenario:
        specs = []
        for i, f in enumerate(self.faults):
            f = dict(f)
            target = FaultTarget(**f.pop("target"))
            specs.append(FaultSpec(id=f.pop("id", f"{self.name}-{i}"), target=target, **f))
        return Scenario(name=self.name, warmup_seconds=WARMUP_SECONDS, faults=specs)


def _t(ns: str, wl: str, **kw: Any) -> dict[str, Any]:
    return {"namespace": ns, "workload": wl, **kw}


def _f(kind: str, target: dict[str, Any], start: float, duration: float, m: float,
       **kw: Any) -> dict[str, Any]:  # fmt: skip
    return {"kind": kind, "target": target, "start": start, "duration": duration, "magnitude": m,
            **kw}  # fmt: skip


def runs() -> list[Run]:
    gap = 480.0  # 8 minutes between fault starts
    out = [
        Run(
            "latency-spike",
            [
                _f("latency_spike", _t("shop", "api", route="GET /api/items"), 0, 180, 5.0),
                _f("latency_spike", _t("data", "db", route="PUT /rows"), gap, 180, 4.0),
                _f("latency_spike", _t("shop", "front", route="POST /buy"), 2 * gap, 180, 3.0),
            ],
            200,
            seed=11,
        ),
        Run(
            "latency-creep",
            [
                _f("latency_creep", _t("shop", "front", route="GET /items"), 0, 900, 5.0),
                _f("latency_creep", _t("shop", "auth"), 1200, 600, 4.0),
            ],
            250,
            seed=12,
        ),
        Run(
            "error-burst",
            [
                _f("error_burst", _t("shop", "api", route="POST /api/orders"), 0, 180, 0.25),
                _f("error_burst", _t("shop", "front", route="GET /"), gap, 180, 0.15),
                _f("error_burst", _t("data", "db", route="GET /rows"), 2 * gap, 180, 0.3),
            ],
            200,
            seed=13,
        ),
        Run(
            "error-trickle",
            [
                _f("error_trickle", _t("shop", "auth"), 0, 900, 0.03),
                _f("error_trickle", _t("shop", "api", route="GET /api/items"), 1200, 900, 0.02),
            ],
            280,
            seed=14,
        ),
        Run(
            "tls-failure",
            [
                _f("tls_handshake_failure", _t("data", "db"), 0, 180, 0.3),
                _f("tls_handshake_failure", _t("shop", "auth"), gap, 180, 0.2),
                _f("tls_handshake_failure", _t("shop", "api"), 2 * gap, 180, 0.5),
            ],
            200,
            seed=15,
        ),
        Run(
            "mtls-loss",
            [
                _f("mtls_loss", _t("shop", "api"), 0, 180, 0.5),
                _f("mtls_loss", _t("data", "db"), gap, 180, 0.3),
                _f("mtls_loss", _t("shop", "auth"), 2 * gap, 180, 0.8),
            ],
            200,
            seed=16,
        ),
        Run(
            "bad-pod",
            [
                _f("bad_pod", _t("pool", "worker", pod=2), 0, 240, 6.0),
                _f("bad_pod", _t("pool", "worker", pod=4), 600, 240, 1.0, error_ratio=0.3),
                _f("bad_pod", _t("pool", "worker", pod=0), 1200, 240, 4.0),
            ],
            220,
            seed=17,
        ),
        Run(
            "traffic-drop",
            [
                _f("traffic_drop", _t("shop", "front"), 0, 180, 0.0),
                _f("traffic_drop", _t("pool", "worker"), gap, 180, 0.1),
                _f("traffic_drop", _t("shop", "api"), 2 * gap, 180, 0.2),
            ],
            200,
            seed=18,
        ),
        Run(
            "cert-expiry",
            [
                _f("cert_expiry", _t("shop", "auth"), 0, 1500, 1.0),
                _f("cert_expiry", _t("data", "db", pod=1), 900, 1500, 1.0),
            ],
            330,
            seed=19,
        ),
        Run(
            "network-slow",
            [
                _f("network_slow", _t("shop", "api", route=DB, direction="outbound"), 0, 180, 4.0),
                _f(
                    "network_slow",
                    _t("shop", "front", route=AUTH, direction="outbound"),
                    gap,
                    180,
                    5.0,
                ),
                _f(
                    "network_slow",
                    _t("shop", "front", route=API, direction="outbound"),
                    2 * gap,
                    180,
                    3.0,
                ),
            ],
            200,
            seed=20,
        ),
        # -- must not alert ------------------------------------------------------------
        Run(
            "deploy-shift-api",
            [
                _f("deploy_shift", _t("shop", "api", route="GET /api/items"), 0, 1800, 2.0),
            ],
            250,
            seed=21,
            tags=("quiet",),
        ),
        Run(
            "deploy-shift-db",
            [
                _f("deploy_shift", _t("data", "db", route="GET /rows"), 0, 1800, 2.5),
            ],
            250,
            seed=22,
            tags=("quiet",),
        ),
        Run(
            "blips",
            [
                _f("blip", _t("shop", "front", route="GET /"), 0, 10, 10.0),
                _f(
                    "error_burst",
                    _t("shop", "api", route="POST /api/orders"),
                    300,
                    10,
                    0.5,
                    expect="no_alert",
                ),
                _f("blip", _t("pool", "worker"), 600, 10, 8.0),
                _f("blip", _t("data", "db", route="PUT /rows"), 900, 10, 10.0),
                _f("traffic_drop", _t("shop", "front"), 1200, 10, 0.0, expect="no_alert"),
            ],
            200,
            seed=23,
            tags=("quiet",),
        ),
        Run("daily", [], 1440, seed=24, day_seconds=7200.0, tags=("quiet",)),
        Run("quiet", [], 720, seed=25, tags=("quiet",)),
    ]
    return out


#: Length of each long normal-traffic run (simulated hours) and how many of each shape.
LONG_HOURS = 8.0
#: Inbound routes a long deploy run shifts, one after another (each keeps its shift).
_SHIFT_TARGETS = (
    ("shop", "api", "GET /api/items", 2.0),
    ("data", "db", "GET /rows", 2.5),
    ("shop", "front", "GET /items", 1.8),
    ("shop", "auth", "POST /auth/check", 2.2),
    ("data", "db", "PUT /rows", 1.6),
    ("shop", "api", "POST /api/orders", 3.0),
    ("pool", "worker", "POST /jobs", 2.0),
    ("shop", "front", "GET /", 1.5),
)


def _long_blips(hours: float, k: int) -> list[dict[str, Any]]:
    """One must-not-alert hiccup every five minutes, rotating over kinds and targets."""
    shapes = [
        lambda t: _f("blip", _t("shop", "front", route="GET /"), t, 10, 10.0),
        lambda t: _f(
            "error_burst",
            _t("shop", "api", route="POST /api/orders"),
            t,
            10,
            0.5,
            expect="no_alert",
        ),
        lambda t: _f("blip", _t("pool", "worker"), t, 10, 8.0),
        lambda t: _f("blip", _t("data", "db", route="PUT /rows"), t, 10, 10.0),
        lambda t: _f("traffic_drop", _t("shop", "front"), t, 10, 0.0, expect="no_alert"),
        lambda t: _f("blip", _t("shop", "auth"), t, 10, 6.0),
        lambda t: _f(
            "error_burst", _t("data", "db", route="GET /rows"), t, 10, 0.4, expect="no_alert"
        ),
    ]
    n = int((hours * 3600 - WARMUP_SECONDS - 600) // 300)
    return [shapes[(i + k) % len(shapes)](300.0 * i) for i in range(n)]


def _long_shifts(hours: float, k: int) -> list[dict[str, Any]]:
    """A deploy shift every 50 minutes on another route; each stays to the end of the run."""
    total = hours * 3600 - WARMUP_SECONDS
    out = []
    for i in range(min(int(total // 3000), len(_SHIFT_TARGETS))):
        ns, wl, route, m = _SHIFT_TARGETS[(i + k) % len(_SHIFT_TARGETS)]
        start = 3000.0 * i
        out.append(_f("deploy_shift", _t(ns, wl, route=route), start, total - start, m))
    return out


def long_runs(hours: float = LONG_HOURS) -> list[Run]:
    """Hours of normal traffic, for the false-alert rate (``--long``).

    The short runs above give ~320 normal route-hours: too few to show a
    rate of ≤ 1 false alert per 1,000. These are the same mesh and the same
    must-not-alert shapes, for longer: compressed two-hour and six-hour days,
    a deploy shift every 50 minutes that stays, a blip every five minutes,
    and plain traffic, each with seeds of its own.
    """
    w = int(hours * 3600 / 10)
    quiet = ("quiet", "long")
    out = [
        Run(f"long-daily-{k}", [], w, seed=100 + k, day_seconds=7200.0, tags=quiet)
        for k in range(4)
    ]
    out += [
        Run(f"long-daily6h-{k}", [], w, seed=110 + k, day_seconds=21600.0, tags=quiet)
        for k in range(2)
    ]
    out += [Run(f"long-deploy-{k}", _long_shifts(hours, k), w, seed=120 + k, tags=quiet)
            for k in range(3)]  # fmt: skip
    out += [Run(f"long-blips-{k}", _long_blips(hours, k), w, seed=130 + k, tags=quiet)
            for k in range(3)]  # fmt: skip
    out += [Run(f"long-quiet-{k}", [], w, seed=140 + k, tags=quiet) for k in range(6)]
    return out
