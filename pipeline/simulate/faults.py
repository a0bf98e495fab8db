"""Scheduled faults: scenario files, their effect on traffic, and ground truth.

A fault never touches counters directly. It edits the per-cell
:class:`~.traffic.Modifiers` while it is active, so the metrics it leaves
behind are whatever the traffic model draws under the changed conditions,
with the same noise as the baseline. Each kind is one small class in
:data:`EFFECTS`; adding ``latency_creep`` (a ``progress``-scaled
multiplier), ``cert_expiry`` (``Modifiers.cert_refresh_fails``) or
``bad_pod`` is one class plus one name in :data:`FaultKind`.

Every start and end is appended to a JSON-lines label file in meshwatch's
route-key space, so a quality harness can score findings against it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.keys import ALL_ROUTES, parent_authority, policy_route, route_key

from .labels import OM_DEFAULT_ROUTE
from .layout import CELL_IN, CELL_OUT, Layout
from .topology import MeshSpec, WorkloadSpec
from .traffic import Modifiers
from .versions import ProxyVersion

FaultKind = Literal[
    "latency_spike",
    "error_burst",
    "tls_handshake_failure",
    "mtls_loss",
    "traffic_drop",
    "latency_creep",
    "cert_expiry",
    "bad_pod",
    "error_trickle",
    "network_slow",
    "deploy_shift",
    "blip",
]
#: What a detector should do about a fault, for a quality harness:
#: ``alert`` — detect it; ``no_alert`` — stay quiet (a blip, not worth waking
#: anyone); ``settle`` — a lasting change that is the new normal (a deploy
#: that shifts latency and stays): an alert during its first windows is
#: tolerated, but alerting must stop after the detector's re-baseline delay.
Expectation = Literal["alert", "no_alert", "settle"]
DEFAULT_EXPECT: dict[str, Expectation] = {"deploy_shift": "settle", "blip": "no_alert"}
_LATENCY_FACTOR_KINDS = ("latency_spike", "latency_creep", "network_slow", "deploy_shift", "blip")
Mask = npt.NDArray[np.bool_]


class ScenarioError(ValueError):
    """A scenario file that cannot be used, with the reason in plain words."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultTarget(_Spec):
    namespace: str
    workload: str
    route: str | None = Field(
        None,
        description="inbound: the rt_route name; outbound: the called authority; default all",
    )
    direction: Literal["inbound", "outbound"] = "inbound"
    pod: int | None = Field(None, ge=0, description="index of one pod of the workload")


class FaultSpec(_Spec):
    id: str | None = None
    kind: FaultKind
    target: FaultTarget
    start: float = Field(ge=0, description="seconds after the scenario origin")
    duration: float = Field(gt=0)
    magnitude: float = Field(
        description="latency factor | error ratio | failure share | plaintext share | rate factor"
    )
    error_ratio: float | None = Field(
        None, ge=0, le=1, description="bad_pod: the share of the pod's requests that fail"
    )
    expect: Expectation | None = Field(
        None, description="alert | no_alert | settle (default by kind: see DEFAULT_EXPECT)"
    )

    @property
    def expectation(self) -> Expectation:
        return self.expect or DEFAULT_EXPECT.get(self.kind, "alert")

    @model_validator(mode="after")
    def _magnitude_fits(self) -> Self:
        m, kind = self.magnitude, self.kind
        if kind in _LATENCY_FACTOR_KINDS and not m > 0:
            raise ValueError(f"{kind} magnitude is a latency multiplier and must be > 0")
        if kind == "bad_pod" and (self.target.pod is None or not m > 0):
            raise ValueError("bad_pod needs target.pod and a latency multiplier > 0")
        if kind == "network_slow" and (
            self.target.direction != "outbound" or self.target.route is None
        ):
            raise ValueError("network_slow needs an outbound target with the called authority")
        if kind == "cert_expiry" and self.target.direction != "inbound":
            raise ValueError("cert_expiry is a property of the target's own proxies (inbound)")
        if kind == "traffic_drop" and not m >= 0:
            raise ValueError("traffic_drop magnitude is a rate factor and must be >= 0")
        if (
            kind in ("error_burst", "error_trickle", "tls_handshake_failure", "mtls_loss")
            and not 0 < m <= 1
        ):
            raise ValueError(f"{kind} magnitude is a ratio and must be in (0, 1]")
        if kind in ("tls_handshake_failure", "mtls_loss") and self.target.direction != "inbound":
            raise ValueError(f"{kind} only exists on the inbound side of its target")
        return self


