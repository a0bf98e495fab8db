"""What the collector scrapes: a proxy admin URL plus the workload it serves."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.keys import workload_key


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    namespace: str
    workload: str
    kind: str
    pod: str

    @property
    def workload_key(self) -> str:
        return workload_key(self.namespace, self.kind, self.workload)
