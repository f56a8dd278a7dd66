"""The KumoMTA loop end to end: KumoMTA log records posted to ``/publish_log_v1`` as its TSA
publisher posts them, through a worker, back out of the same service as KumoMTA's TSA API.
A burst of Yahoo ``[TSS04]`` deferrals from one source suspends that source's site on the
websocket and in suspended.json, and leaves the other source at Yahoo's limits; the
``451 4.4.4 KumoMTA internal`` records kumod then logs for the messages it holds change
nothing (they quote the suspension's reason, [TSS04] included: taken as remote replies,
they would lengthen it)."""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from typing import Any

import aiohttp
import pytest
from integration.service import ServiceProcess

from streams.runtime.config import Settings
from streams.serving.views import ViewStore
from streams.testing.worker import WorkerProcess, committed_input

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]

YAHOO_SITE = "mta5.am0.yahoodns.net"
TSS04 = (
    "[TSS04] Messages from 192.0.2.30 temporarily deferred due to unexpected volume or user "
    "complaints - 4.16.56.1; see https://postmaster.yahooinc.com/error-codes"
)


def record(
    kind: str, n: int, source: str, code: int, status: str, text: str, ago_s: int
) -> dict[str, Any]:
    """A KumoMTA log record (docs/reference/log_record.md of KumoCorp/kumomta; our values),
    logged ``ago_s`` seconds ago."""
    now = int(time.time()) - ago_s
    cls, subject, detail = (int(p) for p in status.split("."))
    return {
        "type": kind,
        "id": f"{source}-{kind}-{n:08d}",
        "sender": "bounces@sender.example",
        "recipient": [f"user{n}@yahoo.com"],
        "queue": "spring:tenant@yahoo.com",
        "site": f"{source}->{YAHOO_SITE}@smtp_client",
        "size": 2048,
        "response": {
            "code": code,
            "enhanced_code": {"class": cls, "subject": subject, "detail": detail},
            "content": text,
            "command": "." if code != 451 else None,
        },
        "peer_address": {"name": YAHOO_SITE, "addr": "198.51.100.7"} if code != 451 else None,
        "timestamp": now,
        "created": now - 30,
        "num_attempts": 1,
        "bounce_classification": "Uncategorized",
        "egress_pool": "pool0",
        "egress_source": source,
        "delivery_protocol": "ESMTP",
        "nodeid": "557f3ad4-2c8c-11ee-976e-782b46e3ff9e",
    }


def test_a_tss04_burst_suspends_its_source_alone_and_our_own_holds_change_nothing(
    make_settings, tmp_path
):
    settings = make_settings()
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    service = ServiceProcess(settings, tmp_path / "serve.log").start()
    try:
        worker.wait_ready()
        asyncio.run(_loop(settings, f"http://{service.host}:{service.port}"))
    finally:
        service.stop()
        worker.stop()


async def _loop(settings: Settings, base: str) -> None:
    store = ViewStore.from_settings(settings)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{base}/subscribe_event_v1") as ws,
    ):
        # The burst 20 minutes ago, the holds 10 minutes later: past the controller's
        # adjust interval (5 min), so remote replies among the holds would lower the rate
        # again.
        burst = [record("Delivery", n, "src2", 250, "2.0.0", "OK", 1200) for n in range(3)]
        burst += [
            record("TransientFailure", n, "src1", 421, "4.7.0", TSS04, 1200) for n in range(20)
        ]
        await post_each(session, base, burst)

        message = await ws.receive(timeout=90)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        item = json.loads(message.data)["ReadyQSuspension"]
        assert item["site_name"] == f"src1->{YAHOO_SITE}@smtp_client"
        assert item["source"] == "src1"
        assert item["reason"].startswith("mta-feedback ip_group:src1|yahoo: ")

        async with session.get(f"{base}/get_suspension_v1/suspended.json") as response:
            assert (await response.json())["ready_q"] == [item]

        await settled(settings, store, len(burst))
        before = versions(store)
        # Yahoo named src1: its key alone changed, and src2 keeps Yahoo's limits.
        assert set(before) == {"ip_group:src1|yahoo"}
        text_before = await text(session, f"{base}/get_config_v1/shaping.toml")
        shaping = tomllib.loads(text_before)
        assert "src2" not in shaping.get("yahoo.com", {}).get("sources", {}), shaping

        # What kumod logs for the messages it holds, quoting the suspension's reason.
        held = f"KumoMTA internal: scheduled queue is suspended: {item['reason']}"
        holds = [
            record("TransientFailure", 100 + n, "src1", 451, "4.4.4", held, 600) for n in range(20)
        ]
        await post_each(session, base, holds)
        await settled(settings, store, len(burst) + len(holds))
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=5)
        assert versions(store) == before
        assert await text(session, f"{base}/get_config_v1/shaping.toml") == text_before


async def post_each(session: aiohttp.ClientSession, base: str, records: list[dict]) -> None:
    """One record per request, as KumoMTA's TSA publisher sends them."""
    for r in records:
        async with session.post(f"{base}/publish_log_v1", json=r) as response:
            body = await response.json()
            assert response.status == 200 and body["bad"] == [], body


async def text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.text()


def versions(store: ViewStore) -> dict[str, int]:
    return {r["key"]: r["version"] for r in store.scan("throttle")}


async def settled(settings: Settings, store: ViewStore, events: int, quiet: float = 5.0) -> None:
    """The worker has committed ``events`` input records and the throttle view has not
    changed for ``quiet`` seconds since."""
    deadline = time.monotonic() + 90
    while await asyncio.to_thread(committed_input, settings) < events:
        assert time.monotonic() < deadline, "the worker did not take every record in"
        await asyncio.sleep(0.5)
    last, since = versions(store), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the throttle settings keep changing"
        await asyncio.sleep(0.5)
        now = versions(store)
        if now != last:
            last, since = now, time.monotonic()
