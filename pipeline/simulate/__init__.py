"""A simulated Linkerd mesh: loopback HTTP servers that answer ``/metrics`` like linkerd2-proxy.

Used by ``meshwatch demo``, the integration tests, the quality harness and
the scale benchmark; deterministic under a seed and cheap per scrape.
"""

from .faults import (
    EFFECTS,
    FaultSpec,
    FaultTarget,
    Scenario,
    ScenarioError,
    load_scenario,
)
from .mesh import PodInfo, ScrapeTarget, SimulatedMesh
from .topology import (
    CallSpec,
    MeshSpec,
    RouteSpec,
    WorkloadSpec,
    default_demo_mesh,
    generate_mesh,
)
from .traffic import TrafficConfig, daily_shape
from .versions import ProxyVersion

__all__ = [
    "EFFECTS",
    "CallSpec",
    "FaultSpec",
    "FaultTarget",
    "MeshSpec",
    "PodInfo",
    "ProxyVersion",
    "RouteSpec",
    "Scenario",
    "ScenarioError",
    "ScrapeTarget",
    "SimulatedMesh",
    "TrafficConfig",
    "WorkloadSpec",
    "daily_shape",
    "default_demo_mesh",
    "generate_mesh",
    "load_scenario",
]
