"""The models topic's one message: "production is now version X".

The registry's pointer file is the truth; an event only says "look again".
A detector that reads an old or repeated event therefore does no harm (it
re-reads the pointer and finds nothing new), and the topic can be compacted
to its last event (key ``production``).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import MeshwatchConfig
from pipeline.kafka.clients import make_producer
from pipeline.schema import encode

EVENT_KEY = b"production"


class ModelEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["meshwatch.model-event/v1"] = Field("meshwatch.model-event/v1", alias="schema")
    action: Literal["promote", "rollback", "publish"]
    version: str
    previous: str | None = None
    registry: str = Field(description="Where the publisher's registry lives (for the logs).")
    at: float = Field(default_factory=time.time)


def publish_event(cfg: MeshwatchConfig, event: ModelEvent, timeout: float = 10.0) -> None:
    """Send one event to the models topic and wait until the broker has it."""
    producer = make_producer(cfg.kafka, "models")
    try:
        producer.send(cfg.topics.models, key=EVENT_KEY, value=encode(event)).get(timeout=timeout)
        producer.flush(timeout=timeout)
    finally:
        producer.close()


__all__ = ["EVENT_KEY", "ModelEvent", "publish_event"]
