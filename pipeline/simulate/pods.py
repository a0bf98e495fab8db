"""Pod identities: names, IPs and load weights, reproducible under a seed.

Pods are the unit that appears, restarts and disappears, so their identity
is kept apart from the layout (which is rebuilt around them). ``uid`` is
never reused, which makes it a safe key for carrying counters across a
layout rebuild.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from .topology import MeshSpec, WorkloadSpec
from .versions import ProxyVersion

_ALNUM = string.ascii_lowercase + string.digits
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names


@dataclass
class Pod:
    uid: int
    wl: int
    namespace: str
    workload: str
    kind: str
    name: str
    ip: str
    template_hash: str | None
    version: ProxyVersion
    weight: float
    meshed: bool
    port: int
    started_at: float = 0.0
    cert_issued_at: float = 0.0


class PodFactory:
    """Hands out pods with Kubernetes-looking names and unique pod IPs."""

    def __init__(self, spec: MeshSpec, seed: int) -> None:
        self.spec = spec
        self._rnd = random.Random(f"pods:{seed}")
        self._next_uid = 0
        self._hashes: dict[int, str] = {}

    def _suffix(self, n: int) -> str:
        return "".join(self._rnd.choice(_HASH_ALPHABET) for _ in range(n))

    def template_hash(self, wl: int) -> str:
        if wl not in self._hashes:
            self._hashes[wl] = "".join(self._rnd.choice(_ALNUM[:16]) for _ in range(10))
        return self._hashes[wl]

    def new_pod(self, wl: int, started_at: float, ordinal: int = 0) -> Pod:
        w: WorkloadSpec = self.spec.workloads[wl]
        uid = self._next_uid
        self._next_uid += 1
        thash: str | None = None
        if w.kind == "statefulset":
            name = f"{w.name}-{ordinal}"
        elif w.kind == "daemonset":
            name = f"{w.name}-{self._suffix(5)}"
        else:
            thash = self.template_hash(wl)
            name = f"{w.name}-{thash}-{self._suffix(5)}"
        ip = f"10.{42 + uid // 64516}.{(uid // 254) % 254 + 1}.{uid % 254 + 1}"
        return Pod(
            uid=uid,
            wl=wl,
            namespace=w.namespace,
            workload=w.name,
            kind=w.kind,
            name=name,
            ip=ip,
            template_hash=thash,
            version=ProxyVersion.parse(self.spec.version_of(w)),
            weight=self._rnd.uniform(0.85, 1.15),
            meshed=w.meshed,
            port=w.port,
            started_at=started_at,
        )

    def replacement(self, pod: Pod, started_at: float, ordinal: int) -> Pod:
        """A new pod taking ``pod``'s slot in its workload: fresh uid, IP and name.

        The old :class:`Pod` is left untouched, so a layout built before the
        replacement still describes the old pod (uid included) and nothing of
        its state can leak into the new one. StatefulSet pods keep their
        ordinal name, as Kubernetes recreates them under the same name.
        """
        fresh = self.new_pod(pod.wl, started_at, ordinal=ordinal)
        if pod.kind == "statefulset":
            fresh.name = pod.name
        return fresh
