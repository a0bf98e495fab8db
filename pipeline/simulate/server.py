"""One loopback HTTP listener per simulated pod, all in one aiohttp app.

Each pod gets its own port (like each real proxy has its own admin
address), but a single application and runner serve them all: the handler
finds the pod from the local port of the connection. Rendering is
synchronous and takes well under a millisecond, so handlers never hold a
lock across an await and one slow or hanging pod cannot delay another.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

Misbehaviour = Literal["ok", "hang", "error", "garbage", "slow"]

_GARBAGE = (
    b'request_total{direction="inbound",tls="true" 12\n'
    b"\x00\x17\xfe not metrics at all {{{\n"
    b"response_latency_ms_bucket{le=} NaNx\n"
)


@dataclass
class _Listener:
    uid: int
    port: int
    site: web.SockSite


class MetricsServer:
    """Serves ``/metrics`` (plus ``/ready``, ``/live``) for every registered pod."""

    def __init__(
        self,
        render: Callable[[int], str],
        behaviour: Callable[[int], tuple[Misbehaviour, float]],
        host: str = "127.0.0.1",
    ) -> None:
        self._render = render
        self._behaviour = behaviour
        self.host = host
        self._by_port: dict[int, _Listener] = {}
        self._by_uid: dict[int, _Listener] = {}
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ready", self._plain("ready\n"))
        app.router.add_get("/live", self._plain("live\n"))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self._started = False

    async def start(self) -> None:
        await self._runner.setup()
        self._started = True

    async def add(self, uid: int) -> int:
        """Open a listener for pod ``uid`` on a free port and return the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.setblocking(False)
        port = int(sock.getsockname()[1])
        site = web.SockSite(self._runner, sock)
        await site.start()
        lst = _Listener(uid, port, site)
        self._by_port[port] = lst
        self._by_uid[uid] = lst
        return port

    def rebind(self, old_uid: int, new_uid: int) -> None:
        """A renamed pod keeps its listener (the collector keeps its target URL)."""
        lst = self._by_uid.pop(old_uid)
        lst.uid = new_uid
        self._by_uid[new_uid] = lst

    async def remove(self, uid: int) -> None:
        lst = self._by_uid.pop(uid, None)
        if lst is None:
            return
        self._by_port.pop(lst.port, None)
        await lst.site.stop()

    def port_of(self, uid: int) -> int | None:
        lst = self._by_uid.get(uid)
        return lst.port if lst else None

    async def close(self) -> None:
        self._closing.set()
        if self._started:
            await self._runner.cleanup()
        self._by_port.clear()
        self._by_uid.clear()

    # -- handlers ------------------------------------------------------------------------

    def _pod_of(self, request: web.Request) -> int | None:
        transport = request.transport
        if transport is None:
            return None
        sockname = transport.get_extra_info("sockname")
        lst = self._by_port.get(int(sockname[1])) if sockname else None
        return lst.uid if lst else None

    @staticmethod
    def _plain(text: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=text)

        return handler

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        uid = self._pod_of(request)
        if uid is None:
            raise web.HTTPNotFound()
        mode, delay = self._behaviour(uid)
        if mode == "hang":
            await self._closing.wait()  # never answers while the mesh runs
            raise web.HTTPServiceUnavailable()
        if mode == "error":
            return web.Response(status=500, text="internal error\n")
        if mode == "garbage":
            return web.Response(body=_GARBAGE, headers={"Content-Type": "text/plain"})
        if mode == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=delay)
        body = self._render(uid).encode()
        headers = {"Content-Type": "text/plain"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)
