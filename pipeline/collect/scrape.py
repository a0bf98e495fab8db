"""Concurrent scraping of proxy ``/metrics`` endpoints.

Every scrape has a bound on the body size, and all of a cycle's scrapes run
concurrently under one semaphore against one deadline: the cycle's start
plus the scrape timeout. A scrape still running at the deadline, or still
waiting for a free slot, has timed out, so the scraping part of a window
ends on time however many targets there are and however many of them hang.
Failures are values, not exceptions: a cycle always returns one result per
target.

The client is aiohttp's. An earlier httpx client leaked a pool connection
for (nearly) every scrape cut off by the deadline, until after a few windows
with slow proxies every slot was held by a dead request and nothing could be
scraped any more (httpcore 1.0.9; ``bench/collector_scale.py`` showed it at
1,000 proxies). aiohttp releases the connection of a cancelled request and
costs about a quarter of the CPU per request. Bodies are kept as they came
(gzipped, ``encoding`` says so): inflating them is the parser's job, off the
event loop (:func:`pipeline.collect.parsing.decode_body`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import aiohttp

from pipeline.collect.targets import Target

T = TypeVar("T")
CHUNK = 64 * 1024

#: Why a scrape gave no body: ``timeout`` (slow or hung proxy, or no slot
#: before the deadline), ``http`` (a status other than 200), ``too_large``,
#: ``connect`` (refused, reset, DNS, a broken body: the proxy is not there).
Failure = Literal["", "timeout", "http", "too_large", "connect"]


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    target: Target
    body: bytes | None
    error: str | None
    seconds: float
    failure: Failure = ""
    encoding: str = "identity"  # Content-Encoding of ``body``

    @property
    def ok(self) -> bool:
        return self.body is not None


def make_scrape_client(concurrency: int, gzip: bool) -> aiohttp.ClientSession:
    """One session for every scrape (call it with a running event loop)."""
    headers = {"Accept": "text/plain", "Accept-Encoding": "gzip" if gzip else "identity"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
        auto_decompress=False,
    )


async def scrape_one(
    client: aiohttp.ClientSession,
    target: Target,
    timeout: float,
    max_bytes: int,
    *,
    deadline: float | None = None,
) -> ScrapeResult:
    """One GET, cut at ``deadline`` (event-loop time; default: ``timeout`` from now).

    The error text names ``timeout`` either way: with a shared deadline it
    is the time since the cycle began, which is what an operator compares
    with ``window.scrape_timeout_seconds``.
    """
    loop = asyncio.get_running_loop()
    if deadline is None:
        deadline = loop.time() + timeout
    started = time.perf_counter()
    try:
        async with (
            asyncio.timeout_at(deadline),
            client.get(target.url, allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                return ScrapeResult(
                    target, None, f"HTTP {resp.status}", time.perf_counter() - started, "http"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    return ScrapeResult(
                        target,
                        None,
                        f"body larger than {max_bytes} bytes",
                        time.perf_counter() - started,
                        "too_large",
                    )
                chunks.append(chunk)
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        return ScrapeResult(
            target, b"".join(chunks), None, time.perf_counter() - started, "", encoding
        )
    except TimeoutError:
        return ScrapeResult(
            target, None, f"timeout after {timeout:g}s", time.perf_counter() - started, "timeout"
        )
    except (aiohttp.ClientError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        return ScrapeResult(target, None, detail, time.perf_counter() - started, "connect")


async def scrape_each(
    client: aiohttp.ClientSession,
    targets: Sequence[Target],
    handle: Callable[[ScrapeResult], Awaitable[T]],
    *,
    timeout: float,
    concurrency: int,
    max_bytes: int,
) -> list[T]:
    """Scrape every target by one deadline and pass each result to ``handle`` as it lands.

    ``handle`` runs outside the concurrency slot (a slow parse does not hold
    a connection) and is not bound by the deadline: a body that arrived in
    time is always processed. Results come back in target order.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sem = asyncio.Semaphore(concurrency)

    async def one(t: Target) -> T:
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                await sem.acquire()
        except TimeoutError:
            result = ScrapeResult(
                t,
                None,
                f"timeout after {timeout:g}s (never started: all {concurrency} slots busy)",
                time.perf_counter() - started,
                "timeout",
            )
        else:
            try:
                result = await scrape_one(client, t, timeout, max_bytes, deadline=deadline)
            finally:
                sem.release()
        return await handle(result)

    return list(await asyncio.gather(*(one(t) for t in targets)))


async def scrape_all(
    client: aiohttp.ClientSession,
    targets: Sequence[Target],
    *,
    timeout: float,
    concurrency: int,
    max_bytes: int,
) -> list[ScrapeResult]:
    """Every target's result, all within ``timeout`` of the call."""

    async def keep(r: ScrapeResult) -> ScrapeResult:
        return r

    return await scrape_each(
        client, targets, keep, timeout=timeout, concurrency=concurrency, max_bytes=max_bytes
    )
