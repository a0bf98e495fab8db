"""Configuration models of the alerter's policy: grouping, routes, silences, limits.

They live here rather than in ``pipeline.config`` to keep that module's
alerter section a few lines long; ``AlerterConfig`` imports them. Only
pydantic and the matcher parser are imported, so there is no cycle with the
config module.

Timers left at ``null`` follow the detection window (``window.seconds``):
a finding can change at most once per window, so batching changes for one
window and damping flaps over a few windows fits a 10 s production window
and the 1 s windows of ``meshwatch demo`` alike.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from pipeline.alert.matchers import LABELS, MatcherError, parse_all

#: ``group_by: ["..."]`` groups by every label: one group per incident.
EVERY_LABEL = "..."
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_matchers(v: list[str]) -> list[str]:
    try:
        parse_all(v)
    except MatcherError as exc:
        raise ValueError(str(exc)) from None
    return v


def _check_group_by(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    if EVERY_LABEL in v and len(v) > 1:
        raise ValueError(f"{EVERY_LABEL!r} groups by every label and stands alone")
    unknown = [name for name in v if name != EVERY_LABEL and name not in LABELS]
    if unknown:
        raise ValueError(f"unknown labels {unknown}; known: {', '.join(LABELS)}")
    return v


class GroupingConfig(_Section):
    """Alertmanager's aggregation groups and timers (reference §3.2), per sink."""

    group_by: list[str] = Field(
        default_factory=lambda: ["namespace", "workload_kind", "workload"],
        description='Labels that make a group; ["..."] means one group per incident.',
    )
    group_wait_seconds: float = Field(
        1.0, ge=0, description="Delay before a new group's first notification."
    )
    group_interval_seconds: float | None = Field(
        None, ge=0, description="Minimum gap between notifications of a group; null: one window."
    )
    repeat_interval_seconds: float = Field(
        4 * 3600.0, gt=0, description="Re-notify a group still firing after this long."
    )
    max_group_size: int = Field(
        50, ge=1, description="Members per notification; larger groups are split."
    )

    _group_by = field_validator("group_by")(_check_group_by)


class RouteConfig(_Section):
    """One routing rule: incidents matching every matcher go to ``sinks``.

    Rules are tried in order; the first match wins unless it says
    ``continue: true``. An incident reaches each sink once, through the first
    matching rule that names it.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = ""
    match: list[str] = Field(
        default_factory=list, description='e.g. ["namespace=shop", "severity=~\\"critical\\""]'
    )
    sinks: list[str] = Field(min_length=1)
    continue_: bool = Field(False, alias="continue")
    group_by: list[str] | None = None
    group_wait_seconds: float | None = Field(None, ge=0)
    group_interval_seconds: float | None = Field(None, ge=0)
    repeat_interval_seconds: float | None = Field(None, gt=0)

    _match = field_validator("match")(_check_matchers)
    _group_by = field_validator("group_by")(_check_group_by)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Print ``continue`` (what one writes), not the Python field name."""
        data: dict[str, Any] = handler(self)
        if "continue_" in data:
            data["continue"] = data.pop("continue_")
        return data


class MaintenanceWindow(_Section):
    """A silence written in the configuration: once (``starts_at``–``ends_at``) or weekly.

    Weekly windows name ``weekdays`` and a ``start``–``end`` time of day in
    ``timezone``; an ``end`` at or before ``start`` runs past midnight.
    """

    name: str = Field(min_length=1)
    match: list[str] = Field(default_factory=list, description="Empty: every incident.")
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=list
    )
    start: time | None = None
    end: time | None = None
    timezone: str = "UTC"

    _match = field_validator("match")(_check_matchers)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> MaintenanceWindow:
        once = self.starts_at is not None or self.ends_at is not None
        weekly = bool(self.weekdays) or self.start is not None or self.end is not None
        if once == weekly:
            raise ValueError("give either starts_at/ends_at or weekdays/start/end")
        if once:
            if self.starts_at is None or self.ends_at is None:
                raise ValueError("a one-off window needs both starts_at and ends_at")
            if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
                raise ValueError("starts_at and ends_at need a UTC offset (e.g. Z)")
            if self.ends_at <= self.starts_at:
                raise ValueError("ends_at must be after starts_at")
        elif not self.weekdays or self.start is None or self.end is None:
            raise ValueError("a weekly window needs weekdays, start and end")
        return self


class RateLimitConfig(_Section):
    """A token bucket: ``per_second`` sustained, ``burst`` at once."""

    per_second: float = Field(gt=0)
    burst: int = Field(1, ge=1)


class OutboxConfig(_Section):
    """Notifications waiting for a destination, kept on the incidents topic."""

    max_age_seconds: float = Field(
        24 * 3600.0, gt=0, description="Dead-letter a notification undelivered for this long."
    )
    max_pending_per_sink: int = Field(
        10_000, ge=1, description="Beyond this, new notifications for that sink are dead-lettered."
    )
