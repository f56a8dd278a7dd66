"""The KumoMTA TSA API of the service over real sockets and the real Redis: throttle settings
written as the view updater writes them, sites learnt from KumoMTA records, then what kumod
would read: shaping.toml, suspended.json, bounced.json and the websockets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streams.adapters.kumo_tsa import rfc3339
from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.service import kumo_routes, kumo_sites, server
from streams.service.context import ServiceContext
from streams.serving.views import ViewStore
from streams.testing.proxy import TcpProxy
from streams.testing.services import free_port

pytestmark = [pytest.mark.redis]

# How soon a notified change reaches a subscriber, at most (on a loaded 2-core machine).
PUSH_S = 3.0

HOUR_MS = 3_600_000
YAHOO_MX = "mta5.am0.yahoodns.net"
GMAIL_MX = "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"


def kumo_record(source: str, domain: str, mx_site: str, n: int = 0) -> dict[str, Any]:
    """A TransientFailure as KumoMTA logs it (docs/reference/log_record.md of KumoCorp/kumomta;
    our own values)."""
    now = int(time.time())
    return {
        "type": "TransientFailure",
        "id": f"{n:032x}",
        "sender": "bounces@sender.example",
        "recipient": [f"user{n}@{domain}"],
        "queue": f"campaign:tenant@{domain}",
        "site": f"{source}->{mx_site}@smtp_client",
        "size": 2048,
        "response": {
            "code": 421,
            "enhanced_code": {"class": 4, "subject": 7, "detail": 0},
            "content": "[TSS04] Messages from 192.0.2.30 temporarily deferred",
            "command": ".",
        },
        "peer_address": {"name": mx_site.rpartition(")?.")[2], "addr": "198.51.100.7"},
        "timestamp": now,
        "created": now - 5,
        "num_attempts": 1,
        "egress_pool": "pool0",
        "egress_source": source,
    }


def throttle(key: str, version: int, **values: Any) -> dict[str, Any]:
    """A throttle record as the controller publishes it (schemas/throttle.avsc)."""
    record = {
        "event_id": f"{key}:{version}",
        "event_time": int(time.time() * 1000),
        "key": key,
        "scope": key.partition(":")[0],
        "mode": "backoff",
        "max_rate_per_hour": 18000,
        "max_connections": 10,
        "max_messages_per_connection": 20,
        "retry_interval_s": 900,
        "suspended_until": None,
        "reason": f"test {key} v{version}",
        "version": version,
    }
    return {**record, **values}


def suspended(key: str, version: int, until_ms: int, **values: Any) -> dict[str, Any]:
    return throttle(key, version, mode="suspended", suspended_until=until_ms, **values)


@contextlib.asynccontextmanager
async def serving(ctx: ServiceContext, app: web.Application | None = None) -> AsyncIterator[str]:
    """The TSA routes (or a whole app) on a free loopback port; yields the base URL."""
    if app is None:
        app = web.Application()
        kumo_routes.add_routes(app, ctx)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as response:
        return response.status, response.content_type, await response.text()


async def frames(ws: aiohttp.ClientWebSocketResponse, count: int, timeout: float) -> list[Any]:
    out = []
    for _ in range(count):
        message = await ws.receive(timeout=timeout)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        out.append(json.loads(message.data))
    return out


def context(settings: Settings) -> ServiceContext:
    return ServiceContext(settings, ViewStore.from_settings(settings))


def test_shaping_suspensions_and_websocket_pushes_follow_redis(make_settings, monkeypatch):
    # No poll during the test: every frame must come from a notification.
    monkeypatch.setattr(kumo_routes, "POLL_S", 600.0)
    settings = make_settings(create_topics=False)
    asyncio.run(_follow_redis(context(settings)))


async def _follow_redis(ctx: ServiceContext) -> None:
    now = int(time.time() * 1000)
    await kumo_sites.note(
        ctx,
        [
            kumo_record("src1", "yahoo.com", YAHOO_MX, 1),
            kumo_record("src2", "ymail.com", YAHOO_MX, 2),
            kumo_record("src1", "gmail.com", GMAIL_MX, 3),
            {"type": "Reception", "id": "x"},  # no site: nothing learnt
        ],
    )
    yahoo_until = now + 2 * HOUR_MS
    ctx.views.write(
        Topic.THROTTLE,
        [
            throttle("group:yahoo", 1, max_rate_per_hour=9000, max_connections=5),
            suspended("ip_group:src2|yahoo", 1, yahoo_until),
        ],
    )
    async with serving(ctx) as base, aiohttp.ClientSession() as session:
        status, kind, text = await get(session, f"{base}/get_config_v1/shaping.toml")
        assert (status, kind) == (200, "text/plain")
        shaping = tomllib.loads(text)
        assert shaping == {
            "yahoo.com": {
                "mx_rollup": True,
                "sources": {
                    src: {"connection_limit": 5, "max_message_rate": "9000/h"}
                    for src in ("src1", "src2")
                },
            }
        }
        assert "# Number of entries: 4" in text and "# reason: mta-feedback group:yahoo" in text

        status, kind, text = await get(session, f"{base}/get_suspension_v1/suspended.json")
        assert (status, kind) == (200, "application/json")
        body = json.loads(text)
        assert body["sched_q"] == []
        assert [(s["site_name"], s["source"], s["expires"]) for s in body["ready_q"]] == [
            (f"src2->{YAHOO_MX}@smtp_client", "src2", rfc3339(yahoo_until))
        ]
        assert await get(session, f"{base}/get_bounce_v1/bounced.json") == (
            200,
            "application/json",
            "[]",
        )

        async with session.ws_connect(f"{base}/subscribe_event_v1") as ws:
            (first,) = await frames(ws, 1, timeout=10)
            assert first == {"ReadyQSuspension": body["ready_q"][0]}

            # A new suspension is pushed as soon as the view updater publishes it.
            google_until = now + HOUR_MS
            ctx.views.write(Topic.THROTTLE, [suspended("group:google", 1, google_until)])
            (pushed,) = await frames(ws, 1, timeout=PUSH_S)
            item = pushed["ReadyQSuspension"]
            assert (item["site_name"], item["expires"]) == (
                f"src1->{GMAIL_MX}@smtp_client",
                rfc3339(google_until),
            )
            assert item["reason"] == "mta-feedback group:google: test group:google v1"

            # A source newly seen at a suspended site gets the suspension too.
            await kumo_sites.note(ctx, [kumo_record("src3", "yahoo.com", YAHOO_MX, 4)])
            ctx.views.write(Topic.THROTTLE, [suspended("group:yahoo", 2, yahoo_until)])
            got = await frames(ws, 2, timeout=PUSH_S)
            assert sorted(f["ReadyQSuspension"]["site_name"] for f in got) == [
                f"src1->{YAHOO_MX}@smtp_client",
                f"src3->{YAHOO_MX}@smtp_client",
            ]

            # A later expiry is sent again; an earlier one never (nothing lifts early).
            ctx.views.write(Topic.THROTTLE, [suspended("group:google", 2, google_until + 60_000)])
            (later,) = await frames(ws, 1, timeout=PUSH_S)
            assert later["ReadyQSuspension"]["expires"] == rfc3339(google_until + 60_000)
            ctx.views.write(Topic.THROTTLE, [suspended("group:google", 3, google_until)])
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive(timeout=PUSH_S)

        async with session.ws_connect(f"{base}/subscribe_suspension_v1") as legacy:
            got = await frames(legacy, 4, timeout=10)
            assert [next(iter(f)) for f in got] == ["ReadyQ"] * 4
            expiries = [f["ReadyQ"]["expires"] for f in got]
            assert expiries == sorted(expiries)  # the daemon's order: by expiry


def test_a_change_whose_notification_was_lost_is_sent_by_the_next_poll(make_settings, monkeypatch):
    monkeypatch.setattr(kumo_routes, "POLL_S", 0.5)
    settings = make_settings(create_topics=False)
    asyncio.run(_lost_notification(context(settings)))


async def _lost_notification(ctx: ServiceContext) -> None:
    await kumo_sites.note(ctx, [kumo_record("src1", "yahoo.com", YAHOO_MX)])
    async with (
        serving(ctx) as base,
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{base}/subscribe_event_v1") as ws,
    ):
        await asyncio.sleep(0.5)  # connected, nothing to send yet
        # Written as ViewStore.write does, without its PUBLISH.
        record = suspended("group:yahoo", 1, int(time.time() * 1000) + HOUR_MS)
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in record.items()}
        ctx.views.client.hset(ctx.views.key("throttle", "group:yahoo"), mapping=fields)
        (item,) = await frames(ws, 1, timeout=PUSH_S)
        assert item["ReadyQSuspension"]["site_name"] == f"src1->{YAHOO_MX}@smtp_client"
        with pytest.raises(asyncio.TimeoutError):  # every later poll sends nothing again
            await ws.receive(timeout=4 * kumo_routes.POLL_S)


def test_the_operators_shaping_file_caps_and_is_read_again_when_it_changes(
    make_settings, tmp_path: Path
):
    shaping_file = tmp_path / "shaping.toml"
    shaping_file.write_text('["yahoo.com".sources.src1]\nconnection_limit = 4\n')
    settings = make_settings(create_topics=False, kumo_shaping_file=str(shaping_file))
    asyncio.run(_operator_file(context(settings), shaping_file))


async def _operator_file(ctx: ServiceContext, shaping_file: Path) -> None:
    await kumo_sites.note(ctx, [kumo_record("src1", "yahoo.com", YAHOO_MX)])
    ctx.views.write(Topic.THROTTLE, [throttle("group:yahoo", 1, max_connections=6)])
    url = "/get_config_v1/shaping.toml"

    async def limit(session: aiohttp.ClientSession, base: str) -> object:
        status, _, text = await get(session, base + url)
        assert status == 200
        return tomllib.loads(text)["yahoo.com"]["sources"]["src1"]["connection_limit"]

    async with serving(ctx) as base, aiohttp.ClientSession() as session:
        assert await limit(session, base) == 4
        shaping_file.write_text('["yahoo.com".sources.src1]\nconnection_limit = "local:3"\n')
        os.utime(shaping_file, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
        assert await limit(session, base) == "local:3"
        # A broken edit is logged; the limits read before stay.
        shaping_file.write_text('["yahoo.com".sources.src1]\nconnection_limit = "three"\n')
        os.utime(shaping_file, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
        assert await limit(session, base) == "local:3"
    shaping_file.write_text("[[[")
    with pytest.raises(ValueError, match=r"shaping\.toml"):
        kumo_routes.add_routes(web.Application(), ctx)


def test_while_redis_is_down_the_last_settings_read_are_served(make_settings):
    base = make_settings(create_topics=False)
    proxy = TcpProxy(free_port(), int(base.redis_url.rsplit(":", 1)[1].split("/")[0])).start()
    try:
        settings = dataclasses.replace(base, redis_url=f"redis://127.0.0.1:{proxy.listen_port}/0")
        asyncio.run(_outage(context(settings), proxy))
    finally:
        proxy.stop()


async def _outage(ctx: ServiceContext, proxy: TcpProxy) -> None:
    await kumo_sites.note(ctx, [kumo_record("src1", "yahoo.com", YAHOO_MX)])
    ctx.views.write(
        Topic.THROTTLE,
        [suspended("group:yahoo", 1, int(time.time() * 1000) + HOUR_MS, max_connections=5)],
    )
    async with serving(ctx) as base, aiohttp.ClientSession() as session:
        before = [await get(session, f"{base}{path}") for path in PATHS]
        assert [status for status, _, _ in before] == [200, 200]
        assert "connection_limit = 5" in before[0][2] and "src1->" in before[1][2]
        proxy.outage("refuse")
        assert [await get(session, f"{base}{path}") for path in PATHS] == before
        # An instance that never read anything has nothing to serve: 503, try again later.
        async with serving(ctx) as fresh, session.get(f"{fresh}{PATHS[0]}") as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == str(kumo_routes.RETRY_AFTER_S)
        proxy.restore()


PATHS = ("/get_config_v1/shaping.toml", "/get_suspension_v1/suspended.json")


def test_the_tsa_routes_answer_trusted_networks_only(make_settings):
    settings = make_settings(create_topics=False, http_trusted_cidrs="10.0.0.0/8")
    asyncio.run(_untrusted(context(settings)))


async def _untrusted(ctx: ServiceContext) -> None:
    async with serving(ctx, server.build_app(ctx)) as base, aiohttp.ClientSession() as session:
        for path in (*PATHS, "/get_bounce_v1/bounced.json"):
            status, _, _ = await get(session, base + path)
            assert status == 403, path
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{base}/subscribe_event_v1")
        assert refused.value.status == 403
