"""Creating meshwatch's topics with their partition counts and policies."""

from __future__ import annotations

import logging

from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from pipeline.config import TOPIC_ROLES, MeshwatchConfig
from pipeline.kafka.clients import make_admin

log = logging.getLogger(__name__)


def topic_configs(cfg: MeshwatchConfig, role: str) -> dict[str, str]:
    spec = cfg.topics.specs[role]
    out: dict[str, str] = {}
    if spec.compacted:
        out["cleanup.policy"] = "compact"
    if spec.retention_ms is not None:
        out["retention.ms"] = str(spec.retention_ms)
    return out


def ensure_topics(cfg: MeshwatchConfig) -> list[str]:
    """Create any missing topic; existing ones are left as they are.

    Returns the names created. Compacted roles (state, incidents, models) are
    created compacted, which matters on a real Kafka even though the embedded
    broker accepts the setting without enforcing it.
    """
    admin = make_admin(cfg.kafka)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(
                name=cfg.topics.name(role),
                num_partitions=cfg.topics.specs[role].partitions,
                replication_factor=cfg.topics.replication_factor,
                topic_configs=topic_configs(cfg, role),
            )
            for role in TOPIC_ROLES
            if cfg.topics.name(role) not in existing
        ]
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass  # another replica won the race
        if created:
            log.info("created topics %s", created)
        return created
    finally:
        admin.close()
