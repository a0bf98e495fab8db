"""The contract every API target keeps, run against its receiver over a real socket.

For each target: firing, update and resolve are accepted by the receiver
(which checks the documented format) and land on the same message or ticket
through the refs; 429 waits the server's ``Retry-After``; 5xx is retried with
backoff; a 400 is one attempt and permanent; a timeout is retried; secrets
never reach logs, outcomes or reprs. Sleeps are injected, so no test waits.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from pipeline.alert.delivery import DeliveryOutcome, deliver
from pipeline.alert.sinks import Sink
from pipeline.receivers import Receiver
from tests.sink_targets import RETRY, TARGETS, RecordingSleep, Target, send_all
from tests.test_sinks_factories import make_notification

ids = [t.id for t in TARGETS]


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_lifecycle_is_valid_and_lands_on_the_same_object(target: Target) -> None:
    async def body(rx: Any, sink: Sink, client: httpx.AsyncClient) -> None:
        outcomes, _ = await send_all(sink, client)
        assert [o.delivered for o in outcomes] == [True, True, True], [o.error for o in outcomes]
        assert all(o.attempts == 1 for o in outcomes)
        assert rx.rejected() == (), [r.reason for r in rx.rejected()]
        assert all(r.accepted for r in rx.requests())
        target.check(rx, outcomes)

    target.run(body)


def one(
    target: Target, script: Any, *, timeout: float = 5.0
) -> tuple[DeliveryOutcome, RecordingSleep, Receiver]:
    sleep = RecordingSleep()

    async def body(
        rx: Any, sink: Sink, client: httpx.AsyncClient
    ) -> tuple[DeliveryOutcome, Receiver]:
        script(rx)
        (outcome,), _ = await send_all(sink, client, ["firing"], sleep=sleep)
        return outcome, rx

    outcome, rx = target.run(body, timeout=timeout)
    return outcome, sleep, rx


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_429_waits_what_the_server_says_then_delivers(target: Target) -> None:
    outcome, sleep, rx = one(target, lambda rx: rx.rate_limit(1, retry_after=7))
    assert outcome.delivered, outcome.error
    assert outcome.attempts == 2
    assert sleep.calls == [7.0]
    statuses = [r.status for r in rx.requests()]
    assert statuses[0] == 429
    assert all(200 <= s < 300 for s in statuses[1:])


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_5xx_is_retried_with_backoff(target: Target) -> None:
    outcome, sleep, rx = one(target, lambda rx: rx.fail(500, times=2))
    assert outcome.delivered, outcome.error
    assert outcome.attempts == 3
    assert len(sleep.calls) == 2
    assert 0.25 <= sleep.calls[0] <= 0.5
    assert 0.5 <= sleep.calls[1] <= 1.0
    assert [r.status for r in rx.requests()][:2] == [500, 500]


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_400_is_one_attempt_and_permanent(target: Target) -> None:
    outcome, sleep, rx = one(target, lambda rx: rx.refuse())
    assert not outcome.delivered
    assert outcome.permanent
    assert outcome.attempts == 1
    assert outcome.last_status == 400
    assert outcome.error is not None
    assert sleep.calls == []
    assert len(rx.requests()) == 1


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_a_timeout_is_retried(target: Target) -> None:
    outcome, sleep, rx = one(target, lambda rx: rx.hang(1), timeout=0.3)
    assert outcome.delivered, outcome.error
    assert outcome.attempts == 2
    assert len(sleep.calls) == 1
    assert rx.requests()[0].scripted


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_a_failed_attempt_changes_nothing_on_the_server(target: Target) -> None:
    """Scripted failures are answered instead of acting: a retry leaves one object."""

    async def body(rx: Any, sink: Sink, client: httpx.AsyncClient) -> None:
        rx.fail(503, times=1)
        outcomes, _ = await send_all(sink, client)
        assert [o.delivered for o in outcomes] == [True, True, True]
        assert outcomes[0].attempts == 2
        target.check(rx, outcomes)

    target.run(body)


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_secrets_never_reach_logs_outcomes_or_reprs(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outcomes: list[DeliveryOutcome] = []
    seen: list[Any] = []
    short = RETRY.model_copy(update={"max_attempts": 2})

    async def body(rx: Any, sink: Sink, client: httpx.AsyncClient) -> None:
        seen.append(sink)
        seen.extend(target.secrets(rx))
        rx.fail(500, times=1)
        rx.rate_limit(1, retry_after=1)
        got, _ = await send_all(sink, client, ["firing"])
        outcomes.extend(got)
        rx.refuse(status=401)
        outcomes.append(
            await deliver(sink, make_notification("update"), client, RETRY, sleep=RecordingSleep())
        )
        rx.hang(2)
        outcomes.append(
            await deliver(sink, make_notification(), client, short, sleep=RecordingSleep())
        )

    target.run(body, timeout=0.3)
    sink, *secrets = seen
    assert [o.delivered for o in outcomes] == [True, False, False]
    assert outcomes[1].permanent
    assert outcomes[2].error is not None
    assert outcomes[2].error.startswith("gave up after 2 attempts")
    everything = caplog.text + "".join(repr(x) for x in [*outcomes, sink])
    for secret in secrets:
        assert secret not in everything, f"{secret!r} leaked"
    assert any(r.name == "httpx" for r in caplog.records)
