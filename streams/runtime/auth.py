"""Kafka credentials for Faust's clients, and a login check that fails fast and clearly."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from streams.runtime.config import Settings


def credentials(settings: Settings) -> Any:
    if settings.security_protocol == "PLAINTEXT":
        return None
    context = None
    if settings.security_protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.security_protocol.startswith("SASL"):
        check_login(settings)
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def check_login(settings: Settings) -> None:
    """Fail fast with a clear KafkaAuthError: aiokafka reports a rejected SCRAM login as
    ``KeyError('v')`` deep in its handshake."""
    from confluent_kafka import KafkaException, Producer

    probe = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_client_config()}
    )
    try:
        probe.list_topics(timeout=settings.session_timeout_s)
    except KafkaException:
        # Serves the error callback, which raises on a rejected login; a broker that is
        # merely unreachable is left to Faust, which waits for it.
        probe.poll(0)
