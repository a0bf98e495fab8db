"""Kafka over TLS against the real embedded broker, and the SASL settings.

The broker is Tansu behind the embedded broker's TLS listener (see
pipeline/kafka/embedded.py for why Tansu does not terminate TLS itself). The
certificates are made here, per test module, with the ``cryptography``
package: a CA, a server certificate for 127.0.0.1/localhost, a client
certificate for mutual TLS, and an unrelated CA that must not be trusted.

SASL is covered only as configuration: Tansu 0.6.0 can require
authentication, but its users are created through the broker, which then
refuses the (unauthenticated) request, and its memory storage forgets them on
restart — so no SCRAM user can exist on an embedded broker.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kafka import KafkaProducer

from pipeline.cli import main
from pipeline.config import ConfigError, MeshwatchConfig, load_config
from pipeline.detect.stage import DetectorProcessor
from pipeline.kafka.clients import (
    KafkaSecurityError,
    common_kwargs,
    diagnose_tls,
    make_producer,
)
from pipeline.kafka.embedded import EmbeddedBroker
from pipeline.kafka.topics import ensure_topics
from pipeline.schema import DeadLetter, decode, encode
from pipeline.stage.loop import StageRunner
from tests.conftest import REPO
from tests.kafka_helpers import produce, read_records, wait_until
from tests.test_stage_loop import batch

# --- throwaway PKI -------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(folder: Path, name: str, cert: x509.Certificate, key: Any = None) -> Path:
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _ca("meshwatch test CA")
    other = _ca("somebody else's CA")
    server = _leaf(
        "localhost",
        ca,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _leaf("meshwatch-detector", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(d, "server", *server)
    _write(d, "client", *client)
    return Pki(
        ca=_write(d, "ca", ca[0]),
        other_ca=_write(d, "other-ca", other[0]),
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


# --- brokers and configs -------------------------------------------------------


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(cert=pki.server_cert, key=pki.server_key) as b:
        yield b


@pytest.fixture(scope="module")
def mtls_broker(pki: Pki) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca) as b:
        yield b


def tls_config(bootstrap: str, **kafka: Any) -> MeshwatchConfig:
    """A test config for ``bootstrap``; a short bootstrap timeout so a refusal is quick."""
    settings: dict[str, Any] = {
        "bootstrap_servers": [bootstrap],
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "poll_timeout_ms": 100,
        "linger_ms": 0,
        "extra": {"bootstrap_timeout_ms": 3000},
        **kafka,
    }
    return load_config(None, {"kafka": settings, "topics": {"prefix": f"s{uuid.uuid4().hex[:8]}."}})


# --- TLS -----------------------------------------------------------------------


@pytest.mark.integration
def test_producer_to_detector_round_trip_over_tls_with_ca_verification(
    tls_broker: EmbeddedBroker, pki: Pki
) -> None:
    cfg = tls_config(tls_broker.bootstrap, security_protocol="SSL", ssl_cafile=pki.ca)
    assert common_kwargs(cfg.kafka, "t")["ssl_cafile"] == str(pki.ca)
    ensure_topics(cfg)  # the admin client over TLS
    good = [(b"shop/deploy/web", encode(batch(float(i)))) for i in range(1, 5)]
    produce(cfg, cfg.topics.golden, [*good[:2], (b"poison", b"not json"), *good[2:]])

    processor = DetectorProcessor(cfg)
    runner = StageRunner(cfg, processor, cfg.topics.golden, "detector")
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: runner.stats.consumed >= 5, what="five records over TLS")
    finally:
        runner.stop()
        t.join(15)
    assert processor.engine.samples_seen == 4
    assert runner.stats.dead_lettered == 1
    (letter,) = read_records(cfg, cfg.topics.dlq, lambda r: len(r) >= 1)
    assert decode(DeadLetter, letter.value).key == "poison"
    # every byte went through the TLS listener: the plain-text port is not advertised
    assert tls_broker.running


@pytest.mark.integration
def test_a_broker_certificate_from_another_ca_is_a_clear_error(
    tls_broker: EmbeddedBroker, pki: Pki
) -> None:
    cfg = tls_config(tls_broker.bootstrap, security_protocol="SSL", ssl_cafile=pki.other_ca)
    with pytest.raises(KafkaSecurityError) as info:
        make_producer(cfg.kafka, "test")
    message = str(info.value)
    assert "does not trust" in message
    assert f"kafka.ssl_cafile={pki.other_ca}" in message
    assert tls_broker.bootstrap in message


@pytest.mark.integration
def test_system_cas_do_not_trust_a_private_broker(tls_broker: EmbeddedBroker) -> None:
    cfg = tls_config(tls_broker.bootstrap, security_protocol="SSL")
    problem = diagnose_tls(cfg.kafka)
    assert problem is not None
    assert "does not trust" in problem and "system CAs" in problem


@pytest.mark.integration
def test_a_plaintext_client_at_a_tls_listener_is_told_to_use_ssl(
    tls_broker: EmbeddedBroker,
) -> None:
    cfg = tls_config(tls_broker.bootstrap)
    with pytest.raises(
        KafkaSecurityError,
        match=r"speaks TLS but kafka\.security_protocol is PLAINTEXT; set it to SSL",
    ):
        make_producer(cfg.kafka, "test")


@pytest.mark.integration
def test_a_tls_client_at_a_plaintext_listener_is_told_so(broker: str, pki: Pki) -> None:
    cfg = tls_config(broker, security_protocol="SSL", ssl_cafile=pki.ca)
    with pytest.raises(KafkaSecurityError, match="plain-text listener"):
        make_producer(cfg.kafka, "test")


@pytest.mark.integration
def test_the_cli_reports_the_tls_problem_and_fails(
    tls_broker: EmbeddedBroker, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        f"kafka:\n  bootstrap_servers: ['{tls_broker.bootstrap}']\n"
        f"  security_protocol: SSL\n  ssl_cafile: {pki.other_ca}\n"
        "  extra: {bootstrap_timeout_ms: 3000}\n"
    )
    assert main(["silence", "list", "-c", str(f)]) != 0
    err = capsys.readouterr().err
    assert "KafkaSecurityError" in err
    assert "does not trust" in err


@pytest.mark.integration
def test_mutual_tls_needs_a_client_certificate_signed_by_the_ca(
    mtls_broker: EmbeddedBroker, pki: Pki
) -> None:
    without = tls_config(mtls_broker.bootstrap, security_protocol="SSL", ssl_cafile=pki.ca)
    with pytest.raises(KafkaSecurityError, match="refused this client's certificate"):
        make_producer(without.kafka, "test")

    cfg = tls_config(
        mtls_broker.bootstrap,
        security_protocol="SSL",
        ssl_cafile=pki.ca,
        ssl_certfile=pki.client_cert,
        ssl_keyfile=pki.client_key,
    )
    ensure_topics(cfg)
    produce(cfg, cfg.topics.findings, [(b"k", b"v1"), (b"k", b"v2")])
    got = read_records(cfg, cfg.topics.findings, lambda r: len(r) >= 2)
    assert sorted(r.value for r in got) == [b"v1", b"v2"]


def test_tls_broker_needs_both_cert_and_key(pki: Pki) -> None:
    with pytest.raises(ValueError, match="both cert and key"):
        EmbeddedBroker(cert=pki.server_cert)


# --- SASL: the settings kafka-python gets, and where the password comes from ------


def sasl_config(**kafka: Any) -> MeshwatchConfig:
    return load_config(
        None,
        {
            "kafka": {
                "bootstrap_servers": ["kafka-0.kafka:9093", "kafka-1.kafka:9093"],
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "meshwatch",
                "ssl_cafile": "/etc/meshwatch/kafka/ca.crt",
                **kafka,
            }
        },
    )


def test_sasl_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHWATCH_KAFKA__SASL_PLAIN_PASSWORD", "from-env-s3cret")
    kw = common_kwargs(sasl_config().kafka, "detector")
    assert kw == {
        "bootstrap_servers": ["kafka-0.kafka:9093", "kafka-1.kafka:9093"],
        "client_id": "meshwatch-detector",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "meshwatch",
        "sasl_plain_password": "from-env-s3cret",
        "ssl_cafile": "/etc/meshwatch/kafka/ca.crt",
    }
    # every key is one kafka-python knows (a typo would be ignored silently)
    unknown = set(kw) - set(KafkaProducer.DEFAULT_CONFIG)
    assert not unknown, unknown


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_password_from_a_mounted_file(tmp_path: Path, mechanism: str) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file-s3cret\n")  # as `kubectl create secret --from-file` leaves it
    cfg = sasl_config(sasl_mechanism=mechanism, sasl_plain_password_file=str(secret))
    kw = common_kwargs(cfg.kafka, "alerter")
    assert kw["sasl_mechanism"] == mechanism
    assert kw["sasl_plain_password"] == "from-file-s3cret"


def test_key_passphrase_from_a_file_for_client_certificates(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("key-passphrase")
    cfg = sasl_config(
        security_protocol="SSL",
        sasl_mechanism=None,
        sasl_plain_username=None,
        ssl_certfile="/etc/meshwatch/kafka/tls.crt",
        ssl_keyfile="/etc/meshwatch/kafka/tls.key",
        ssl_password_file=str(secret),
    )
    kw = common_kwargs(cfg.kafka, "collector")
    assert kw["ssl_password"] == "key-passphrase"
    assert kw["ssl_certfile"] == "/etc/meshwatch/kafka/tls.crt"
    assert "sasl_mechanism" not in kw


def test_sasl_without_a_password_fails_when_the_client_is_built() -> None:
    cfg = sasl_config()  # valid on its own: the pod's environment may add the password
    with pytest.raises(KafkaSecurityError, match="MESHWATCH_KAFKA__SASL_PLAIN_PASSWORD"):
        common_kwargs(cfg.kafka, "detector")


def test_a_missing_password_file_names_the_setting(tmp_path: Path) -> None:
    cfg = sasl_config(sasl_plain_password_file=str(tmp_path / "absent"))
    with pytest.raises(KafkaSecurityError, match=r"cannot read kafka\.sasl_plain_password_file"):
        common_kwargs(cfg.kafka, "detector")


def test_password_inline_and_from_a_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        sasl_config(sasl_plain_password="x", sasl_plain_password_file=str(tmp_path / "p"))
    assert any("at most one of sasl_plain_password" in p for p in info.value.problems)


def test_sasl_needs_a_username() -> None:
    with pytest.raises(ConfigError) as info:
        sasl_config(sasl_plain_username=None)
    assert any("needs sasl_plain_username" in p for p in info.value.problems)


def test_config_check_never_prints_kafka_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHWATCH_KAFKA__SASL_PLAIN_PASSWORD", "env-sasl-s3cret")
    monkeypatch.setenv("MESHWATCH_KAFKA__SSL_PASSWORD", "env-key-s3cret")
    f = tmp_path / "c.yaml"
    f.write_text(
        "kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-256\n"
        "  sasl_plain_username: meshwatch\n  ssl_cafile: /etc/ca.crt\n"
    )
    for fmt in ("yaml", "json"):
        assert main(["config", "check", str(f), "--format", fmt]) == 0
        out = capsys.readouterr()
        text = out.out + out.err
        assert "env-sasl-s3cret" not in text
        assert "env-key-s3cret" not in text
        assert "**********" in text
        assert "meshwatch" in text


def test_shipped_configs_carry_no_kafka_secret() -> None:
    """Secrets reach a deployment only through the environment or mounted files."""
    files = [
        REPO / "config" / "default.yaml",
        REPO / "deploy" / "kustomize" / "base" / "config" / "default.yaml",
        REPO / "deploy" / "kustomize" / "overlays" / "example" / "cluster.yaml",
    ]
    for f in files:
        kafka = load_config(f).kafka
        assert kafka.sasl_plain_password is None, f
        assert kafka.ssl_password is None, f
    env = (
        REPO / "deploy" / "kustomize" / "overlays" / "example" / "secrets" / "kafka.env"
    ).read_text()
    assert "MESHWATCH_KAFKA__SASL_PLAIN_PASSWORD=" in env
