"""KumoMTA's TSA daemon API, served from our throttle settings, so that kumod can use this
service in place of its tsa-daemon (``assets/policy-extras/shaping.lua`` consumes it):

- ``GET /get_config_v1/shaping.toml``: the settings off baseline as a shaping file
  (kumod loads it every 30 to 60 s);
- ``GET /get_suspension_v1/suspended.json``: the current suspensions,
  ``{"ready_q": [...], "sched_q": []}``; ``GET /get_bounce_v1/bounced.json``: ``[]`` (the
  controller never bounces a queue);
- websocket ``/subscribe_event_v1``: on connect the current suspensions, then each new one
  (or a later expiry of one), as ``{"ReadyQSuspension": {...}}`` text frames; the legacy
  ``/subscribe_suspension_v1`` sends the same as ``{"ReadyQ": {...}}``.

What is rendered, and how: ``streams/adapters/kumo_tsa.py``. The inputs are in Redis, so
every instance of the service serves the same: the throttle view (``ViewStore.scan``) and
the sites the ingest routes learnt (``kumo_sites``). New suspensions reach subscribers
when the view updater publishes a change on ``<prefix>:throttle`` (or a new site is
learnt), and at the latest after ``POLL_S``. While Redis does not answer, the routes serve
what they last read (503 when they never read anything). The operator's KumoMTA shaping
file (``MTA_KUMO_SHAPING_FILE``) caps every value; it is read again when it changes (a
broken edit is logged and the last good version kept; a broken file stops the start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import redis
import redis.asyncio as aioredis
from aiohttp import WSCloseCode, web

from streams.adapters import kumo_tsa
from streams.adapters.kumo_limits import OperatorShaping
from streams.service import kumo_sites
from streams.service.context import ServiceContext
from streams.service.errors import error_response

log = logging.getLogger(__name__)

POLL_S = 5.0
SEND_TIMEOUT_S = 10.0
HEARTBEAT_S = 30.0
RETRY_AFTER_S = 30


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Snapshot(NamedTuple):
    decisions: list[kumo_tsa.Decision]
    sites: list[kumo_tsa.KnownSite]


@dataclass(eq=False)
class _Peer:
    """One subscriber, and the expiry last sent for each site (sends only move it later:
    kumod keeps the last suspension it is given per ready queue)."""

    ws: web.WebSocketResponse
    legacy: bool
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sent: dict[str, int] = field(default_factory=dict)

    async def offer(self, items: list[kumo_tsa.Suspension], now_ms: int) -> None:
        async with self.lock:
            for item in items:
                if self.sent.get(item.site_name, -1) >= item.expires_ms:
                    continue
                await asyncio.wait_for(self.ws.send_str(item.event(self.legacy)), SEND_TIMEOUT_S)
                self.sent[item.site_name] = item.expires_ms
            for site in [s for s, until in self.sent.items() if until <= now_ms]:
                del self.sent[site]


class Tsa:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.rules = kumo_sites.rules_of(ctx)
        self.peers: set[_Peer] = set()
        self.wake: asyncio.Event = ctx.extras.setdefault(kumo_sites.WAKE, asyncio.Event())
        self.operator: OperatorShaping | None = None
        self._stamp: tuple[int, int] | None = None
        self._error: str | None = None
        self._last: _Snapshot | None = None
        self._bad = 0  # unusable throttle records last seen, to log a change once
        self._down = False  # Redis failed at the last read, to log an outage once
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh_operator(at_start=True)

    def _refresh_operator(self, at_start: bool = False) -> None:
        path = self.ctx.settings.kumo_shaping_file
        if not path:
            return
        try:
            stat = os.stat(path)
            if (stat.st_mtime_ns, stat.st_size) == self._stamp:
                return
            with open(path, encoding="utf-8") as f:
                self.operator = OperatorShaping(f.read(), path, self.rules.group_for)
            self._stamp = (stat.st_mtime_ns, stat.st_size)
        except (OSError, ValueError) as exc:
            if at_start:
                raise
            if str(exc) != self._error:  # once per problem, not at every poll
                log.error("%s: keeping the limits read before: %s", path, exc)
            self._error, self._stamp = str(exc), None
        else:
            self._error = None

    def _read(self) -> _Snapshot:
        """Blocking: the operator's file, the throttle view and the known sites."""
        self._refresh_operator()
        records = self.ctx.views.scan("throttle")
        found, bad = kumo_tsa.decisions(records, self.rules)
        if bad != self._bad:
            log.warning("%d throttle records in Redis are unusable; left out", bad)
            self._bad = bad
        return _Snapshot(found, kumo_sites.known_sites(self.ctx.views))

    async def snapshot(self) -> _Snapshot:
        try:
            snap = await asyncio.to_thread(self._read)
        except redis.RedisError as exc:
            if not self._down:
                log.warning("Redis unavailable (%s); serving the last settings read", exc)
                self._down = True
            if self._last is None:
                raise
            return self._last
        if self._down:
            log.info("Redis answers again")
            self._down = False
        self._last = snap
        return snap

    async def current(self) -> list[kumo_tsa.Suspension]:
        snap = await self.snapshot()
        return await asyncio.to_thread(
            kumo_tsa.suspensions, snap.decisions, snap.sites, self.rules, _now_ms()
        )

    async def shaping(self, _request: web.Request) -> web.Response:
        try:
            snap = await self.snapshot()
        except redis.RedisError:
            return _unavailable()
        text = await asyncio.to_thread(self._render, snap)
        return web.Response(text=text, content_type="text/plain")

    def _render(self, snap: _Snapshot) -> str:
        entries = kumo_tsa.shaping_entries(snap.decisions, snap.sites, self.rules, self.operator)
        return kumo_tsa.render_shaping_toml(entries)

    async def suspended(self, _request: web.Request) -> web.Response:
        try:
            items = await self.current()
        except redis.RedisError:
            return _unavailable()
        return web.Response(text=kumo_tsa.suspended_json(items), content_type="application/json")

    async def subscribe(self, request: web.Request, legacy: bool) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        peer = _Peer(ws, legacy)
        self.peers.add(peer)
        try:
            # Without Redis, the broadcaster sends them once it answers.
            with contextlib.suppress(redis.RedisError):
                await peer.offer(await self.current(), _now_ms())
            async for _message in ws:
                pass  # kumod sends nothing; reading answers pings and sees the close
        except (TimeoutError, ConnectionError) as exc:
            log.info("TSA subscriber %s gone: %s", request.remote, exc)
        finally:
            self.peers.discard(peer)
        return ws

    async def _broadcast(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_S)
            self.wake.clear()
            if not self.peers:
                continue
            try:
                await self._send_new()
            except redis.RedisError:
                pass  # logged by snapshot(); sent once Redis answers
            except Exception:
                # A bug, not an outage: say so loudly and keep serving.
                log.exception("suspensions not sent to the TSA subscribers")

    async def _send_new(self) -> None:
        items = await self.current()
        now = _now_ms()
        peers = list(self.peers)
        sent = (peer.offer(items, now) for peer in peers)
        results = await asyncio.gather(*sent, return_exceptions=True)
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, Exception):
                log.info("dropping a TSA subscriber: %r", result)
                self.peers.discard(peer)
                await peer.ws.close(code=WSCloseCode.GOING_AWAY)

    async def _listen(self) -> None:
        """Wake the broadcaster on every change the view updater publishes."""
        channel = f"{self.ctx.views.prefix}:throttle"
        backoff = 1.0
        while True:
            client = aioredis.Redis.from_url(
                self.ctx.settings.redis_url, socket_connect_timeout=2, socket_keepalive=True
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                backoff = 1.0
                self.wake.set()  # what changed while not subscribed
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self.wake.set()
            except (redis.RedisError, OSError) as exc:
                log.warning("throttle notifications lost (%s); polling every %.0f s", exc, POLL_S)
            finally:
                await pubsub.aclose()
                await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def start(self, _app: web.Application) -> None:
        self._tasks = [asyncio.create_task(self._broadcast()), asyncio.create_task(self._listen())]

    async def close_peers(self, _app: web.Application) -> None:
        for peer in list(self.peers):
            await peer.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def stop(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _unavailable() -> web.Response:
    return error_response(503, "Redis unavailable", retry_after_s=RETRY_AFTER_S)


async def _bounced(_request: web.Request) -> web.Response:
    return web.Response(text="[]", content_type="application/json")


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    tsa = Tsa(ctx)

    async def subscribe_event(request: web.Request) -> web.WebSocketResponse:
        return await tsa.subscribe(request, legacy=False)

    async def subscribe_legacy(request: web.Request) -> web.WebSocketResponse:
        return await tsa.subscribe(request, legacy=True)

    app.router.add_get("/get_config_v1/shaping.toml", tsa.shaping)
    app.router.add_get("/get_suspension_v1/suspended.json", tsa.suspended)
    app.router.add_get("/get_bounce_v1/bounced.json", _bounced)
    app.router.add_get("/subscribe_event_v1", subscribe_event)
    app.router.add_get("/subscribe_suspension_v1", subscribe_legacy)
    app.on_startup.append(tsa.start)
    app.on_shutdown.append(tsa.close_peers)
    app.on_cleanup.append(tsa.stop)
