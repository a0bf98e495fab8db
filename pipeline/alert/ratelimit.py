"""A token bucket per destination, with defaults from each service's documented limits.

Alertmanager has no per-receiver limit (reference §3.5 item 4), so a storm
of findings turns into a storm of 429s. Here every sink gets a bucket:
``per_second`` tokens refill continuously up to ``burst``; each HTTP attempt
(retries included) takes one. A ``Retry-After`` from the service pauses the
bucket, so the next notice to that sink waits too, not only the one refused.

The bucket never sleeps by itself: it says how long until a token is free,
and the caller decides whether that wait fits its time budget.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.alert.settings import RateLimitConfig

#: Defaults per sink ``type`` (reference §1 and §2; §4 "≈1/s for Slack, Teams
#: and Google Chat; ≈2/s for PagerDuty per key; ≈1/s for GitHub writes").
#: Types not listed (console) are not limited.
DEFAULT_LIMITS: dict[str, RateLimitConfig] = {
    # Slack: ~1 message/s per webhook or channel, short bursts allowed (§1.1, §1.2)
    "slack": RateLimitConfig(per_second=1.0, burst=3),
    "slack_bot": RateLimitConfig(per_second=1.0, burst=3),
    # Teams Workflows: no published limit; self-throttle to ~1/s per URL (§1.3)
    "teams": RateLimitConfig(per_second=1.0, burst=2),
    # Google Chat: plan for at most 1 msg/s per space (§1.6)
    "google_chat": RateLimitConfig(per_second=1.0, burst=1),
    # Mattermost: self-hosted, Slack-compatible; no documented limit, same as Slack
    "mattermost": RateLimitConfig(per_second=1.0, burst=3),
    # Discord: per-webhook buckets (§1.5), numbers come in headers; stay at Slack's pace
    "discord": RateLimitConfig(per_second=1.0, burst=2),
    # PagerDuty Events v2: ~120 calls/min per integration key (§2.1)
    "pagerduty": RateLimitConfig(per_second=2.0, burst=5),
    # GitHub: ~80 content-creating requests/min (§2.4)
    "github": RateLimitConfig(per_second=1.0, burst=3),
    # Jira, ServiceNow, Opsgenie: account-dependent; a conservative 2/s
    "jira_cloud": RateLimitConfig(per_second=2.0, burst=5),
    "jira_dc": RateLimitConfig(per_second=2.0, burst=5),
    "servicenow": RateLimitConfig(per_second=2.0, burst=5),
    "opsgenie": RateLimitConfig(per_second=2.0, burst=5),
    # Alertmanager API and generic webhooks: our own infrastructure, but not
    # unbounded; 20/s keeps a storm from flattening a small receiver.
    "alertmanager": RateLimitConfig(per_second=20.0, burst=20),
    "webhook": RateLimitConfig(per_second=20.0, burst=20),
}


class TokenBucket:
    def __init__(self, per_second: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = per_second
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = 0.0

    @classmethod
    def from_config(cls, cfg: RateLimitConfig, clock: Callable[[], float]) -> TokenBucket:
        return cls(cfg.per_second, cfg.burst, clock)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def wait_time(self) -> float:
        """Seconds until one token is free (0 when one is free now)."""
        now = self._clock()
        self._refill(now)
        wait = 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate
        return max(wait, self._paused_until - now)

    def take(self) -> None:
        """Use one token; call only after :meth:`wait_time` said 0 (or after waiting it)."""
        self._refill(self._clock())
        self._tokens -= 1.0

    def pause(self, seconds: float) -> None:
        """The service asked us to hold off (``Retry-After``)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)


class Unlimited:
    """For sinks without a limit (the console)."""

    def wait_time(self) -> float:
        return 0.0

    def take(self) -> None:
        return None

    def pause(self, seconds: float) -> None:
        return None


Limiter = TokenBucket | Unlimited


def limiter_for(
    sink_type: str | None, override: RateLimitConfig | None, clock: Callable[[], float]
) -> Limiter:
    cfg = override if override is not None else DEFAULT_LIMITS.get(sink_type or "")
    return Unlimited() if cfg is None else TokenBucket.from_config(cfg, clock)
