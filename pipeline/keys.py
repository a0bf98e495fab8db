"""Route and workload keys: the stable names every stage agrees on.

A workload key (``prod/deploy/web``) is the Kafka key of a GoldenBatch, so all
of a workload's routes land on one partition. A route key
(``prod/deploy/web/inbound/GET /api/users``) names one route in one
direction; the workload key is always its prefix. Route names may contain
``/`` (HTTP paths, authorities with ports), so a route key is split on the
first four separators only.
"""

from __future__ import annotations

from typing import NamedTuple

#: Route name of the whole-workload aggregate in one direction (from
#: ``response_total``, which carries the TLS labels the route families lack).
ALL_ROUTES = "*"

KIND_SHORT = {
    "deployment": "deploy",
    "statefulset": "sts",
    "daemonset": "ds",
    "replicaset": "rs",
    "replicationcontroller": "rc",
    "job": "job",
    "k8s_job": "job",
    "cronjob": "cronjob",
    "pod": "pod",
}


class RouteKeyParts(NamedTuple):
    namespace: str
    kind: str
    workload: str
    direction: str
    route: str


def short_kind(kind: str) -> str:
    """``deployment`` → ``deploy``; already-short kinds pass through."""
    return KIND_SHORT.get(kind.lower(), kind.lower())


def workload_key(namespace: str, kind: str, workload: str) -> str:
    return f"{namespace}/{short_kind(kind)}/{workload}"


def route_key(workload_key: str, direction: str, route: str) -> str:
    return f"{workload_key}/{direction}/{route}"


def split_route_key(key: str) -> RouteKeyParts:
    parts = key.split("/", 4)
    if len(parts) != 5 or not all(parts[:4]):
        raise ValueError(f"not a route key (namespace/kind/workload/direction/route): {key!r}")
    return RouteKeyParts(*parts)


def parent_authority(name: str, namespace: str, port: str) -> str:
    """``{name}.{namespace}:{port}`` of a policy parent or backend (a Service, an
    EgressNetwork); the namespace is left out when empty (inbound Servers carry none),
    the port likewise."""
    host = f"{name}.{namespace}" if namespace else name
    return f"{host}:{port}" if port else host


def policy_route(
    parent: str, route_kind: str, route_name: str, route_namespace: str = "", parent_ns: str = ""
) -> str:
    """Route name of a Gateway-API / policy route family series, unique per parent.

    ``{parent} {route}``, where ``{route}`` is the HTTPRoute/GRPCRoute name, prefixed
    with ``{route_namespace}/`` when the route lives outside the parent's namespace, or
    ``[{route_name}]`` for a route the policy controller synthesized
    (``route_kind="default"``: ``[http]``, ``[grpc]``, ``[http-egress-allow]``, ...).
    Brackets cannot occur in a Kubernetes name, so the two never collide.
    """
    if route_kind == "default":
        return f"{parent} [{route_name}]"
    if route_namespace and route_namespace != parent_ns:
        return f"{parent} {route_namespace}/{route_name}"
    return f"{parent} {route_name}"


def backend_route(route: str, backend: str) -> str:
    """A route's share sent to one backend of a traffic split: ``{route} -> {backend}``."""
    return f"{route} -> {backend}"
