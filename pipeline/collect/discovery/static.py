"""The fixed ``collector.targets`` list."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.collect.discovery import Discovery
from pipeline.collect.targets import Target
from pipeline.config import StaticTarget


class StaticTargets(Discovery):
    kind = "static"

    def __init__(self, targets: Sequence[StaticTarget]) -> None:
        super().__init__()
        self._publish(
            Target(t.url, t.namespace, t.workload, t.kind, t.pod or t.url) for t in targets
        )
