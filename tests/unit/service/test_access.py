"""The HTTP service's access rules, as pure decisions (the integration tests send them over
real sockets)."""

from __future__ import annotations

import base64
import dataclasses
import socket

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streams.runtime.config import Settings
from streams.service.access import (
    AccessPolicy,
    is_loopback_host,
    listen_refusal,
    route_class,
)

BASE = Settings()


def policy(**overrides: object) -> AccessPolicy:
    return AccessPolicy(dataclasses.replace(BASE, **overrides))  # type: ignore[arg-type]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        ("/publish_log_v1", "kumo"),
        ("/webhooks/kumomta", "kumo"),
        ("/get_config_v1/shaping.toml", "kumo"),
        ("/get_suspension_v1/suspended.json", "kumo"),
        ("/get_bounce_v1/bounced.json", "kumo"),
        ("/subscribe_event_v1", "kumo"),
        ("/webhooks/sparkpost", "sparkpost"),
        ("/v1/addresses/{address}", "operator"),
        ("/healthz", "operator"),
        # A look-alike is not a KumoMTA route.
        ("/publish_log_v1x", "operator"),
    ],
)
def test_routes_are_classified_by_their_registered_pattern(pattern, kind):
    assert route_class(pattern) == kind


def test_kumo_routes_are_open_to_trusted_addresses_only():
    rules = policy(http_trusted_cidrs="127.0.0.1/32,10.1.0.0/16,::1/128")
    for peer in ("127.0.0.1", "10.1.200.3", "::1", "::ffff:127.0.0.1"):
        assert rules.check("/publish_log_v1", "POST", peer, None) is None, peer
    for peer in ("127.0.0.2", "10.2.0.1", "192.0.2.1", "::2", None, "not-an-ip"):
        denial = rules.check("/subscribe_event_v1", "GET", peer, None)
        assert denial is not None and denial.status == 403, peer
    # Credentials do not open a KumoMTA route to an untrusted caller.
    configured = policy(
        http_trusted_cidrs="127.0.0.1/32", webhook_user="u", webhook_password="p", http_token="t"
    )
    denial = configured.check("/webhooks/kumomta", "POST", "127.0.0.2", basic("u", "p"))
    assert denial is not None and denial.status == 403


def test_sparkpost_needs_basic_auth_once_configured():
    assert policy().check("/webhooks/sparkpost", "POST", "192.0.2.1", None) is None
    rules = policy(webhook_user="spark", webhook_password="s3cret:with colon")
    assert (
        rules.check("/webhooks/sparkpost", "POST", "192.0.2.1", basic("spark", "s3cret:with colon"))
        is None
    )
    for header in (
        None,
        basic("spark", "wrong"),
        basic("other", "s3cret:with colon"),
        basic("spark", "s3cret"),
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Bearer s3cret:with colon",
        "",
    ):
        denial = rules.check("/webhooks/sparkpost", "POST", "127.0.0.1", header)
        assert denial is not None and denial.status == 401, header
        assert denial.challenge is not None and denial.challenge.startswith("Basic realm=")


def test_operator_api_token_is_required_for_writes_and_optional_for_reads():
    rules = policy(http_token="tok-123")
    assert rules.check("/v1/x", "GET", "192.0.2.1", None) is None
    assert rules.check("/v1/x", "GET", "192.0.2.1", "Bearer tok-123") is None
    assert rules.check("/v1/x", "POST", "192.0.2.1", "Bearer tok-123") is None
    assert rules.check("/v1/x", "DELETE", "127.0.0.1", "bearer tok-123") is None
    for method, header in (
        ("POST", None),
        ("PUT", "Bearer wrong"),
        ("GET", "Bearer wrong"),  # a token that is sent must be right, even for a read
        ("GET", "Basic dTpw"),
    ):
        denial = rules.check("/v1/x", method, "127.0.0.1", header)
        assert denial is not None and denial.status == 401, (method, header)
        assert denial.challenge is not None and denial.challenge.startswith("Bearer realm=")


def test_without_a_token_operator_writes_come_from_loopback_only():
    rules = policy()
    assert rules.check("/v1/x", "POST", "127.0.0.1", None) is None
    assert rules.check("/v1/x", "POST", "::1", None) is None
    assert rules.check("/v1/x", "GET", "192.0.2.1", None) is None
    denial = rules.check("/v1/x", "POST", "192.0.2.1", None)
    assert denial is not None and denial.status == 403


@given(st.binary(max_size=64), st.text(max_size=64))
def test_only_the_right_credentials_open_a_protected_route(raw, text):
    rules = policy(webhook_user="spark", webhook_password="pw", http_token="tok")
    assume(raw != b"spark:pw" and "tok" not in text)
    for header in ("Basic " + base64.b64encode(raw).decode(), text, "Bearer " + text):
        denial = rules.check("/webhooks/sparkpost", "POST", "127.0.0.1", header)
        assert denial is not None and denial.status == 401
        denial = rules.check("/v1/x", "POST", "127.0.0.1", header)
        assert denial is not None and denial.status == 401


def test_loopback_hosts():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "192.0.2.10", "[2001:db8::1]"):
        assert not is_loopback_host(host), host


def test_a_name_is_loopback_only_if_every_address_it_resolves_to_is():
    def resolver(*addresses: str):
        def resolve(host: str, port: object) -> list:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in addresses]

        return resolve

    assert is_loopback_host("box", resolver("127.0.1.1"))
    assert not is_loopback_host("box", resolver("127.0.1.1", "192.0.2.7"))
    assert not is_loopback_host("box", resolver())

    def unknown(host: str, port: object) -> list:
        raise socket.gaierror("no such name")

    assert not is_loopback_host("nowhere.invalid", unknown)


def test_the_service_refuses_to_listen_beyond_loopback_without_credentials():
    assert listen_refusal(dataclasses.replace(BASE, http_listen="127.0.0.1:8008")) is None
    refusal = listen_refusal(dataclasses.replace(BASE, http_listen="0.0.0.0:8008"))
    assert refusal is not None and "MTA_HTTP_TOKEN" in refusal and "0.0.0.0:8008" in refusal
    for creds in (
        {"http_token": "t"},
        {"webhook_user": "u", "webhook_password": "p"},
    ):
        settings = dataclasses.replace(BASE, http_listen="[::]:8008", **creds)  # type: ignore[arg-type]
        assert listen_refusal(settings) is None
