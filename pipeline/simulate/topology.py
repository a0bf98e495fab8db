"""The shape of a simulated mesh: workloads, their routes and call edges.

Specs are pydantic models so a hand-written YAML/JSON mesh fails early with a
message naming the bad field, instead of producing a mesh that renders odd
metrics minutes later. Traffic semantics live here too (``expected_rates``)
because callers' outbound and callees' inbound traffic must agree, and that
agreement is a property of the topology, not of the random draws.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.keys import route_key, workload_key

from .versions import parse_minor

WorkloadKind = Literal["deployment", "statefulset", "daemonset"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteSpec(_Spec):
    """One ServiceProfile route served by a workload."""

    name: str = Field(min_length=1, description="rt_route value, e.g. 'GET /api/users'")
    share: float = Field(1.0, gt=0, description="relative weight among the workload's routes")
    base_latency_ms: float = Field(20.0, gt=0, description="median time to first byte")
    latency_sigma: float = Field(0.5, gt=0, le=3, description="lognormal sigma of latency")
    base_error_ratio: float = Field(0.001, ge=0, lt=1, description="share answered with 5xx")
    client_error_ratio: float = Field(
        0.0, ge=0, lt=1, description="share answered 4xx (success per Linkerd rules)"
    )

    @model_validator(mode="after")
    def _ratios_fit(self) -> Self:
        if self.base_error_ratio + self.client_error_ratio >= 1:
            raise ValueError("base_error_ratio + client_error_ratio must stay below 1")
        return self


class CallSpec(_Spec):
    """A dependency: the caller sends ``share`` requests to ``target`` per inbound request."""

    target: str = Field(description="workload name, or 'namespace/name' across namespaces")
    share: float = Field(gt=0, description="outbound calls per inbound request of the caller")
    authority: str | None = Field(
        None, description="default: <name>.<namespace>.svc.<cluster_domain>:<port>"
    )


class WorkloadSpec(_Spec):
    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    kind: WorkloadKind = "deployment"
    replicas: int = Field(2, ge=1, le=1000)
    base_rps: float = Field(
        0.0, ge=0, description="traffic entering from outside the mesh, at the daily peak"
    )
    external_tls: bool = Field(
        True, description="external traffic arrives through a meshed ingress (mTLS)"
    )
    routes: list[RouteSpec] = Field(min_length=1)
    calls: list[CallSpec] = Field(default_factory=list)
    meshed: bool = True
    proxy_version: str | None = None
    port: int = Field(8080, ge=1, le=65535)
    service_account: str | None = None

    @field_validator("proxy_version")
    @classmethod
    def _version_known(cls, v: str | None) -> str | None:
        if v is not None:
            parse_minor(v)
        return v

    @model_validator(mode="after")
    def _unique_routes(self) -> Self:
        names = [r.name for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"workload {self.namespace}/{self.name}: duplicate routes {dupes}")
        return self

    @property
    def key(self) -> str:
        return workload_key(self.namespace, self.kind, self.name)

    @property
    def sa(self) -> str:
        return self.service_account or self.name

    def route_key(self, direction: Literal["inbound", "outbound"], route: str) -> str:
        return route_key(self.key, direction, route)


class MeshSpec(_Spec):
    cluster: str = "sim"
    cluster_domain: str = "cluster.local"
    proxy_version: str = "2.18"
    workloads: list[WorkloadSpec] = Field(min_length=1)

    @field_validator("proxy_version")
    @classmethod
    def _version_known(cls, v: str) -> str:
        parse_minor(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        seen: set[tuple[str, str]] = set()
        for w in self.workloads:
            if (w.namespace, w.name) in seen:
                raise ValueError(f"workload {w.namespace}/{w.name} is defined twice")
            seen.add((w.namespace, w.name))
        for w in self.workloads:
            for c in w.calls:
                t = self._resolve(w, c.target)
                if t is w:
                    raise ValueError(f"workload {w.namespace}/{w.name} calls itself")
        cycle = self._find_cycle()
        if cycle:
            raise ValueError("call graph must be acyclic; cycle: " + " -> ".join(cycle))
        return self

    def _resolve(self, caller: WorkloadSpec, target: str) -> WorkloadSpec:
        if "/" in target:
            ns, _, name = target.partition("/")
            hits = [w for w in self.workloads if w.namespace == ns and w.name == name]
        else:
            hits = [
                w for w in self.workloads if w.name == target and w.namespace == caller.namespace
            ]
            if not hits:
                hits = [w for w in self.workloads if w.name == target]
        if len(hits) != 1:
            what = "unknown" if not hits else "ambiguous (use namespace/name)"
            raise ValueError(f"{caller.namespace}/{caller.name} calls {target!r}: {what}")
        return hits[0]

    def _find_cycle(self) -> list[str]:
        index = {id(w): i for i, w in enumerate(self.workloads)}
        state = [0] * len(self.workloads)  # 0 new, 1 on stack, 2 done
        stack: list[int] = []

        def visit(i: int) -> list[str]:
            state[i] = 1
            stack.append(i)
            for c in self.workloads[i].calls:
                j = index[id(self._resolve(self.workloads[i], c.target))]
                if state[j] == 1:
                    loop = [*stack[stack.index(j) :], j]
                    return [f"{self.workloads[k].namespace}/{self.workloads[k].name}" for k in loop]
                if state[j] == 0 and (found := visit(j)):
                    return found
            stack.pop()
            state[i] = 2
            return []

        for i in range(len(self.workloads)):
            if state[i] == 0 and (found := visit(i)):
                return found
        return []

    # -- queries used by the simulator -------------------------------------------------

    def workload(self, namespace: str, name: str) -> WorkloadSpec:
        for w in self.workloads:
            if w.namespace == namespace and w.name == name:
                return w
        raise KeyError(f"no workload {namespace}/{name} in mesh")

    def version_of(self, w: WorkloadSpec) -> str:
        return w.proxy_version or self.proxy_version

    def authority(self, target: WorkloadSpec) -> str:
        return f"{target.name}.{target.namespace}.svc.{self.cluster_domain}:{target.port}"

    def edges(self) -> Iterator[tuple[WorkloadSpec, CallSpec, WorkloadSpec, str]]:
        """Every call edge as (caller, call, target, authority), in spec order."""
        for w in self.workloads:
            for c in w.calls:
                t = self._resolve(w, c.target)
                yield w, c, t, c.authority or self.authority(t)

    def expected_rates(self) -> dict[tuple[str, str], float]:
        """Peak inbound rps per workload: external traffic plus what callers send.

        Defining ``base_rps`` as external traffic (rather than a total) keeps a
        caller's outbound rate and the callee's inbound rate equal by
        construction, which is what lets a detector reconcile both sides.
        """
        order = self._topological()
        rate = {(w.namespace, w.name): w.base_rps for w in self.workloads}
        for w in order:
            for c in w.calls:
                t = self._resolve(w, c.target)
                rate[(t.namespace, t.name)] += rate[(w.namespace, w.name)] * c.share
        return rate

    def _topological(self) -> list[WorkloadSpec]:
        indeg = {id(w): 0 for w in self.workloads}
        for _, _, t, _ in self.edges():
            indeg[id(t)] += 1
        ready = [w for w in self.workloads if indeg[id(w)] == 0]
        out: list[WorkloadSpec] = []
        while ready:
            w = ready.pop(0)
            out.append(w)
            for c in w.calls:
                t = self._resolve(w, c.target)
                indeg[id(t)] -= 1
                if indeg[id(t)] == 0:
                    ready.append(t)
        return out


# -- ready-made meshes ----------------------------------------------------------------


def _r(name: str, share: float, p50: float, sigma: float = 0.5, err: float = 0.001,
       c4xx: float = 0.0) -> RouteSpec:  # fmt: skip
    return RouteSpec(
        name=name,
        share=share,
        base_latency_ms=p50,
        latency_sigma=sigma,
        base_error_ratio=err,
        client_error_ratio=c4xx,
    )


def default_demo_mesh(proxy_version: str = "2.18") -> MeshSpec:
    """A small shop: six workloads in two namespaces, 21 routes, realistic fan-out."""
    shop, pay = "shop", "payments"
    return MeshSpec(
        cluster="demo",
        proxy_version=proxy_version,
        workloads=[
            WorkloadSpec(
                namespace=shop,
                name="web",
                replicas=2,
                base_rps=40.0,
                routes=[
                    _r("GET /", 4, 25, 0.4),
                    _r("GET /products", 3, 40, 0.45),
                    _r("GET /products/{id}", 5, 30, 0.45, c4xx=0.02),
                    _r("GET /cart", 2, 35, 0.5),
                    _r("POST /cart/items", 1, 45, 0.5, c4xx=0.01),
                    _r("POST /checkout", 0.3, 220, 0.6, err=0.003),
                    _r("GET /static/{path}", 3, 4, 0.6, c4xx=0.01),
                ],
                calls=[
                    CallSpec(target="catalog", share=1.2),
                    CallSpec(target="cart", share=0.4),
                    CallSpec(target="checkout", share=0.05),
                ],
            ),
            WorkloadSpec(
                namespace=shop,
                name="catalog",
                replicas=2,
                base_rps=2.0,
                routes=[
                    _r("GET /api/products", 3, 12, 0.5),
                    _r("GET /api/products/{id}", 5, 8, 0.45, c4xx=0.02),
                    _r("GET /api/categories", 1, 5, 0.4),
                    _r("GET /api/search", 1, 35, 0.7),
                ],
            ),
            WorkloadSpec(
                namespace=shop,
                name="cart",
                replicas=2,
                routes=[
                    _r("GET /api/cart", 3, 10, 0.5),
                    _r("POST /api/cart/items", 2, 18, 0.5, c4xx=0.01),
                    _r("DELETE /api/cart/items/{id}", 0.5, 12, 0.5),
                ],
                calls=[CallSpec(target="catalog", share=0.5)],
            ),
            WorkloadSpec(
                namespace=shop,
                name="checkout",
                replicas=2,
                routes=[
                    _r("POST /api/checkout", 1, 150, 0.5, err=0.002),
                    _r("GET /api/orders/{id}", 1, 20, 0.5),
                ],
                calls=[
                    CallSpec(target="cart", share=1.0),
                    CallSpec(target="payments/api", share=0.5),
                ],
            ),
            WorkloadSpec(
                namespace=pay,
                name="api",
                replicas=2,
                base_rps=3.0,
                routes=[
                    _r("POST /v1/charges", 4, 90, 0.5, err=0.002),
                    _r("GET /v1/charges/{id}", 2, 15, 0.4),
                    _r("POST /v1/refunds", 0.2, 110, 0.5),
                ],
                calls=[CallSpec(target="ledger", share=1.5)],
            ),
            WorkloadSpec(
                namespace=pay,
                name="ledger",
                kind="statefulset",
                replicas=3,
                routes=[
                    _r("POST /ledger/entries", 2, 14, 0.45),
                    _r("GET /ledger/balance/{account}", 1, 6, 0.4),
                ],
            ),
        ],
    )


_NOUNS = [
    "users",
    "orders",
    "inventory",
    "search",
    "catalog",
    "cart",
    "payments",
    "ledger",
    "shipping",
    "pricing",
    "reviews",
    "accounts",
    "auth",
    "sessions",
    "profiles",
    "recommendations",
    "media",
    "billing",
    "invoices",
    "notifications",
    "emails",
    "quotes",
    "stock",
    "warehouse",
    "returns",
    "coupons",
    "ratings",
    "feeds",
    "events",
    "audit",
]
_VERBS = (("GET", 5), ("POST", 2), ("PUT", 1), ("DELETE", 0.5))


def generate_mesh(
    n_workloads: int,
    routes_per_workload: int,
    seed: int,
    *,
    n_namespaces: int = 4,
    replicas: tuple[int, int] = (1, 3),
    calls_per_workload: tuple[int, int] = (0, 2),
    entry_share: float = 0.1,
    proxy_version: str = "2.18",
    version_mix: Sequence[str] = (),
) -> MeshSpec:
    """A random layered mesh for scale and quality runs.

    Calls only go to workloads later in a random order, so the graph is
    acyclic and every rate is finite; a tenth of the workloads take external
    traffic and the rest are fed by their callers. ``version_mix`` assigns
    proxy versions round-robin to model a mesh mid-upgrade.
    """
    if n_workloads < 1 or routes_per_workload < 1:
        raise ValueError("need at least one workload and one route per workload")
    rnd = random.Random(seed)
    namespaces = [f"ns-{i}" for i in range(max(1, n_namespaces))]
    names = [f"{_NOUNS[i % len(_NOUNS)]}-{i // len(_NOUNS)}" for i in range(n_workloads)]
    n_entry = max(1, round(n_workloads * entry_share))
    specs: list[WorkloadSpec] = []
    for i, name in enumerate(names):
        routes: list[RouteSpec] = []
        used: set[str] = set()
        for j in range(routes_per_workload):
            rname = ""
            while not rname or rname in used:
                verb = rnd.choices([v for v, _ in _VERBS], weights=[w for _, w in _VERBS])[0]
                res = _NOUNS[rnd.randrange(len(_NOUNS))]
                rname = f"{verb} /api/v{1 + j % 3}/{res}"
                rname += "/{id}" if rnd.random() < 0.5 else ""
            used.add(rname)
            routes.append(
                _r(
                    rname,
                    share=rnd.uniform(0.2, 3.0),
                    p50=round(rnd.lognormvariate(3.0, 0.8), 2),
                    sigma=round(rnd.uniform(0.3, 0.8), 2),
                    err=round(rnd.uniform(0.0, 0.004), 5),
                    c4xx=0.01 if rnd.random() < 0.3 else 0.0,
                )
            )
        later = list(range(i + 1, n_workloads))
        k = min(len(later), rnd.randint(*calls_per_workload))
        calls = [
            CallSpec(
                target=f"{namespaces[t % len(namespaces)]}/{names[t]}",
                share=round(rnd.uniform(0.2, 0.9), 3),
            )
            for t in sorted(rnd.sample(later[:50], min(k, len(later[:50]))))
        ]
        specs.append(
            WorkloadSpec(
                namespace=namespaces[i % len(namespaces)],
                name=name,
                kind="statefulset" if rnd.random() < 0.1 else "deployment",
                replicas=rnd.randint(*replicas),
                base_rps=round(rnd.uniform(10, 60) if i < n_entry else rnd.uniform(0.2, 2), 2),
                routes=routes,
                calls=calls,
                proxy_version=version_mix[i % len(version_mix)] if version_mix else None,
            )
        )
    return MeshSpec(cluster=f"gen-{seed}", proxy_version=proxy_version, workloads=specs)
