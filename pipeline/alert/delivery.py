"""Getting one notification to one sink, or saying clearly why not.

The policy is the one Alertmanager lacks (reference §3.4): retry 429 as well
as 5xx and network errors, wait what the server asks for in ``Retry-After``
(capped), back off exponentially with jitter otherwise, and never repeat a
request the target refused outright. The result is always an outcome, never
an exception, so one broken sink cannot stall the alerter's batch; what to do
with a failure (dead-letter, retry on the next batch) is the alerter's call.

Two optional limits let the alerter keep its batches short: a ``limiter``
(the destination's token bucket; every attempt takes a token) and a
``deadline`` on ``clock``. When the next wait — for a token, a
``Retry-After`` or a backoff — would run past the deadline, ``deliver``
returns at once with ``retry_in`` set instead of sleeping, and the alerter
keeps the notification in its outbox for later.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from pipeline.alert.message import Notification
from pipeline.alert.sinks.base import (
    USER_AGENT,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    Sink,
)
from pipeline.alert.sinks.redact import install_log_redaction, redact_text
from pipeline.config import RetryConfig

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[object]]
_rng = random.Random()


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What happened to one notification at one sink, fit to store and log.

    ``permanent`` separates "the target refused it" (do not send it again)
    from "we ran out of attempts" (the target may take it later).
    """

    sink: str
    notification_id: str
    delivered: bool
    attempts: int
    refs: dict[str, str] = field(default_factory=dict)
    last_status: int | None = None
    error: str | None = None
    response_body: str | None = None
    permanent: bool = False
    waited_seconds: float = 0.0
    #: Not delivered yet but worth another try after this many seconds (the
    #: server's ``Retry-After``, the backoff, or the wait for a token).
    retry_in: float | None = None


class RateGate(Protocol):
    """What ``deliver`` needs of a rate limiter (see ``pipeline.alert.ratelimit``)."""

    def wait_time(self) -> float: ...

    def take(self) -> None: ...

    def pause(self, seconds: float) -> None: ...


def backoff_delay(failures: int, retry: RetryConfig, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random.

    The fixed half guarantees a real pause; the random half spreads out
    retries of many notifications that failed together (one Slack 5xx hits
    every pending post at once).
    """
    ceiling = min(
        retry.max_backoff_seconds,
        retry.initial_backoff_seconds * 2.0 ** max(0, failures - 1),
    )
    return ceiling / 2 + (rng or _rng).uniform(0.0, ceiling / 2)


async def deliver(
    sink: Sink,
    notification: Notification,
    client: httpx.AsyncClient,
    retry: RetryConfig,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    limiter: RateGate | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    prior_attempts: int = 0,
) -> DeliveryOutcome:
    """Send with retries; returns the outcome and never raises for delivery problems.

    ``prior_attempts`` are attempts made by earlier calls for the same
    notification (from the outbox); they only lengthen the backoff.
    """
    nid = notification.notification_id
    waited = 0.0
    attempt = 0
    last_status: int | None = None
    last_error: str | None = None
    while True:
        if limiter is not None:
            wait = limiter.wait_time()
            if wait > 0:
                if deadline is not None and clock() + wait > deadline:
                    return DeliveryOutcome(
                        sink.name,
                        nid,
                        False,
                        attempt,
                        last_status=last_status,
                        error=last_error or f"rate limited: next slot in {wait:.2f} s",
                        waited_seconds=waited,
                        retry_in=wait,
                    )
                await sleep(wait)
                waited += wait
            limiter.take()
        attempt += 1
        try:
            response = await sink.send(notification, client)
        except RetryableDeliveryError as exc:
            last_status, last_error = exc.status, exc.detail
            if exc.retry_after is not None:
                delay = min(exc.retry_after, retry.max_backoff_seconds)
                if limiter is not None:
                    limiter.pause(delay)
            else:
                delay = backoff_delay(prior_attempts + attempt, retry, rng)
            if attempt >= retry.max_attempts:
                error = f"gave up after {attempt} attempts: {exc.detail}"
                log.warning("delivery %s to %s failed: %s", nid, sink.name, error)
                return DeliveryOutcome(
                    sink.name,
                    nid,
                    False,
                    attempt,
                    last_status=exc.status,
                    error=error,
                    waited_seconds=waited,
                    retry_in=delay,
                )
            if deadline is not None and clock() + delay > deadline:
                log.info(
                    "delivery %s to %s: attempt %d failed (%s); next try in %.2f s, later",
                    nid,
                    sink.name,
                    attempt,
                    exc.detail,
                    delay,
                )
                return DeliveryOutcome(
                    sink.name,
                    nid,
                    False,
                    attempt,
                    last_status=exc.status,
                    error=exc.detail,
                    waited_seconds=waited,
                    retry_in=delay,
                )
            log.info(
                "delivery %s to %s: attempt %d/%d failed (%s); retrying in %.2f s",
                nid,
                sink.name,
                attempt,
                retry.max_attempts,
                exc.detail,
                delay,
            )
            await sleep(delay)
            waited += delay
        except PermanentDeliveryError as exc:
            return _refused(sink, nid, attempt, waited, exc, exc.response_body)
        except DeliveryError as exc:
            return _refused(sink, nid, attempt, waited, exc, None)
        except Exception as exc:
            # A bug in a sink: report it as a permanent failure of this
            # delivery (with the traceback in the log) instead of taking the
            # alerter down; retrying a bug only repeats it.
            log.exception("delivery %s to %s: sink raised unexpectedly", nid, sink.name)
            error = redact_text(f"internal error in sink: {type(exc).__name__}: {exc}")
            return DeliveryOutcome(
                sink.name, nid, False, attempt, error=error, permanent=True, waited_seconds=waited
            )
        else:
            if attempt > 1:
                log.info("delivery %s to %s succeeded on attempt %d", nid, sink.name, attempt)
            return DeliveryOutcome(
                sink.name,
                nid,
                True,
                attempt,
                refs=dict(response.refs),
                last_status=response.status,
                waited_seconds=waited,
            )


def _refused(
    sink: Sink, nid: str, attempt: int, waited: float, exc: DeliveryError, body: str | None
) -> DeliveryOutcome:
    log.warning("delivery %s to %s refused: %s", nid, sink.name, exc.detail)
    return DeliveryOutcome(
        sink.name,
        nid,
        False,
        attempt,
        last_status=exc.status,
        error=exc.detail,
        response_body=body,
        permanent=True,
        waited_seconds=waited,
    )


def make_client(timeout: float = 10.0, *, max_connections: int = 32) -> httpx.AsyncClient:
    """The one HTTP client every sink shares (pooled connections, one timeout).

    HTTP/1.1 only: webhook endpoints gain nothing from HTTP/2 here and it
    would need an extra dependency. Redirects are not followed, so a moved
    webhook shows up as a permanent error instead of silently sending the
    payload somewhere else. Creating it also switches on URL redaction for
    httpx's own request log.
    """
    install_log_redaction()
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=min(8, max_connections),
            keepalive_expiry=30.0,
        ),
        http1=True,
        http2=False,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )
