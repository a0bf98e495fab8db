"""``target_down``: a workload whose proxies stop answering the collector.

The collector lists, per workload and window, the pods it could not scrape
(``GoldenBatch.pods_down``). When a workload has pods down for
``target_down_windows`` windows in a row, that is a finding of its own
(kind ``target_down``, on the workload's inbound ``*`` route); it resolves
after ``resolve_after`` windows with every pod answering. The per-workload
state is a few numbers, checkpointed with the routes of its partition.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.detector import MODEL_NAME, MODEL_VERSION
from pipeline.keys import ALL_ROUTES
from pipeline.keys import route_key as make_route_key
from pipeline.schema import Finding, finding_id


@dataclass(slots=True)
class WorkloadTargets:
    down_streak: int = 0
    up_streak: int = 0
    firing: bool = False
    started: float = 0.0

    def dump(self) -> list[float]:
        return [self.down_streak, self.up_streak, float(self.firing), self.started]

    @classmethod
    def load(cls, v: list[float]) -> WorkloadTargets:
        return cls(int(v[0]), int(v[1]), bool(v[2]), float(v[3]))


class TargetDownTracker:
    def __init__(self, fire_after: int, resolve_after: int) -> None:
        self.fire_after = fire_after
        self.resolve_after = resolve_after
        self.workloads: dict[str, WorkloadTargets] = {}

    def step(
        self, workload_key: str, window_end: float, up: tuple[str, ...], down: tuple[str, ...]
    ) -> Finding | None:
        """One window of one workload; the finding it makes, if any."""
        st = self.workloads.get(workload_key)
        if st is None:
            if not down:
                return None  # nothing to remember about a healthy workload
            st = self.workloads[workload_key] = WorkloadTargets()
        if down:
            if st.down_streak == 0:
                st.started = window_end
            st.down_streak += 1
            st.up_streak = 0
            if not st.firing and st.down_streak >= self.fire_after:
                st.firing = True
                return finding(workload_key, window_end, "firing", st.started, up, down)
            return None
        st.down_streak = 0
        st.up_streak += 1
        if st.firing and st.up_streak >= self.resolve_after:
            st.firing = False
            del self.workloads[workload_key]
            return finding(workload_key, window_end, "resolved", st.started, up, down)
        if not st.firing:
            del self.workloads[workload_key]
        return None


def finding(
    workload_key: str,
    window_end: float,
    status: str,
    started: float,
    up: tuple[str, ...],
    down: tuple[str, ...],
) -> Finding:
    namespace, kind, workload = workload_key.split("/", 2)
    key = make_route_key(workload_key, "inbound", ALL_ROUTES)
    n_down, n_all = len(down), len(down) + len(up)
    if status == "resolved":
        text = f"all {n_all} pod(s) answer the collector again"
    elif not up:
        text = f"no pod answers the collector: {n_down} pod(s) down ({', '.join(down[:3])})"
    else:
        text = f"{n_down} of {n_all} pod(s) do not answer the collector ({', '.join(down[:3])})"
    return Finding(
        id=finding_id(key, "target_down", window_end, status),
        route_key=key,
        namespace=namespace,
        workload_kind=kind,
        workload=workload,
        direction="inbound",
        route=ALL_ROUTES,
        kind="target_down",
        status=status,
        severity="critical" if not up else "warning",
        score=1.0 if status == "firing" else 0.0,
        observed=float(n_down),
        expected_low=0.0,
        expected_high=0.0,
        unit="pods",
        window_end=window_end,
        started_at=started or window_end,
        suspect_pod=down[0] if len(down) == 1 else None,
        model=MODEL_NAME,
        model_version=MODEL_VERSION,
        explanation=text,
    )
