"""SASL/SSL settings reach both Kafka clients (faust and aiokafka) unchanged."""

from __future__ import annotations

import asyncio
import ssl

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from daemon.config import load_settings
from daemon.kafka import aiokafka_options, faust_credentials
from tests.tlscerts import self_signed


def test_plaintext_passes_no_credentials():
    kafka = load_settings().kafka
    assert aiokafka_options(kafka) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(kafka) is None


def test_sasl_ssl_settings_reach_both_clients():
    kafka = load_settings(
        kafka={
            "bootstrap": "kafka1:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "driftd",
            "sasl_password": "s3cret",
        }
    ).kafka
    options = aiokafka_options(kafka)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("driftd", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "driftd",
        "s3cret",
        "SCRAM-SHA-512",
    )
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert "s3cret" not in repr(kafka)  # the settings object never shows the secret


def test_ssl_only_uses_ssl_credentials():
    kafka = load_settings(kafka={"security_protocol": "SSL"}).kafka
    assert isinstance(faust_credentials(kafka), faust.SSLCredentials)
    assert "sasl_mechanism" not in aiokafka_options(kafka)


@pytest.mark.parametrize(
    "kafka",
    [
        {},
        {"security_protocol": "SSL"},
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_username": "driftd",
            "sasl_password": "s3cret",
        },
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": "driftd",
            "sasl_password": "s3cret",
        },
    ],
    ids=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
)
def test_faust_hands_its_kafka_client_what_the_aiokafka_clients_get(kafka):
    """faust's aiokafka driver turns the credentials into the same keyword arguments that our own
    aiokafka clients (topic admin, replay producer) get, for every protocol."""
    settings = load_settings(kafka=kafka).kafka
    ours = aiokafka_options(settings)
    fausts = {
        k: v
        for k, v in credentials_to_aiokafka_auth(faust_credentials(settings)).items()
        if v is not None
    }
    assert fausts.keys() == ours.keys()
    for key in ours:
        if key == "ssl_context":
            assert (
                isinstance(fausts[key], ssl.SSLContext)
                and fausts[key].verify_mode == ours[key].verify_mode == ssl.CERT_REQUIRED
            )
        else:
            assert fausts[key] == ours[key], key


def test_sasl_ssl_files_reach_the_ssl_context_and_aiokafka_accepts_the_options(tmp_path):
    ca, _ = self_signed(tmp_path, "ca", hosts=("kafka-ca.example",))
    client_cert, client_key = self_signed(tmp_path, "client")
    kafka = load_settings(
        kafka={
            "bootstrap": "kafka1:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "driftd",
            "sasl_password": "s3cret",
            "ssl_cafile": ca,
            "ssl_certfile": client_cert,
            "ssl_keyfile": client_key,
        }
    ).kafka
    options = aiokafka_options(kafka)
    context = options["ssl_context"]
    # our CA
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == [
        "kafka-ca.example"
    ]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert faust_credentials(kafka).ssl_context.get_ca_certs() == context.get_ca_certs()

    # aiokafka validates the combination (SASL_SSL needs a context, PLAIN a user and password)
    async def build() -> None:
        AIOKafkaProducer(bootstrap_servers="kafka1:9093", **options)
        AIOKafkaAdminClient(bootstrap_servers="kafka1:9093", **options)

    asyncio.run(build())
