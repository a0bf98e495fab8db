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
