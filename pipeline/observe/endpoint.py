"""The HTTP endpoint every stage serves: ``/metrics``, ``/healthz``, ``/readyz``.

A stdlib threading server is enough: it is scraped every few seconds and
probed by the kubelet, and it must keep answering while a stage's own thread
is busy with a batch. It serves nothing else — no configuration, no
environment, no stack traces — so exposing it leaks nothing.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class ObservabilityEndpoint:
    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        *,
        live: Check | None = None,
        ready: Check | None = None,
    ) -> None:
        self.host, self.port = parse_address(address)
        self.registry = registry
        self.live: Check = live or (lambda: (True, "ok"))
        self.ready: Check = ready or (lambda: (True, "ok"))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ObservabilityEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            # the default Server header names the Python version: nothing to give away
            server_version = "meshwatch"
            sys_version = ""

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, generate_latest(endpoint.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    check = endpoint.live if path == "/healthz" else endpoint.ready
                    try:
                        ok, reason = check()
                    except Exception as exc:  # a broken check is a failing check
                        ok, reason = False, f"check failed: {type(exc).__name__}"
                    self._answer(200 if ok else 503, (reason + "\n").encode(), "text/plain")
                else:
                    self._answer(404, b"not found\n", "text/plain")

            def _answer(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the stage's own logs

        server_cls = _IPv6Server if ":" in self.host else ThreadingHTTPServer
        self._server = server_cls((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="observe-http", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _IPv6Server(ThreadingHTTPServer):
    """For ``[::]:9464`` and other IPv6 binds; the stdlib server is IPv4 only."""

    address_family = socket.AF_INET6
