"""Who may call which route of the HTTP service: one rule set, one middleware, for every
route (ingest, the KumoMTA TSA API, the operator API).

- KumoMTA routes: KumoMTA's publisher and subscriber send no credentials, so callers are
  trusted by address (``MTA_HTTP_TRUSTED_CIDRS``); any other caller gets 403.
- ``/webhooks/sparkpost``: HTTP Basic auth (``MTA_WEBHOOK_USER`` / ``MTA_WEBHOOK_PASSWORD``)
  when configured; 401 with a ``WWW-Authenticate`` challenge otherwise.
- everything else (the operator API, ``/healthz``): a bearer token (``MTA_HTTP_TOKEN``).
  Writes need it; reads may go without, but a token that is sent must be right. With no
  token configured, writes are taken from loopback callers only.

A route is classified by the pattern it was registered with, not by the raw request path,
so no spelling of a path (percent-encoding, trailing parts) reaches a handler under
another route's rule. Credentials are compared in constant time.

The service refuses to listen beyond loopback while no credential is configured
(``listen_refusal``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from streams.runtime.config import Settings
from streams.service.errors import error_response

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

KUMO_ROUTES = (
    "/publish_log_v1",
    "/webhooks/kumomta",
    "/get_config_v1",
    "/get_suspension_v1",
    "/get_bounce_v1",
    "/subscribe_event_v1",
    "/subscribe_suspension_v1",
)
SPARKPOST_ROUTE = "/webhooks/sparkpost"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = "mta-feedback"


@dataclass(frozen=True, slots=True)
class Denial:
    status: int  # 401 or 403
    reason: str
    challenge: str | None = None  # the WWW-Authenticate value of a 401

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": self.challenge} if self.challenge else None
        return error_response(self.status, self.reason, headers=headers)


def route_class(pattern: str) -> str:
    """``kumo``, ``sparkpost`` or ``operator`` for a registered route pattern."""
    if any(pattern == p or pattern.startswith(p + "/") for p in KUMO_ROUTES):
        return "kumo"
    if pattern == SPARKPOST_ROUTE:
        return "sparkpost"
    return "operator"


def _address(peer: str | None) -> IPAddress | None:
    if not peer:
        return None
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


class AccessPolicy:
    """The access rules for one service's settings."""

    def __init__(self, settings: Settings) -> None:
        self.trusted: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in settings.http_trusted_cidrs.split(",")
            if part.strip()
        )
        self.user = settings.webhook_user
        self.password = settings.webhook_password
        self.token = settings.http_token

    def check(
        self, pattern: str, method: str, peer: str | None, authorization: str | None
    ) -> Denial | None:
        """None if the call may go on, else why not."""
        kind = route_class(pattern)
        if kind == "kumo":
            address = _address(peer)
            if address is None or not any(address in net for net in self.trusted):
                return Denial(403, "caller address is not in MTA_HTTP_TRUSTED_CIDRS")
            return None
        if kind == "sparkpost":
            if self.user and not self._basic_ok(authorization):
                return Denial(
                    401,
                    "webhook credentials missing or wrong",
                    f'Basic realm="{REALM}", charset="UTF-8"',
                )
            return None
        return self._operator(method, peer, authorization)

    def _basic_ok(self, authorization: str | None) -> bool:
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Both compared whatever the first gives, so the time says nothing of either.
        return bool(sep) & _same(user, self.user) & _same(password, self.password)

    def _operator(self, method: str, peer: str | None, authorization: str | None) -> Denial | None:
        challenge = f'Bearer realm="{REALM}"'
        write = method.upper() not in READ_METHODS
        if not self.token:
            address = _address(peer)
            if write and (address is None or not address.is_loopback):
                return Denial(403, "writes need MTA_HTTP_TOKEN, or a loopback caller")
            return None
        if authorization is None:
            return Denial(401, "bearer token required", challenge) if write else None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not _same(token.strip(), self.token):
            return Denial(401, "bearer token wrong", f'{challenge}, error="invalid_token"')
        return None


POLICY = web.AppKey("access_policy", AccessPolicy)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Applies ``request.app[POLICY]`` to every routed request (unrouted ones get 404)."""
    resource = request.match_info.route.resource
    if resource is not None:
        denial = request.app[POLICY].check(
            resource.canonical,
            request.method,
            request.remote,
            request.headers.get("Authorization"),
        )
        if denial is not None:
            return denial.response()
    return await handler(request)


def is_loopback_host(host: str, resolve: Callable[..., list[Any]] = socket.getaddrinfo) -> bool:
    """Whether listening on ``host`` reaches only this machine (every address it resolves to
    is loopback; a wildcard such as 0.0.0.0 or :: is not)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = resolve(host, None)
    except OSError:
        return False
    addresses = {_address(str(info[4][0])) for info in infos}
    return bool(addresses) and all(a is not None and a.is_loopback for a in addresses)


def listen_refusal(settings: Settings) -> str | None:
    """Why the service must not listen on ``MTA_HTTP_LISTEN``, or None."""
    host = settings.http_listen.rpartition(":")[0]
    if is_loopback_host(host) or settings.webhook_user or settings.http_token:
        return None
    return (
        f"refusing to listen on {settings.http_listen}, beyond loopback, while no credential "
        "is configured: set MTA_WEBHOOK_USER and MTA_WEBHOOK_PASSWORD and/or MTA_HTTP_TOKEN, "
        "or listen on a loopback address"
    )
