"""A local stand-in for a notification service, over a real socket.

Tests and ``meshwatch demo`` need something that behaves like Slack or an
Alertmanager webhook consumer: it checks each request against the service's
documented format, answers what the service answers, and can misbehave on
demand (429 with ``Retry-After``, 5xx, a 400 with the service's error body,
or no answer at all). Everything it saw is kept in memory, accepted or
rejected with the reason, so a test can assert on the exact bytes our sinks
put on the wire and wait for them without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web

log = logging.getLogger(__name__)

#: Larger than any legitimate alert; a bigger body is itself a bug to see.
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Problem:
    """One way a request breaks the service's format.

    ``code`` is what the service would put in its error body (Slack's
    ``invalid_blocks``); ``detail`` says exactly where and why, for the test.
    """

    code: str
    detail: str
    #: The HTTP status the service answers this problem with, where it is not
    #: the receiver's default (401 for bad credentials, 413 for size, ...).
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer one request with. ``hang`` holds the answer until stop."""

    status: int = 200
    body: str = ""
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True, slots=True)
class Received:
    """One request as it arrived, with the verdict and the answer given."""

    seq: int
    at: float
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    payload: Any
    problems: tuple[Problem, ...]
    status: int
    scripted: bool
    #: Query parameters (last value wins) and, for API fakes, the operation
    #: the request was routed to (``chat.postMessage``, ``create_issue``).
    query: dict[str, str] = field(default_factory=dict)
    route: str = ""

    @property
    def valid(self) -> bool:
        """The request matched the documented format (whatever was answered)."""
        return not self.problems

    @property
    def accepted(self) -> bool:
        """Valid and answered with success: the service would have shown it."""
        return self.valid and 200 <= self.status < 300

    @property
    def reason(self) -> str | None:
        return "; ".join(p.detail for p in self.problems) or None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Predicate = Callable[[Sequence[Received]], bool]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(
    method: str, content_type: str, charset: str | None, body: bytes
) -> tuple[Any, list[Problem]]:
    """The checks every JSON webhook shares: POST, JSON content type, JSON body."""
    if method != "POST":
        return None, [Problem("invalid_method", f"method {method}, expected POST")]
    if content_type != "application/json":
        return None, [
            Problem("invalid_content_type", f"Content-Type {content_type!r}, expected JSON")
        ]
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return None, [Problem("invalid_content_type", f"charset {charset!r}, expected utf-8")]
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, [Problem("invalid_payload", f"body is not JSON: {exc}")]
    return payload, []