class Scenario(_Spec):
    name: str = "scenario"
    description: str = ""
    warmup_seconds: float = Field(
        0.0, ge=0, description="fault starts count from mesh start + warmup (callers may override)"
    )
    faults: list[FaultSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ids_unique(self) -> Self:
        ids = [f.id for f in self.faults if f.id is not None]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate fault ids {dupes}")
        return self

    def fault_ids(self) -> list[str]:
        return [f.id or f"{f.kind}-{i}" for i, f in enumerate(self.faults)]

    def check_against(self, mesh: MeshSpec) -> None:
        """Reject faults aimed at things the mesh does not have, naming the fault."""
        for fid, f in zip(self.fault_ids(), self.faults, strict=True):
            t = f.target
            try:
                w = mesh.workload(t.namespace, t.workload)
            except KeyError:
                raise ScenarioError(
                    f"fault {fid}: no workload {t.namespace}/{t.workload}"
                ) from None
            if t.pod is not None and t.pod >= w.replicas:
                raise ScenarioError(
                    f"fault {fid}: pod {t.pod} but {w.name} has {w.replicas} replicas"
                )
            if t.route is not None:
                known = (
                    _outbound_authorities(mesh, w)
                    if t.direction == "outbound"
                    else [r.name for r in w.routes]
                )
                if t.route not in known:
                    raise ScenarioError(
                        f"fault {fid}: {t.direction} route {t.route!r} not in {known}"
                    )
            if t.direction == "outbound" and not _outbound_authorities(mesh, w):
                raise ScenarioError(f"fault {fid}: {w.name} calls nothing, no outbound side")
            if f.kind in ("tls_handshake_failure", "mtls_loss") and not w.meshed:
                raise ScenarioError(f"fault {fid}: {f.kind} needs a meshed target")


def load_scenario(source: str | Path) -> Scenario:
    """Read a scenario YAML file; any problem becomes a :class:`ScenarioError` naming the file."""
    path = Path(source)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from exc
    try:
        return Scenario.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ScenarioError(f"{path}: invalid scenario: {problems}") from exc


def _outbound_authorities(mesh: MeshSpec, w: WorkloadSpec) -> list[str]:
    return [a for c, _, _, a in mesh.edges() if c is w]


def edge_routes(
    mesh: MeshSpec, caller: WorkloadSpec, target: WorkloadSpec, authority: str
) -> list[str]:
    """The outbound routes a caller's proxy reports one edge under: its authority and,
    from 2.16 on, the synthesized default route of the target's Service
    (``{service}.{namespace}:{port} [http]``, see :mod:`pipeline.collect.extract`)."""
    routes = [authority]
    if ProxyVersion.parse(mesh.version_of(caller)).outbound_route_families:
        parent = parent_authority(target.name, target.namespace, str(target.port))
        routes.append(policy_route(parent, "default", OM_DEFAULT_ROUTE))
    return routes


# -- effects ------------------------------------------------------------------------------


class Effect:
    """How one fault kind bends the traffic of its target while active."""

    continuous: ClassVar[bool] = False  # re-applied every tick (for time-varying kinds)

    def __init__(self, fault: FaultSpec, mesh: MeshSpec) -> None:
        self.fault = fault
        self.mesh = mesh
        self.target = mesh.workload(fault.target.namespace, fault.target.workload)
        self.wl = mesh.workloads.index(self.target)

    # selections ---------------------------------------------------------------------------

    def _route_index(self, layout: Layout) -> int | None:
        name = self.fault.target.route
        if name is None or self.fault.target.direction == "outbound":
            return None
        j = [r.name for r in self.target.routes].index(name)
        return layout.routes.index((self.wl, j))

    def _pod_index(self, layout: Layout) -> int | None:
        if self.fault.target.pod is None:
            return None
        mine = [i for i, p in enumerate(layout.pods) if p.wl == self.wl]
        return mine[self.fault.target.pod] if self.fault.target.pod < len(mine) else -2

    def served(self, layout: Layout) -> Mask:
        """Requests the target serves: its inbound cells and its callers' outbound cells to it."""
        g, pod = self._route_index(layout), self._pod_index(layout)
        inbound = (layout.cell_kind == CELL_IN) & (layout.cell_owner == self.wl)
        callers = (layout.cell_kind == CELL_OUT) & (layout.cell_serve_wl == self.wl)
        sel = inbound | callers
        if g is not None:
            sel &= layout.cell_route == g
        if pod is not None:
            sel &= layout.cell_serve_pod == pod
        return np.asarray(sel, dtype=bool)

    def _edges(self, layout: Layout) -> list[int]:
        route = self.fault.target.route
        return [
            e
            for e, (caller, _, _, auth) in enumerate(layout.edges)
            if caller == self.wl and (route is None or auth == route)
        ]

    def calling(self, layout: Layout) -> Mask:
        """Requests the target sends (its outbound cells to the selected authorities)."""
        pod = self._pod_index(layout)
        sel = (layout.cell_kind == CELL_OUT) & np.isin(layout.cell_edge, self._edges(layout))
        if pod is not None:
            sel &= layout.cell_pod == pod
        return np.asarray(sel, dtype=bool)

    def selection(self, layout: Layout) -> Mask:
        return (
            self.served(layout)
            if self.fault.target.direction == "inbound"
            else self.calling(layout)
        )

    # ground truth -------------------------------------------------------------------------

    def _inbound_keys(self, with_routes: bool) -> list[str]:
        if not self.target.meshed:
            return []
        keys = [self.target.route_key("inbound", ALL_ROUTES)]
        if with_routes:
            names = (
                [self.fault.target.route]
                if self.fault.target.route
                else [r.name for r in self.target.routes]
            )
            keys += [self.target.route_key("inbound", n) for n in names if n is not None]
        return keys

    def _caller_keys(self) -> list[str]:
        return [
            route_key(c.key, "outbound", r)
            for c, _, t, auth in self.mesh.edges()
            if t is self.target and c.meshed
            for r in edge_routes(self.mesh, c, t, auth)
        ]

    def _outbound_keys(self) -> list[str]:
        route = self.fault.target.route
        return [
            self.target.route_key("outbound", r)
            for c, _, t, auth in self.mesh.edges()
            if c is self.target and (route is None or auth == route)
            for r in edge_routes(self.mesh, c, t, auth)
        ]

    def route_keys(self) -> list[str]:
        if self.fault.target.direction == "outbound":
            return self._outbound_keys()
        return self._inbound_keys(with_routes=True) + self._caller_keys()

    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        raise NotImplementedError


class LatencySpike(Effect):
    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        mods.lat_mult[self.selection(layout)] *= self.fault.magnitude


class ErrorBurst(Effect):
    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        sel = self.selection(layout)
        mods.err[sel] = np.maximum(mods.err[sel], self.fault.magnitude)


class TrafficDrop(Effect):
    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        m = self.fault.magnitude
        mods.rate_mult[self.selection(layout)] *= m
        if self.fault.target.direction == "outbound" and self.fault.target.pod is None:
            # What the target stops sending, its dependencies stop receiving.
            downstream = (layout.cell_kind == CELL_IN) & np.isin(
                layout.cell_edge, self._edges(layout)
            )
            mods.rate_mult[downstream] *= m

    def route_keys(self) -> list[str]:
        keys = super().route_keys()
        if self.fault.target.direction == "outbound" and self.fault.target.pod is None:
            route = self.fault.target.route
            for c, _, t, auth in self.mesh.edges():
                if c is self.target and (route is None or auth == route) and t.meshed:
                    keys.append(t.route_key("inbound", ALL_ROUTES))
                    keys += [t.route_key("inbound", r.name) for r in t.routes]
        return keys


class MtlsLoss(Effect):
    """A share of the target's meshed clients arrive in plaintext (``no_tls_from_remote``)."""

    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        m = self.fault.magnitude
        sel = self.served(layout) & (layout.cell_kind == CELL_IN)
        twins = np.flatnonzero(sel & layout.cell_twin)
        partners = layout.cell_partner[twins]
        mods.rate_mult[twins] += mods.rate_mult[partners] * m
        mods.rate_mult[partners] *= 1.0 - m

    def route_keys(self) -> list[str]:
        return self._inbound_keys(with_routes=False)


class TlsHandshakeFailure(Effect):
    """Handshakes to the target fail: its proxy counts errors, callers see 502s and resets."""

    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        m = self.fault.magnitude
        sel = self.served(layout)
        inbound = sel & (layout.cell_kind == CELL_IN) & layout.cell_meshed_src
        callers = sel & (layout.cell_kind == CELL_OUT)
        mods.in_fail[inbound] = np.maximum(mods.in_fail[inbound], m)
        mods.conn_fail[callers] = np.maximum(mods.conn_fail[callers], m)


class LatencyCreep(Effect):
    """Latency grows steadily from normal to ``magnitude`` times normal over the fault."""

    continuous = True

    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        factor = 1.0 + (self.fault.magnitude - 1.0) * progress
        mods.lat_mult[self.selection(layout)] *= factor


class CertExpiry(Effect):
    """The target's proxies fail every identity refresh, so their certificates' TTL runs down.

    Nothing changes until a proxy's refresh falls due (at 70 % of the lifetime);
    from then on it retries every ``cert_retry_seconds`` and fails.
    """

    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        pod = self._pod_index(layout)
        mine = np.array([p.wl == self.wl for p in layout.pods], dtype=bool)
        if pod is not None:
            mine &= np.arange(len(layout.pods)) == pod
        mods.cert_refresh_fails |= mine

    def route_keys(self) -> list[str]:
        # the certificate TTL is reported on the workload's inbound '*' route
        return self._inbound_keys(with_routes=False)


class BadPod(Effect):
    """One replica is slow (``magnitude`` × latency) and may fail ``error_ratio`` of requests.

    Its share of the workload's traffic is 1/replicas, so the workload-level
    signal is diluted: what a per-route detector has to find.
    """

    def apply(self, mods: Modifiers, layout: Layout, progress: float) -> None:
        sel = self.served(layout)
        mods.lat_mult[sel] *= self.fault.magnitude
        if self.fault.error_ratio:
            mods.err[sel] = np.maximum(mods.err[sel], self.fault.error_ratio)


class ErrorTrickle(ErrorBurst):
    """A small error ratio that lasts (same mechanism as a burst, a different test)."""


class NetworkSlow(LatencySpike):
    """A slow network path from a caller to one dependency.

    Only the caller's outbound latency to that authority grows; the
    dependency's own inbound latency (measured by its proxy) stays flat.
    """


class DeployShift(LatencySpike):
    """A deploy that changes latency once and keeps it: not an incident once settled."""


class Blip(LatencySpike):
    """A one-window latency hiccup: not worth an alert."""


EFFECTS: dict[str, type[Effect]] = {
    "latency_spike": LatencySpike,
    "error_burst": ErrorBurst,
    "traffic_drop": TrafficDrop,
    "mtls_loss": MtlsLoss,
    "tls_handshake_failure": TlsHandshakeFailure,
    "latency_creep": LatencyCreep,
    "cert_expiry": CertExpiry,
    "bad_pod": BadPod,
    "error_trickle": ErrorTrickle,
    "network_slow": NetworkSlow,
    "deploy_shift": DeployShift,
    "blip": Blip,
}


# -- schedule and ground truth -----------------------------------------------------------


@dataclass
class _Scheduled:
    fault_id: str
    spec: FaultSpec
    effect: Effect
    start: float  # absolute sim time
    end: float
    state: Literal["pending", "active", "done"] = "pending"
    started_at: float = math.nan


class FaultSchedule:
    """Turns faults on and off as sim time passes and records when it did."""

    def __init__(
        self,
        scenario: Scenario,
        mesh: MeshSpec,
        origin: float,
        labels_path: str | Path | None = None,
    ) -> None:
        scenario.check_against(mesh)
        self.scenario = scenario
        self.labels_path = Path(labels_path) if labels_path is not None else None
        self.records: list[dict[str, Any]] = []
        self.items = [
            _Scheduled(
                fault_id=fid,
                spec=f,
                effect=EFFECTS[f.kind](f, mesh),
                start=origin + f.start,
                end=origin + f.start + f.duration,
            )
            for fid, f in zip(scenario.fault_ids(), scenario.faults, strict=True)
        ]

    @property
    def active(self) -> list[_Scheduled]:
        return [s for s in self.items if s.state == "active"]

    @property
    def continuous(self) -> bool:
        return any(s.effect.continuous for s in self.active)

    def update(self, t: float) -> bool:
        """Move faults whose window opened or closed at ``t``; True if anything changed."""
        changed = False
        for s in self.items:
            if s.state == "pending" and s.start <= t < s.end:
                s.state, s.started_at, changed = "active", t, True
                self._record("start", s, t, s.end)
            elif s.state == "active" and t >= s.end:
                s.state, changed = "done", True
                self._record("end", s, s.started_at, t)
            elif s.state == "pending" and t >= s.end:
                s.state = "done"  # window fell entirely between two ticks
        return changed

    def close(self, t: float) -> None:
        """Close faults still running when the mesh stops, marked as truncated."""
        for s in self.active:
            s.state = "done"
            self._record("end", s, s.started_at, t, truncated=True)

    def modifiers(self, layout: Layout, t: float) -> Modifiers:
        mods = Modifiers.baseline(layout)
        for s in self.active:
            progress = min(1.0, max(0.0, (t - s.start) / (s.end - s.start)))
            s.effect.apply(mods, layout, progress)
        return mods

    def _record(
        self, event: str, s: _Scheduled, start: float, end: float, truncated: bool = False
    ) -> None:
        rec: dict[str, Any] = {
            "event": event,
            "fault_id": s.fault_id,
            "kind": s.spec.kind,
            "route_keys": s.effect.route_keys(),
            "start": start,
            "end": end,
            "magnitude": s.spec.magnitude,
            "expect": s.spec.expectation,
            "target": s.spec.target.model_dump(),
            "scenario": self.scenario.name,
        }
        if truncated:
            rec["truncated"] = True
        self.records.append(rec)
        if self.labels_path is not None:
            self.labels_path.parent.mkdir(parents=True, exist_ok=True)
            with self.labels_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")


def _bundled_dirs() -> list[Path]:
    here = Path(__file__).resolve()
    # Source checkout: <repo>/config/scenarios; installed wheel: pipeline/_config/scenarios.
    return [here.parents[2] / "config" / "scenarios", here.parents[1] / "_config" / "scenarios"]


def scenario_from(source: Scenario | str | Path | None) -> Scenario:
    """A scenario object, a YAML path, or the name of a shipped one (``"demo"``)."""
    if source is None:
        return Scenario()
    if isinstance(source, Scenario):
        return source
    path = Path(source)
    if not path.exists() and path.suffix == "" and path.name == str(source):
        for d in _bundled_dirs():
            if (d / f"{source}.yaml").exists():
                return load_scenario(d / f"{source}.yaml")
    return load_scenario(path)


__all__: Sequence[str] = (
    "EFFECTS",
    "Effect",
    "FaultKind",
    "FaultSchedule",
    "FaultSpec",
    "FaultTarget",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "scenario_from",
)
