"""kafka-python clients built from the configuration.

One place turns :class:`KafkaConfig` into client keyword arguments, so
security settings (TLS, SASL) and the pass-through ``extra`` map behave the
same for every stage, and no stage ever sees a password in plain text
before the client needs it.

kafka-python reports a TLS mismatch (an untrusted broker certificate, a
plain-text client at a TLS listener) only as "unable to bootstrap" after its
timeout, and a TLS client at a plain-text listener hangs for good. So a TLS
client first makes one direct handshake with the same settings
(:func:`diagnose_tls`), and a plain-text client that cannot bootstrap checks
whether the broker speaks TLS; the error then says what is wrong and which
setting to check.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from pipeline.config import KafkaConfig, read_secret

C = TypeVar("C")


class KafkaSecurityError(KafkaError):  # type: ignore[misc]  # kafka-python is untyped
    """The client and the broker disagree about TLS (protocol or trust)."""

    retriable = False


def common_kwargs(cfg: KafkaConfig, role: str) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "bootstrap_servers": list(cfg.bootstrap_servers),
        "client_id": f"{cfg.client_id}-{role}",
        "security_protocol": cfg.security_protocol,
    }
    if cfg.sasl_mechanism:
        kw["sasl_mechanism"] = cfg.sasl_mechanism
        kw["sasl_plain_username"] = cfg.sasl_plain_username
        password = _secret(cfg, "sasl_plain_password")
        if password is not None:
            kw["sasl_plain_password"] = password
        elif cfg.sasl_mechanism != "OAUTHBEARER":
            raise KafkaSecurityError(
                f"sasl_mechanism {cfg.sasl_mechanism} needs a password: set "
                "MESHWATCH_KAFKA__SASL_PLAIN_PASSWORD or kafka.sasl_plain_password_file"
            )
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(cfg, name)
        if value is not None:
            kw[name] = str(value)
    ssl_password = _secret(cfg, "ssl_password")
    if ssl_password is not None:
        kw["ssl_password"] = ssl_password
    return kw


def _secret(cfg: KafkaConfig, name: str) -> str | None:
    """A Kafka secret from its field (YAML or ``MESHWATCH_KAFKA__*``) or its ``*_file``."""
    file = getattr(cfg, f"{name}_file")
    try:
        value = read_secret(getattr(cfg, name), file)
    except OSError as exc:
        raise KafkaSecurityError(f"cannot read kafka.{name}_file {file}: {exc.strerror}") from exc
    if value == "":
        raise KafkaSecurityError(f"kafka.{name}_file {file} is empty")
    return value


def _client_tls_context(cfg: KafkaConfig) -> ssl.SSLContext:
    """The context kafka-python would build from the same settings."""
    ctx = ssl.create_default_context(cafile=str(cfg.ssl_cafile) if cfg.ssl_cafile else None)
    ctx.check_hostname = bool(cfg.extra.get("ssl_check_hostname", True))
    if cfg.ssl_certfile is not None:
        ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile, _secret(cfg, "ssl_password"))
    return ctx


class _NoTlsAnswerError(Exception):
    """The TCP connection opened but the TLS handshake got no answer in time."""


class _ClosedAfterHandshakeError(Exception):
    """The broker finished the handshake and hung up at once: it did not accept the client."""


def _handshake(server: str, ctx: ssl.SSLContext, timeout: float) -> None:
    """One TLS handshake; OSError if nothing listens, _NoTlsAnswerError if nothing answers TLS."""
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    with socket.create_connection((host, int(port)), timeout=timeout) as raw:
        try:
            tls = ctx.wrap_socket(raw, server_hostname=host)
        except TimeoutError as exc:  # e.g. a plain-text broker waiting for a whole frame
            raise _NoTlsAnswerError from exc
        with tls:
            # TLS 1.3 rejects a client certificate after the handshake, with an
            # alert or by just hanging up; a Kafka broker sends nothing unasked,
            # so a short read shows which (silence means it took us)
            tls.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                if tls.recv(1) == b"":
                    raise _ClosedAfterHandshakeError


def diagnose_tls(cfg: KafkaConfig, timeout: float = 3.0) -> str | None:
    """Why a client with these settings cannot talk to the brokers, if TLS is the reason.

    None when the handshake agrees with ``security_protocol`` (or no broker
    answers at all): then TLS is not the problem and the original error stands.
    """
    wants_tls = cfg.security_protocol in ("SSL", "SASL_SSL")
    for server in cfg.bootstrap_servers:
        if wants_tls:
            try:
                ctx = _client_tls_context(cfg)
            except (OSError, ssl.SSLError) as exc:
                return f"cannot load the client's TLS files (kafka.ssl_*): {exc}"
            try:
                _handshake(server, ctx, timeout)
                return None  # one broker that agrees is all bootstrapping needs
            except ssl.SSLCertVerificationError as exc:
                trusted = f"kafka.ssl_cafile={cfg.ssl_cafile}" if cfg.ssl_cafile else "system CAs"
                return (
                    f"the broker {server} presented a certificate this client does not "
                    f"trust ({exc.verify_message}); check kafka.ssl_cafile ({trusted})"
                )
            except ssl.SSLError as exc:
                reason = exc.reason or str(exc)
                if "CERTIFICATE" in reason.upper():
                    return (
                        f"the broker {server} refused this client's certificate ({reason}); "
                        "check kafka.ssl_certfile and kafka.ssl_keyfile"
                    )
                return (
                    f"TLS handshake with {server} failed ({reason}): is it a TLS listener? "
                    f"kafka.security_protocol is {cfg.security_protocol}"
                )
            except _ClosedAfterHandshakeError:
                shown = "this client's" if cfg.ssl_certfile else "no"
                return (
                    f"the broker {server} hung up right after the TLS handshake with "
                    f"{shown} certificate: it refused this client's certificate or wants one "
                    "signed by a CA it trusts; check kafka.ssl_certfile and kafka.ssl_keyfile"
                )
            except _NoTlsAnswerError:
                return (
                    f"the broker {server} did not answer a TLS handshake: it looks like a "
                    f"plain-text listener, but kafka.security_protocol is {cfg.security_protocol}"
                )
            except (OSError, ValueError):
                continue  # nothing listens there: not a TLS problem
        else:
            probe = ssl.create_default_context()
            probe.check_hostname = False
            probe.verify_mode = ssl.CERT_NONE
            try:
                _handshake(server, probe, timeout)
            except (OSError, ssl.SSLError, ValueError, _NoTlsAnswerError):
                continue  # not TLS (or not there): plain text is right
            except _ClosedAfterHandshakeError:
                pass  # TLS that wants a client certificate: TLS all the same
            secure = "SASL_SSL" if cfg.security_protocol == "SASL_PLAINTEXT" else "SSL"
            return (
                f"the broker {server} speaks TLS but kafka.security_protocol is "
                f"{cfg.security_protocol}; set it to {secure} and kafka.ssl_cafile"
            )
    return None


def _connect(cfg: KafkaConfig, build: Callable[..., C], kw: dict[str, Any]) -> C:
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        # checked first: kafka-python waits forever (past bootstrap_timeout_ms)
        # for a handshake that a plain-text listener never answers
        problem = diagnose_tls(cfg)
        if problem is not None:
            raise KafkaSecurityError(problem)
    try:
        return build(**kw)
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        problem = diagnose_tls(cfg)
        if problem is None:
            raise
        raise KafkaSecurityError(problem) from exc


def _extra_for(cfg: KafkaConfig, client: type[Any]) -> dict[str, Any]:
    """Only the pass-through settings this client type understands."""
    known = getattr(client, "DEFAULT_CONFIG", {})
    return {k: v for k, v in cfg.extra.items() if k in known}


def make_producer(cfg: KafkaConfig, role: str) -> KafkaProducer:
    kw = common_kwargs(cfg, role)
    kw.update(
        acks=cfg.acks if cfg.acks == "all" else int(cfg.acks),
        linger_ms=cfg.linger_ms,
        compression_type=cfg.compression_type,
        batch_size=256 * 1024,
        max_request_size=8 * 1024 * 1024,
        retries=2**31 - 1,
        enable_idempotence=cfg.acks == "all",
    )
    kw.update(_extra_for(cfg, KafkaProducer))
    return _connect(cfg, KafkaProducer, kw)


def make_consumer(cfg: KafkaConfig, role: str, group_id: str | None) -> KafkaConsumer:
    kw = common_kwargs(cfg, role)
    kw.update(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=min(cfg.heartbeat_interval_ms, cfg.session_timeout_ms // 3),
        max_poll_records=cfg.max_poll_records,
        max_poll_interval_ms=300_000,
    )
    kw.update(_extra_for(cfg, KafkaConsumer))
    return _connect(cfg, KafkaConsumer, kw)


def make_admin(cfg: KafkaConfig) -> KafkaAdminClient:
    kw = common_kwargs(cfg, "admin")
    kw.update(_extra_for(cfg, KafkaAdminClient))
    return _connect(cfg, KafkaAdminClient, kw)