class Receiver:
    """Base of the service fakes; subclasses supply the format and the answers.

    ``on_request`` is called with every record as it is stored, on the
    receiver's event-loop thread; it must not block.
    """

    service: ClassVar[str] = "receiver"
    default_path: ClassVar[str] = "/"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str | None = None,
        on_request: Callable[[Received], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path or self.default_path
        self.on_request = on_request
        self._lock = threading.Lock()
        self._records: list[Received] = []
        self._script: deque[Reply] = deque()
        self._runner: web.AppRunner | None = None
        self._cond: asyncio.Condition | None = None
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what subclasses define ------------------------------------------------

    def validate(self, payload: Any, request: web.Request) -> list[Problem]:
        """Problems with a parsed JSON body; empty when it is well-formed."""
        return []

    def success(self) -> Reply:
        return Reply(200, "")

    def rejection(self, problems: Sequence[Problem]) -> Reply:
        status = {"invalid_method": 405, "invalid_content_type": 415}.get(problems[0].code, 400)
        return Reply(status, "; ".join(p.detail for p in problems))

    def error_body(self, status: int) -> str:
        """The body the real service sends with a given error status."""
        return ""

    def wrong_path(self, path: str) -> Reply:
        return Reply(404, "not found")

    def error_reply(self, status: int, headers: dict[str, str]) -> Reply:
        """A scripted failure as the service sends it (JSON services override this)."""
        return Reply(status, self.error_body(status), headers=headers)

    def summarize(self, record: Received) -> str:
        """One line saying what arrived, for ``meshwatch demo``'s display."""
        verdict = "accepted" if record.accepted else (record.reason or f"answered {record.status}")
        return f"#{record.seq} {record.method} {record.path} -> {record.status} ({verdict})"

    # -- scripting ---------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then behave normally."""
        with self._lock:
            self._script.extend(replies)

    def rate_limit(self, times: int = 1, retry_after: float | str | None = 1) -> None:
        """``times`` answers of 429, with ``Retry-After`` (seconds or an HTTP-date)."""
        headers = {} if retry_after is None else {"Retry-After": _header_value(retry_after)}
        self.script(*[self.error_reply(429, headers)] * times)

    def fail(
        self, status: int = 500, times: int = 1, retry_after: float | str | None = None
    ) -> None:
        """``times`` answers of a server error with the service's error body."""
        headers = {} if retry_after is None else {"Retry-After": _header_value(retry_after)}
        self.script(*[self.error_reply(status, headers)] * times)

    def refuse(self, times: int = 1, status: int = 400) -> None:
        """``times`` answers of a client error (400 by default) with the service's body."""
        self.script(*[self.error_reply(status, {})] * times)

    def hang(self, times: int = 1) -> None:
        """Accept the next requests but never answer them (until the receiver stops)."""
        self.script(*[Reply(200, "", hang=True)] * times)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to configure in a sink."""
        if self._runner is None:
            raise RuntimeError(f"{self.service} receiver is not started")
        return f"{self.base_url}{self.path}"

    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._cond = asyncio.Condition()
        self._release = asyncio.Event()
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # No access log: it would print request paths, and a Slack path is a secret.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._release is not None:
            self._release.set()  # let hung handlers finish so shutdown is quick
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- records (safe from any thread) ------------------------------------------

    def requests(self) -> tuple[Received, ...]:
        with self._lock:
            return tuple(self._records)

    def accepted(self) -> tuple[Received, ...]:
        return tuple(r for r in self.requests() if r.accepted)

    def rejected(self) -> tuple[Received, ...]:
        return tuple(r for r in self.requests() if not r.valid)

    def payloads(self) -> list[Any]:
        """Bodies of the accepted requests, in arrival order."""
        return [r.payload for r in self.accepted()]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._script.clear()

    async def wait_for(self, predicate: Predicate, timeout: float = 5.0) -> tuple[Received, ...]:
        """Until ``predicate(requests)`` holds; woken by each arrival, never polled.

        Must run on the receiver's event loop (see ``ReceiverThread.wait_for``
        for other threads). Raises ``TimeoutError`` listing what did arrive.
        """
        if self._cond is None:
            raise RuntimeError(f"{self.service} receiver is not started")
        cond = self._cond
        try:
            async with asyncio.timeout(timeout), cond:
                await cond.wait_for(lambda: predicate(self.requests()))
        except TimeoutError:
            raise TimeoutError(self._timeout_message(timeout)) from None
        return self.requests()

    async def wait_for_count(
        self, count: int, *, timeout: float = 5.0, accepted_only: bool = True
    ) -> tuple[Received, ...]:
        """Until ``count`` requests (accepted ones by default) have arrived."""

        def enough(records: Sequence[Received]) -> bool:
            return sum(1 for r in records if r.accepted or not accepted_only) >= count

        records = await self.wait_for(enough, timeout)
        return tuple(r for r in records if r.accepted or not accepted_only)

    def _timeout_message(self, timeout: float) -> str:
        records = self.requests()
        lines = [f"{self.service} receiver: condition not met within {timeout} s; "]
        lines.append(f"{len(records)} request(s) arrived")
        for r in records[-5:]:
            verdict = "accepted" if r.accepted else (r.reason or f"answered {r.status}")
            lines.append(f"; #{r.seq} {r.method} -> {r.status} ({verdict})")
        return "".join(lines)

    # -- the handler ---------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload: Any = None
        if request.path != self.path:
            problems = [Problem("wrong_path", f"path {request.path!r}, expected {self.path!r}")]
            reply: Reply | None = self.wrong_path(request.path)
        else:
            payload, problems = parse_json_body(
                request.method, request.content_type, request.charset, body
            )
            if not problems:
                problems = self.validate(payload, request)
            reply = None
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            reply = scripted
        elif reply is None:
            reply = self.rejection(problems) if problems else self.success()
        await self._record(request, body, payload, problems, reply, scripted is not None)
        if reply.hang and self._release is not None:
            await self._release.wait()
        return web.Response(
            status=reply.status,
            text=reply.body,
            content_type=reply.content_type,
            headers=reply.headers,
        )

    async def _record(
        self,
        request: web.Request,
        body: bytes,
        payload: Any,
        problems: Sequence[Problem],
        reply: Reply,
        scripted: bool,
        route: str = "",
    ) -> Received:
        assert self._cond is not None
        async with self._cond:
            with self._lock:
                record = Received(
                    seq=len(self._records) + 1,
                    at=time.time(),
                    method=request.method,
                    path=request.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    payload=payload,
                    problems=tuple(problems),
                    status=reply.status,
                    scripted=scripted,
                    query=dict(request.query),
                    route=route,
                )
                self._records.append(record)
            self._cond.notify_all()
        if record.problems:
            log.debug("%s receiver rejected #%d: %s", self.service, record.seq, record.reason)
        if self.on_request is not None:
            try:
                self.on_request(record)
            except Exception:  # the observer's bug must not change what the client sees
                log.exception("%s receiver: on_request callback failed", self.service)
        return record


def _header_value(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)
