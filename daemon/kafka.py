"""Kafka connection details from settings: the bootstrap
address and SASL/SSL, for faust and aiokafka alike."""

from __future__ import annotations

import ssl
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context

from .config import KafkaSettings

__all__ = ["aiokafka_options", "faust_credentials"]


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if "SSL" not in kafka.security_protocol:
        return None
    context: ssl.SSLContext = create_ssl_context(  # aiokafka's helper is untyped
        cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
        certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
        keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
    )
    return context


def aiokafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Security keyword arguments for AIOKafkaProducer/Consumer/AdminClient."""
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if (context := _ssl_context(kafka)) is not None:
        options["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    return options


def faust_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    context = _ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
