"""Run a receiver on its own event loop in a background thread.

``meshwatch demo`` runs each stage in a thread with blocking code, so it
cannot host an aiohttp server on a loop of its own. This gives it (and
synchronous tests) a started receiver, a URL, and blocking waits that are
still driven by the receiver's events rather than by polling.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from pipeline.receivers.base import Predicate, Received, Receiver

R = TypeVar("R", bound=Receiver)
T = TypeVar("T")

#: How long starting or stopping the server may take before we give up.
LIFECYCLE_TIMEOUT = 10.0


class ReceiverThread(Generic[R]):
    """``with ReceiverThread(WebhookReceiver()) as rx: ... rx.url ...``."""

    def __init__(self, receiver: R, *, name: str | None = None) -> None:
        self.receiver = receiver
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, name=name or f"{receiver.service}-receiver", daemon=True
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> R:
        self._thread.start()
        try:
            self._call(self.receiver.start(), LIFECYCLE_TIMEOUT)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(LIFECYCLE_TIMEOUT)
            raise
        return self.receiver

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self.receiver.stop(), LIFECYCLE_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(LIFECYCLE_TIMEOUT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.receiver.url

    def requests(self) -> tuple[Received, ...]:
        return self.receiver.requests()

    def accepted(self) -> tuple[Received, ...]:
        return self.receiver.accepted()

    def rejected(self) -> tuple[Received, ...]:
        return self.receiver.rejected()

    def wait_for(self, predicate: Predicate, timeout: float = 5.0) -> tuple[Received, ...]:
        """Blocks the calling thread until ``predicate(requests)`` holds (or TimeoutError)."""
        return self._call(self.receiver.wait_for(predicate, timeout), timeout + LIFECYCLE_TIMEOUT)

    def wait_for_count(
        self, count: int, *, timeout: float = 5.0, accepted_only: bool = True
    ) -> tuple[Received, ...]:
        coro = self.receiver.wait_for_count(count, timeout=timeout, accepted_only=accepted_only)
        return self._call(coro, timeout + LIFECYCLE_TIMEOUT)
