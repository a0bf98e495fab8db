"""Shared fixtures: the real embedded broker, isolated topics, ../shared."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import MeshwatchConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    env = os.environ.get("MESHWATCH_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if path is None:
        pytest.skip("../shared (fixtures and datasets) is not beside the repository")
    return path


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real Tansu broker for the whole session; yields its bootstrap address."""
    from pipeline.kafka.embedded import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b.bootstrap


@pytest.fixture
def kafka_cfg(broker: str) -> MeshwatchConfig:
    """A config on the session broker with a fresh topic prefix per test."""
    from pipeline.kafka.topics import ensure_topics

    prefix = f"t{uuid.uuid4().hex[:8]}."
    cfg = load_config(
        None,
        {
            "kafka": {
                "bootstrap_servers": [broker],
                "session_timeout_ms": 2000,
                "heartbeat_interval_ms": 500,
                "poll_timeout_ms": 100,
                "linger_ms": 0,
            },
            "topics": {"prefix": prefix},
        },
    )
    ensure_topics(cfg)
    return cfg
