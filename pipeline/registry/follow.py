"""Every running detector follows the registry's production version.

A background thread reads the models topic; on each event it re-reads the
registry's production pointer, loads and verifies that version off the
detector's thread, and *offers* it to the detector's
:class:`~pipeline.detect.scoring.ModelScoring`. The stage adopts it between
two batches, so no batch is scored by two versions and no state is lost (the
baselines are untouched: only the trained layer changes).

An artifact that fails verification is logged with the reason and the
detector keeps the version it has.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from kafka import TopicPartition

from models.registry import ArtifactError, Registry
from pipeline.config import MeshwatchConfig
from pipeline.detect.scoring import ModelScoring
from pipeline.kafka.clients import make_consumer

log = logging.getLogger(__name__)


def registry_for(cfg: MeshwatchConfig) -> Registry:
    return Registry.at(Path(cfg.models.registry_dir))


class ModelFollower:
    """Loads the production model at start and whenever the models topic says so."""

    def __init__(self, cfg: MeshwatchConfig, scoring: ModelScoring) -> None:
        self.cfg = cfg
        self.scoring = scoring
        self.registry = registry_for(cfg)
        self.events = 0
        self.refused: list[str] = []
        self.last_loaded: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)

    def start(self, wait: float = 10.0) -> ModelFollower:
        self._thread.start()
        self._ready.wait(wait)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def refresh(self) -> str | None:
        """Load production (or the shipped default) if it differs from what is used."""
        try:
            wanted = self.registry.production()
            if wanted is None or wanted == self.last_loaded:
                return None
            if wanted == self.scoring.version:  # e.g. promoted, then rolled back at once
                self.scoring.cancel()
                self.last_loaded = wanted
                return None
            loaded = self.registry.load(wanted)
        except (ArtifactError, OSError, ValueError) as exc:
            self.refused.append(str(exc))
            log.error("model not loaded, keeping %s: %s", self.scoring.version, exc)
            return None
        self.last_loaded = loaded.version
        self.scoring.offer(loaded)
        log.info("model %s loaded; the detector switches at its next batch", loaded.version)
        return loaded.version

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # the broker went away: keep the model, try again
                log.exception("model follower: reconnecting in 2 s")
                self._ready.set()
                self._stop.wait(2.0)

    def _follow(self) -> None:
        consumer = make_consumer(self.cfg.kafka, "models", group_id=None)
        try:
            tp = TopicPartition(self.cfg.topics.models, 0)
            consumer.assign([tp])
            consumer.seek_to_end(tp)
            consumer.position(tp)
            # after positioning: an event sent from now on is seen, and anything
            # promoted before is picked up here
            self.refresh()
            self._ready.set()
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=200)
                n = sum(len(v) for v in polled.values())
                if n:
                    self.events += n
                    self.refresh()
        finally:
            consumer.close(autocommit=False)


def follow_models(cfg: MeshwatchConfig, scoring: ModelScoring) -> ModelFollower:
    """Start following (returns once the production model has been looked up)."""
    from pipeline.kafka.topics import ensure_topics

    ensure_topics(cfg)  # the models topic must exist before it can be followed
    scoring.combine = cfg.models.combine
    scoring.prefilter_score = cfg.models.prefilter_score
    return ModelFollower(cfg, scoring).start()


__all__ = ["ModelFollower", "follow_models", "registry_for"]
