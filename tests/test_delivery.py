"""Retry policy, outcomes and secret hygiene of ``deliver``, against real receivers.

Sleeps are injected and recorded, so the waits the policy chose are asserted
exactly and no test waits for a backoff.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.alert.delivery import DeliveryOutcome, backoff_delay, deliver, make_client
from pipeline.alert.message import Notification
from pipeline.alert.sinks import (
    AlertmanagerWebhookSink,
    DeliveryError,
    Sink,
    SinkResponse,
    SlackWebhookSink,
)
from pipeline.alert.sinks.base import parse_retry_after, post_json, raise_for_status
from pipeline.config import RetryConfig
from pipeline.receivers import Receiver, Reply, SlackReceiver, WebhookReceiver
from tests.test_sinks_factories import make_notification, unused_port

RETRY = RetryConfig(
    max_attempts=4, initial_backoff_seconds=0.5, max_backoff_seconds=30, timeout_seconds=5
)


class RecordingSleep:
    """Stands in for ``asyncio.sleep``: remembers each wait, returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def run_with(
    rx: Receiver,
    make_sink: Callable[[str], Sink],
    *,
    retry: RetryConfig = RETRY,
    timeout: float = 5.0,
    script: Callable[[Receiver], None] = lambda rx: None,
) -> tuple[DeliveryOutcome, RecordingSleep, Receiver]:
    sleep = RecordingSleep()

    async def main() -> DeliveryOutcome:
        async with rx, make_client(timeout) as client:
            script(rx)
            return await deliver(
                make_sink(rx.url), make_notification(), client, retry, sleep=sleep,
                rng=random.Random(7),
            )  # fmt: skip

    return asyncio.run(main()), sleep, rx


def webhook(url: str) -> Sink:
    return AlertmanagerWebhookSink("hook", url)


def slack(url: str) -> Sink:
    return SlackWebhookSink("slack", url)


def test_success_first_time() -> None:
    outcome, sleep, rx = run_with(SlackReceiver(), slack)
    assert outcome.delivered
    assert outcome.attempts == 1
    assert outcome.last_status == 200
    assert outcome.error is None
    assert sleep.calls == []
    assert outcome.notification_id == make_notification().notification_id
    assert len(rx.accepted()) == 1


def test_429_waits_retry_after_then_succeeds() -> None:
    outcome, sleep, rx = run_with(SlackReceiver(), slack, script=lambda rx: rx.rate_limit(1, 7))
    assert outcome.delivered
    assert outcome.attempts == 2
    assert sleep.calls == [7.0]
    assert outcome.waited_seconds == 7.0
    assert [r.status for r in rx.requests()] == [429, 200]


def test_503_retry_after_as_http_date_is_honoured() -> None:
    when = email.utils.formatdate(usegmt=True)  # "now": nothing left to wait
    outcome, sleep, _ = run_with(
        WebhookReceiver(), webhook, script=lambda rx: rx.fail(503, retry_after=when)
    )
    assert outcome.delivered
    assert outcome.attempts == 2
    assert sleep.calls == [0.0]


def test_retry_after_is_capped() -> None:
    retry = RETRY.model_copy(update={"max_backoff_seconds": 5.0})
    outcome, sleep, _ = run_with(
        SlackReceiver(), slack, retry=retry, script=lambda rx: rx.rate_limit(1, 3600)
    )
    assert outcome.delivered
    assert sleep.calls == [5.0]


def test_500_twice_then_200_takes_three_attempts_with_growing_backoff() -> None:
    outcome, sleep, rx = run_with(WebhookReceiver(), webhook, script=lambda rx: rx.fail(500, 2))
    assert outcome.delivered
    assert outcome.attempts == 3
    assert [r.status for r in rx.requests()] == [500, 500, 200]
    assert len(sleep.calls) == 2
    first, second = sleep.calls
    assert 0.25 <= first <= 0.5  # equal jitter around initial_backoff_seconds
    assert 0.5 <= second <= 1.0  # doubled


def test_400_is_one_attempt_permanent_with_body_kept() -> None:
    outcome, sleep, rx = run_with(SlackReceiver(), slack, script=lambda rx: rx.refuse())
    assert not outcome.delivered
    assert outcome.permanent
    assert outcome.attempts == 1
    assert outcome.last_status == 400
    assert outcome.response_body == "invalid_payload"
    assert outcome.error is not None
    assert "invalid_payload" in outcome.error
    assert sleep.calls == []
    assert len(rx.requests()) == 1


def test_a_payload_the_service_rejects_is_refused_once_with_its_reason() -> None:
    class TextlessSlack(SlackWebhookSink):
        async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
            response = await post_json(client, self._url, {"blocks": []}, target="slack")
            raise_for_status(response, "slack")
            return SinkResponse()

    outcome, sleep, rx = run_with(SlackReceiver(), lambda url: TextlessSlack("slack", url))
    assert not outcome.delivered
    assert outcome.permanent
    assert outcome.attempts == 1
    assert outcome.response_body == "no_text"
    assert sleep.calls == []
    (rejected,) = rx.rejected()
    assert rejected.reason == "text: missing or empty (the notification fallback)"


def test_timeout_is_retried() -> None:
    outcome, sleep, rx = run_with(
        WebhookReceiver(), webhook, timeout=0.2, script=lambda rx: rx.hang(1)
    )
    assert outcome.delivered
    assert outcome.attempts == 2
    assert len(sleep.calls) == 1
    assert len(rx.requests()) == 2


