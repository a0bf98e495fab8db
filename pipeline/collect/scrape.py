"""Concurrent scraping of proxy ``/metrics`` endpoints.

Every scrape has its own timeout and a bound on the body size, and all of a
cycle's scrapes run concurrently under one semaphore, so one hung or huge
proxy costs its own slot and nothing else. Failures are values, not
exceptions: a cycle always returns one result per target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from pipeline.collect.targets import Target


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    target: Target
    body: bytes | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.body is not None


def make_scrape_client(concurrency: int, gzip: bool) -> httpx.AsyncClient:
    headers = {"Accept": "text/plain", "Accept-Encoding": "gzip" if gzip else "identity"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(headers=headers, limits=limits, follow_redirects=False)


async def scrape_one(
    client: httpx.AsyncClient, target: Target, timeout: float, max_bytes: int
) -> ScrapeResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("GET", target.url, timeout=timeout) as resp:
                if resp.status_code != 200:
                    return ScrapeResult(
                        target, None, f"HTTP {resp.status_code}", time.perf_counter() - started
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        return ScrapeResult(
                            target,
                            None,
                            f"body larger than {max_bytes} bytes",
                            time.perf_counter() - started,
                        )
                    chunks.append(chunk)
        return ScrapeResult(target, b"".join(chunks), None, time.perf_counter() - started)
    except TimeoutError:
        return ScrapeResult(target, None, f"timeout after {timeout:g}s", timeout)
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        return ScrapeResult(target, None, detail, time.perf_counter() - started)


async def scrape_all(
    client: httpx.AsyncClient,
    targets: Sequence[Target],
    *,
    timeout: float,
    concurrency: int,
    max_bytes: int,
) -> list[ScrapeResult]:
    sem = asyncio.Semaphore(concurrency)

    async def bounded(t: Target) -> ScrapeResult:
        async with sem:
            return await scrape_one(client, t, timeout, max_bytes)

    return list(await asyncio.gather(*(bounded(t) for t in targets)))
