"""SASL/SSL settings reach both Kafka clients (faust and aiokafka) unchanged."""

from __future__ import annotations

import ssl

import faust

from daemon.config import load_settings
from daemon.kafka import aiokafka_options, faust_credentials


def test_plaintext_passes_no_credentials():
    kafka = load_settings().kafka
    assert aiokafka_options(kafka) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(kafka) is None


def test_sasl_ssl_settings_reach_both_clients():
    kafka = load_settings(kafka={"bootstrap": "kafka1:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "driftd", "sasl_password": "s3cret"}).kafka
    options = aiokafka_options(kafka)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("driftd", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == ("driftd", "s3cret", "SCRAM-SHA-512")
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert "s3cret" not in repr(kafka)  # the settings object never shows the secret


def test_ssl_only_uses_ssl_credentials():
    kafka = load_settings(kafka={"security_protocol": "SSL"}).kafka
    assert isinstance(faust_credentials(kafka), faust.SSLCredentials)
    assert "sasl_mechanism" not in aiokafka_options(kafka)