def test_connection_refused_retried_then_gives_up_after_max_attempts() -> None:
    sleep = RecordingSleep()
    url = f"http://127.0.0.1:{unused_port()}/alert"

    async def main() -> DeliveryOutcome:
        async with make_client(2) as client:
            return await deliver(webhook(url), make_notification(), client, RETRY, sleep=sleep)

    outcome = asyncio.run(main())
    assert not outcome.delivered
    assert not outcome.permanent  # the target may come back: the alerter may try later
    assert outcome.attempts == RETRY.max_attempts
    assert len(sleep.calls) == RETRY.max_attempts - 1
    assert outcome.last_status is None
    assert outcome.error is not None
    assert outcome.error.startswith("gave up after 4 attempts")


def test_redirect_is_permanent_not_followed() -> None:
    outcome, _, rx = run_with(
        WebhookReceiver(),
        webhook,
        script=lambda rx: rx.script(Reply(302, "", headers={"Location": "http://elsewhere/"})),
    )
    assert not outcome.delivered
    assert outcome.permanent
    assert outcome.last_status == 302
    assert len(rx.requests()) == 1


def test_a_sink_bug_becomes_a_permanent_outcome_not_an_exception() -> None:
    class Buggy:
        name = "buggy"

        async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
            raise KeyError("oops")

    class Vague:
        name = "vague"

        async def send(self, n: Notification, client: httpx.AsyncClient) -> SinkResponse:
            raise DeliveryError(418, "teapot")

    async def main() -> list[DeliveryOutcome]:
        async with httpx.AsyncClient() as client:
            return [
                await deliver(s, make_notification(), client, RETRY, sleep=RecordingSleep())
                for s in (Buggy(), Vague())
            ]

    buggy, vague = asyncio.run(main())
    assert not buggy.delivered
    assert buggy.permanent
    assert buggy.attempts == 1
    assert buggy.error is not None
    assert "KeyError" in buggy.error
    assert not vague.delivered
    assert vague.permanent
    assert vague.last_status == 418


def test_slack_url_never_reaches_logs_or_outcomes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outcomes: list[DeliveryOutcome] = []
    sinks: list[Sink] = []

    async def main() -> str:
        async with SlackReceiver() as rx, make_client(0.3) as client:
            sink = SlackWebhookSink("ops", rx.url)
            sinks.append(sink)
            rx.fail(500, times=2)
            rx.rate_limit(1, retry_after=1)
            outcomes.append(
                await deliver(sink, make_notification(), client, RETRY, sleep=RecordingSleep())
            )
            rx.refuse()
            outcomes.append(
                await deliver(sink, make_notification(), client, RETRY, sleep=RecordingSleep())
            )
            rx.hang(RETRY.max_attempts)
            outcomes.append(
                await deliver(sink, make_notification(), client, RETRY, sleep=RecordingSleep())
            )
            return rx.url

    url = asyncio.run(main())
    secret_path = url.split("/services/", 1)[1]
    dead = SlackWebhookSink(
        "ops-dead", url.replace(url.split("/")[2], f"127.0.0.1:{unused_port()}")
    )

    async def refused() -> None:
        async with make_client(1) as client:
            outcomes.append(
                await deliver(dead, make_notification(), client, RETRY, sleep=RecordingSleep())
            )

    asyncio.run(refused())
    sinks.append(dead)
    assert [o.delivered for o in outcomes] == [True, False, False, False]
    everything = caplog.text + "".join(repr(x) for x in [*outcomes, *sinks])
    assert secret_path not in everything
    assert "XXXXXXXX" not in everything
    # httpx did log the requests, with the URL redacted by the filter make_client installs.
    assert "/services/***" in caplog.text
    assert any(r.name == "httpx" for r in caplog.records)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (" 2.5 ", 2.5), ("-3", 0.0), ("", None), (None, None), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0)],
)  # fmt: skip
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:27:00 GMT").timestamp()
    assert parse_retry_after(header, now=now) == seconds


def test_backoff_grows_and_is_bounded() -> None:
    rng = random.Random(1)
    retry = RETRY.model_copy(update={"max_backoff_seconds": 4.0})
    delays = [backoff_delay(k, retry, rng) for k in range(1, 10)]
    for k, d in enumerate(delays, start=1):
        ceiling = min(4.0, 0.5 * 2 ** (k - 1))
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 4.0


def test_make_client_is_http11_without_redirects() -> None:
    async def main() -> Any:
        async with make_client(3.0) as client:
            return client.timeout, client.follow_redirects, client.headers["User-Agent"]

    timeout, follow, agent = asyncio.run(main())
    assert timeout.read == 3.0
    assert timeout.connect == 3.0
    assert follow is False
    assert agent.startswith("meshwatch/")


def test_url_is_redacted_in_httpx_log_even_as_httpx_normalises_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")

    async def main() -> None:
        async with SlackReceiver() as rx, make_client(5) as client:
            # Upper-case host and an escaped path: httpx prints its own rendering.
            url = rx.url.replace("127.0.0.1", "LOCALHOST") + "%7E"
            sink = SlackWebhookSink("ops", url)
            await deliver(sink, make_notification(), client, RETRY, sleep=RecordingSleep())

    asyncio.run(main())
    assert "localhost" in caplog.text.lower()
    assert "XXXXXXXX" not in caplog.text
