"""kafka-python clients built from the configuration.

One place turns :class:`KafkaConfig` into client keyword arguments, so
security settings (TLS, SASL) and the pass-through ``extra`` map behave the
same for every stage, and no stage ever sees a password in plain text
before the client needs it.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from pipeline.config import KafkaConfig


def common_kwargs(cfg: KafkaConfig, role: str) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "bootstrap_servers": list(cfg.bootstrap_servers),
        "client_id": f"{cfg.client_id}-{role}",
        "security_protocol": cfg.security_protocol,
    }
    if cfg.sasl_mechanism:
        kw["sasl_mechanism"] = cfg.sasl_mechanism
        kw["sasl_plain_username"] = cfg.sasl_plain_username
        if cfg.sasl_plain_password is not None:
            kw["sasl_plain_password"] = cfg.sasl_plain_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(cfg, name)
        if value is not None:
            kw[name] = str(value)
    if cfg.ssl_password is not None:
        kw["ssl_password"] = cfg.ssl_password.get_secret_value()
    return kw


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
    return KafkaProducer(**kw)


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
    return KafkaConsumer(**kw)


def make_admin(cfg: KafkaConfig) -> KafkaAdminClient:
    kw = common_kwargs(cfg, "admin")
    kw.update(_extra_for(cfg, KafkaAdminClient))
    return KafkaAdminClient(**kw)
