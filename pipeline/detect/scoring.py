"""The trained layer's step in the detector: score a batch, join the baselines.

Runs after :meth:`models.detector.RouteDetector.process` on the same batch
(the engine calls :meth:`ModelScoring.apply`). Kept out of the detector so
the baselines' scoring and this combination change independently.

**Combination** (``models.combine``):

- ``max`` (default): each judged window's reported score is the larger of the
  baseline's and the model's calibrated score (both mean "share of normal
  windows scoring lower"). Fire/resolve decisions stay the baselines', so by
  construction a model cannot add false alerts or lose detections; what it
  changes is the score findings, points and backtests report.
- ``off``: the model is not consulted.

**Prefilter.** Only windows whose baseline score for a kind reaches
``prefilter_score`` are given to the model: the vast majority of windows are
plainly normal, and an ensemble's ``predict`` per window would otherwise cost
more than the whole baseline step.

**Per-route parameters.** A model with per-route offsets (see
:mod:`models.learned`) needs each scored row's parameter row. It is looked
up by route key once per detector row and model (a numpy array indexed by
detector row, extended as routes appear, rebuilt on a model switch); a batch
then costs one fancy-index, never a dictionary lookup per window.

**Switching versions.** A new model is *offered* (from the follower's
thread, say) and *adopted* only by :meth:`adopt`, which the stage calls
between two batches, so one batch is never scored by two versions.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from models.detector import Observations, RouteDetector, Verdicts
from models.features import window_features
from models.learned import LearnedModel
from models.registry import DEFAULT_DIR, ArtifactError, Loaded, load_dir

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def shipped_default() -> Loaded | None:
    """The default artifact shipped with the package, loaded once per process."""
    if not (DEFAULT_DIR / "manifest.json").exists():
        return None
    try:
        return load_dir(DEFAULT_DIR)
    except ArtifactError as exc:
        log.warning("shipped default model not used: %s", exc)
        return None


class ModelScoring:
    """The model a detector uses now, and the one waiting to replace it."""

    def __init__(
        self,
        loaded: Loaded | None = None,
        *,
        combine: str = "max",
        prefilter_score: float = 0.99,
        use_default: bool = True,
    ) -> None:
        self.combine = combine
        self.prefilter_score = prefilter_score
        self.current = (
            loaded if loaded is not None else (shipped_default() if use_default else None)
        )
        self._pending: Loaded | None = None
        self._lock = threading.Lock()
        self.switches = 0
        # parameter row per detector row, for (model, detector) — see _params
        self._param_rows = np.zeros(0, dtype=np.int64)
        self._param_for: tuple[LearnedModel, RouteDetector] | None = None

    @property
    def version(self) -> str | None:
        return self.current.version if self.current is not None else None

    def offer(self, loaded: Loaded) -> None:
        """Queue a verified model; it takes over at the next :meth:`adopt`."""
        with self._lock:
            self._pending = loaded

    def cancel(self) -> None:
        """Drop an offered model that has not been adopted yet."""
        with self._lock:
            self._pending = None

    def adopt(self) -> str | None:
        """Switch to the offered model, if any (between batches); returns the new version."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return None
        self.current = pending
        self.switches += 1
        log.info("detector now scores with model %s", pending.version)
        return pending.version

    def apply(self, det: RouteDetector, obs: Observations, verdicts: Verdicts) -> Verdicts:
        """Fold the model's scores into ``verdicts`` (in place) and return them."""
        current = self.current
        if current is None or self.combine == "off" or verdicts.index.size == 0:
            return verdicts
        model = current.model
        candidates = {
            k: verdicts.kinds[k].judged & (verdicts.kinds[k].score >= self.prefilter_score)
            for k in model.kinds
        }
        if not any(c.any() for c in candidates.values()):
            return verdicts
        positions = np.flatnonzero(np.logical_or.reduce(list(candidates.values())))
        features = window_features(det, obs, verdicts, positions)
        params = None
        if model.offsets is not None:
            params = self._params(model, det)[obs.rows[verdicts.index[positions]]]
        learned = model.score(features, {k: c[positions] for k, c in candidates.items()}, params)
        for k, s in learned.items():
            v = verdicts.kinds[k]
            v.score[positions] = np.maximum(v.score[positions], s)
        return verdicts

    def _params(self, model: LearnedModel, det: RouteDetector) -> npt.NDArray[np.int64]:
        """Each detector row's parameter row in ``model`` (looked up once per route)."""
        held = self._param_for
        if held is None or held[0] is not model or held[1] is not det:
            self._param_rows = np.zeros(0, dtype=np.int64)
            self._param_for = (model, det)
        have = self._param_rows.size
        if have < len(det.keys):
            new = model.param_index(det.keys[have:])
            self._param_rows = np.concatenate([self._param_rows, new])
        return self._param_rows


__all__ = ["ModelScoring", "shipped_default"]
