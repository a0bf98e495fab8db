"""``SimulatedMesh``: the clock, the pods, the faults and their HTTP listeners.

Time only moves in whole ticks, either from a background task that follows
the (injectable) clock, or from explicit :meth:`SimulatedMesh.advance` calls.
All randomness comes from one generator seeded once and consumed in tick
order, so the same seed and the same number of ticks give byte-identical
``/metrics`` bodies however the ticks were driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import numpy as np

from .faults import FaultSchedule, Scenario, scenario_from
from .layout import Layout, build_layout
from .pods import Pod, PodFactory
from .server import MetricsServer, Misbehaviour
from .topology import MeshSpec
from .traffic import TrafficConfig, TrafficModel

#: Catch-up ticks run back to back before yielding to the event loop, so a
#: slow tick (1,000 pods) never starves scrapes.
_MAX_BATCH = 8


class ScrapeTarget(NamedTuple):
    url: str
    namespace: str
    workload: str
    kind: str
    pod: str
    proxy_version: str


class PodInfo(NamedTuple):
    uid: int
    namespace: str
    workload: str
    kind: str
    name: str
    ordinal: int
    meshed: bool
    proxy_version: str


class SimulatedMesh:
    """A simulated Linkerd data plane that can be scraped like the real one."""

    def __init__(
        self,
        spec: MeshSpec,
        *,
        scenario: Scenario | str | Path | None = None,
        seed: int = 0,
        labels_path: str | Path | None = None,
        tick_seconds: float = 0.25,
        day_seconds: float = 86400.0,
        day_phase: float = 0.4,
        warmup_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        realtime: bool = True,
        serve_http: bool = True,
        host: str = "127.0.0.1",
        traffic: TrafficConfig | None = None,
    ) -> None:
        self.cfg = dataclasses.replace(
            traffic or TrafficConfig(),
            tick_seconds=tick_seconds,
            day_seconds=day_seconds,
            day_phase=day_phase,
        )
        self.spec = spec
        self.seed = seed
        self.clock = clock
        self.realtime = realtime
        self.serve_http = serve_http
        self.host = host
        self.t0 = float(clock())
        self.ticks = 0
        self._frac = 0.0
        self.scenario = scenario_from(scenario)
        warmup = self.scenario.warmup_seconds if warmup_seconds is None else warmup_seconds
        self.schedule = FaultSchedule(self.scenario, spec, self.t0 + warmup, labels_path)

        self._factory = PodFactory(spec, seed)
        self._ages = random.Random(f"ages:{seed}")
        self.pods_by_wl: list[list[Pod]] = [
            [self._new_pod(i, ordinal=o, fresh=False) for o in range(w.replicas)]
            for i, w in enumerate(spec.workloads)
        ]
        self.layout: Layout = build_layout(spec, self.pods_by_wl)
        self.model = TrafficModel(self.layout, self.cfg, np.random.default_rng(seed), self.t0)
        self._misbehaviour: dict[int, tuple[Misbehaviour, float]] = {}
        self._server: MetricsServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- pods ----------------------------------------------------------------------------

    def _new_pod(self, wl: int, ordinal: int, fresh: bool) -> Pod:
        now = self.now if fresh else self.t0
        pod = self._factory.new_pod(wl, started_at=now, ordinal=ordinal)
        life = self.cfg.cert_lifetime_seconds * self.cfg.cert_refresh_fraction
        if fresh:
            pod.cert_issued_at = now
        else:  # proxies that have been running for a while before the mesh started
            pod.started_at = self.t0 - self._ages.uniform(3600.0, 3 * 86400.0)
            pod.cert_issued_at = self.t0 - self._ages.uniform(0.0, life)
        return pod

    @property
    def pods(self) -> list[PodInfo]:
        out = []
        for pods in self.pods_by_wl:
            for i, p in enumerate(pods):
                out.append(
                    PodInfo(
                        p.uid, p.namespace, p.workload, p.kind, p.name, i, p.meshed, p.version.name
                    )
                )
        return out

    def _find(self, pod: str | int | PodInfo | ScrapeTarget) -> Pod:
        for pods in self.pods_by_wl:
            for p in pods:
                if isinstance(pod, int) and p.uid == pod:
                    return p
                if isinstance(pod, str) and p.name == pod:
                    return p
                if isinstance(pod, PodInfo) and p.uid == pod.uid:
                    return p
                if isinstance(pod, ScrapeTarget) and p.name == pod.pod:
                    return p
        raise KeyError(f"no such pod: {pod!r}")

    def _rebuild(self) -> None:
        self.layout = build_layout(self.spec, self.pods_by_wl)
        self.model.rebuild(self.layout, self.now)
        self.model.apply_modifiers(self.schedule.modifiers(self.layout, self.now))

    # -- time ----------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Simulated unix time: mesh start plus whole ticks."""
        return self.t0 + self.ticks * self.cfg.tick_seconds

    @property
    def elapsed(self) -> float:
        return self.ticks * self.cfg.tick_seconds

    def _step(self) -> None:
        t = self.now
        if self.schedule.update(t) or self.schedule.continuous:
            self.model.apply_modifiers(self.schedule.modifiers(self.layout, t))
        self.model.step(t)
        self.ticks += 1

    def advance(self, seconds: float) -> None:
        """Run the ticks covering ``seconds`` of simulated time, without sleeping.

        Meant for ``realtime=False`` meshes (tests, harnesses); on a realtime
        mesh it moves simulated time ahead of the clock, which then waits.
        """
        dt = self.cfg.tick_seconds
        total = seconds + self._frac
        n = math.floor(total / dt + 1e-9)
        self._frac = max(0.0, total - n * dt)
        for _ in range(n):
            self._step()

    async def _follow_clock(self) -> None:
        dt = self.cfg.tick_seconds
        while True:
            due = math.floor((self.clock() - self.t0) / dt)
            batch = 0
            while self.ticks < due and batch < _MAX_BATCH:
                self._step()
                batch += 1
            if self.ticks < due:
                await asyncio.sleep(0)
                continue
            wait = self.t0 + (self.ticks + 1) * dt - self.clock()
            await asyncio.sleep(min(max(wait, 0.0), dt))

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.serve_http and self._server is None:
            self._server = MetricsServer(self._render_uid, self._behaviour_of, self.host)
            await self._server.start()
            for p in self._all_pods():
                if p.meshed:
                    await self._server.add(p.uid)
        if self.realtime and self._task is None:
            self._task = asyncio.create_task(self._follow_clock(), name="meshwatch-sim-clock")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            await self._server.close()
        self.schedule.close(self.now)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- reading -------------------------------------------------------------------------

    def _all_pods(self) -> list[Pod]:
        return [p for pods in self.pods_by_wl for p in pods]

    def _render_uid(self, uid: int) -> str:
        return self.model.render(uid)

    def render(self, pod: str | int | PodInfo | ScrapeTarget) -> str:
        """The pod's ``/metrics`` body as its proxy would serve it now."""
        p = self._find(pod)
        if not p.meshed:
            raise KeyError(f"pod {p.name} has no proxy")
        return self.model.render(p.uid)

    def render_bytes(self, pod: str | int | PodInfo | ScrapeTarget, gzipped: bool = False) -> bytes:
        body = self.render(pod).encode()
        return gzip.compress(body, compresslevel=1) if gzipped else body

    @property
    def targets(self) -> list[ScrapeTarget]:
        """Every meshed pod with a listener, as the collector should scrape it."""
        if self._server is None:
            raise RuntimeError("the mesh serves no HTTP yet: use 'async with' or start()")
        out = []
        for p in self._all_pods():
            port = self._server.port_of(p.uid)
            if port is not None:
                out.append(
                    ScrapeTarget(
                        f"http://{self.host}:{port}/metrics",
                        p.namespace,
                        p.workload,
                        p.kind,
                        p.name,
                        p.version.name,
                    )
                )
        return out

    @property
    def ground_truth(self) -> list[dict[str, Any]]:
        return list(self.schedule.records)

    # -- misbehaviour, restarts, scaling ---------------------------------------------------

    def _behaviour_of(self, uid: int) -> tuple[Misbehaviour, float]:
        return self._misbehaviour.get(uid, ("ok", 0.0))

    def misbehave(
        self, pod: str | int | PodInfo | ScrapeTarget, mode: Misbehaviour, delay: float = 5.0
    ) -> None:
        """Make one pod's ``/metrics`` hang, fail with 500, return garbage, or answer late."""
        p = self._find(pod)
        if mode == "ok":
            self._misbehaviour.pop(p.uid, None)
        else:
            self._misbehaviour[p.uid] = (mode, delay)

    def restart_pod(self, pod: str | int | PodInfo | ScrapeTarget, *, rename: bool = False) -> str:
        """Restart a proxy: counters back to zero; ``rename`` makes it a replacement pod.

        Either way the proxy starts afresh at the current simulated time (new
        ``process_start_time_seconds``, certificate issued now). With ``rename``
        the pod is replaced by a new one (new uid, IP and, outside StatefulSets,
        name) that serves on the old pod's listener, as a scrape target behind a
        reused address would; callers drop their series to the old pod.
        """
        p = self._find(pod)
        now = self.now
        if not rename:
            p.started_at = p.cert_issued_at = now
            self.model.reset_pod(self.layout.pod_index(p.uid), now)
            return p.name
        siblings = self.pods_by_wl[p.wl]
        slot = next(i for i, q in enumerate(siblings) if q is p)
        new = self._factory.replacement(p, started_at=now, ordinal=slot)
        new.cert_issued_at = now
        siblings[slot] = new
        behaviour = self._misbehaviour.pop(p.uid, None)
        if behaviour:
            self._misbehaviour[new.uid] = behaviour
        if self._server is not None and self._server.port_of(p.uid) is not None:
            self._server.rebind(p.uid, new.uid)
        self._rebuild()
        return new.name

    async def scale(self, namespace: str, workload: str, replicas: int) -> list[str]:
        """Add or remove pods of a workload (newest first out); returns the pod names now."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        w = self.spec.workload(namespace, workload)
        wl = self.spec.workloads.index(w)
        pods = self.pods_by_wl[wl]
        added: list[Pod] = []
        removed: list[Pod] = []
        while len(pods) < replicas:
            pod = self._new_pod(wl, ordinal=len(pods), fresh=True)
            pods.append(pod)
            added.append(pod)
        while len(pods) > replicas:
            removed.append(pods.pop())
        if added or removed:
            self._rebuild()
        if self._server is not None:
            for p in removed:
                await self._server.remove(p.uid)
            for p in added:
                if p.meshed:
                    await self._server.add(p.uid)
        for p in removed:
            self._misbehaviour.pop(p.uid, None)
        return [p.name for p in pods]
