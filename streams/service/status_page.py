"""The status page at ``/``: per provider group the throttle mode, rate and reason, the
throttle history as a chart, deliveries with their Success %, quarantine and denylist
counts, dead letters. Live over server-sent events; everything it loads ships with the
package (``static/``), so it works with no internet access.

Routes: ``GET /`` (the page), ``GET /status/static/...`` (its script and style),
``GET /status/data.json`` (one snapshot), ``GET /status/events`` (a snapshot whenever it
changes, checked every second). One snapshot is computed per second at most, whatever the
number of viewers; the dead-letter count (the dead-letter topic's offsets) every 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from aiohttp import web
from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.service.context import ServiceContext
from streams.service.status_data import (
    delivery_rows,
    history_series,
    parse_fields,
    throttle_rows,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SNAPSHOT_TTL_S = 1.0
DLQ_TTL_S = 5.0
KEEPALIVE_S = 15.0
MAX_STREAMS = 32  # concurrent /status/events viewers
HISTORY_ENTRIES = 2000  # newest entries of the history stream read per snapshot
# The page runs only its own script and style; data is inserted as text, never as markup.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class StatusSource:
    """Computes snapshots (blocking Redis and Kafka calls, run in the default executor)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        # The MX rules file is read at start, as the workers read it.
        self.rules = ctx.settings.mx_rules()
        self._lock = asyncio.Lock()
        self._snapshot: tuple[float, dict[str, Any]] | None = None
        self._dlq: tuple[float, int | None] = (0.0, None)
        self._consumer: Consumer | None = None
        self.streams = 0
        self.stopping = asyncio.Event()

    async def snapshot(self) -> dict[str, Any]:
        async with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._snapshot[0] >= SNAPSHOT_TTL_S:
                loop = asyncio.get_running_loop()
                self._snapshot = (now, await loop.run_in_executor(None, self._collect))
            return self._snapshot[1]

    def _collect(self) -> dict[str, Any]:
        store = self.ctx.views
        out: dict[str, Any] = {"generated_at": int(time.time() * 1000)}
        try:
            pipe = store.client.pipeline(transaction=False)
            pipe.scard(f"{store.prefix}:quarantined")
            pipe.scard(f"{store.prefix}:denylisted")
            pipe.xrevrange(self.history_key, count=HISTORY_ENTRIES)
            quarantined, denylisted, history = pipe.execute()
            out["groups"] = throttle_rows(self.rules, self._hashes("throttle"))
            out["history"] = history_series(
                self.rules, (parse_fields(fields) for _id, fields in history)
            )
            kpis = self._hashes("kpi")
            out["deliveries"] = {"total": len(kpis), "rows": delivery_rows(kpis)}
            out["addresses"] = {"quarantined": quarantined, "denylisted": denylisted}
        except redis.RedisError as exc:
            out["error"] = f"view store unreachable: {exc}"
        out["dead_letters"] = {"count": self._dead_letters(), "topic": self._dlq_topic}
        return out

    @property
    def history_key(self) -> str:
        return self.ctx.views.history_key

    @property
    def _dlq_topic(self) -> str:
        return self.ctx.settings.topic("dlq")

    def _hashes(self, kind: str) -> list[dict[str, Any]]:
        """Every view record of ``kind`` (hashes only: other keys share the prefix)."""
        store = self.ctx.views
        keys = list(
            store.client.scan_iter(match=f"{store.prefix}:{kind}:*", count=500, _type="HASH")
        )
        pipe = store.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [parse_fields(raw) for raw in pipe.execute() if raw]

    def _dead_letters(self) -> int | None:
        """Dead letters the topic holds (offsets, summed over partitions); None when the
        broker does not answer."""
        checked, count = self._dlq
        if time.monotonic() - checked < DLQ_TTL_S:
            return count
        try:
            consumer = self._consumer or self._new_consumer()
            topic = consumer.list_topics(self._dlq_topic, timeout=2).topics[self._dlq_topic]
            count = 0
            for partition in topic.partitions or {}:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self._dlq_topic, partition), timeout=2
                )
                count += max(0, high - low)
        except (KafkaException, KeyError) as exc:
            log.warning("dead-letter count unavailable: %s", exc)
            count = None
        self._dlq = (time.monotonic(), count)
        return count

    def _new_consumer(self) -> Consumer:
        settings = self.ctx.settings
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                # Never joins: it only asks for offsets.
                "group.id": f"{settings.app_id}-status-{uuid.uuid4().hex[:8]}",
                **settings.kafka_client_config(),
            }
        )
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


SOURCE = web.AppKey("status_source", StatusSource)


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "status.html", headers=HEADERS)


async def data(request: web.Request) -> web.Response:
    snapshot = await request.app[SOURCE].snapshot()
    status = 503 if "error" in snapshot else 200
    return web.json_response(snapshot, status=status, headers=HEADERS)


async def events(request: web.Request) -> web.StreamResponse:
    source = request.app[SOURCE]
    if source.streams >= MAX_STREAMS:
        return web.json_response(
            {"error": f"too many live viewers (at most {MAX_STREAMS})"}, status=503
        )
    response = web.StreamResponse(
        headers={**HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    source.streams += 1
    try:
        await response.write(b"retry: 2000\n\n")
        last: dict[str, Any] = {}
        sent_at = time.monotonic()
        while not source.stopping.is_set():
            snapshot = await source.snapshot()
            # generated_at alone changes every second: compare without it.
            content = {k: v for k, v in snapshot.items() if k != "generated_at"}
            if content != last or time.monotonic() - sent_at >= KEEPALIVE_S:
                await response.write(b"data: " + json.dumps(snapshot).encode() + b"\n\n")
                last, sent_at = content, time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(source.stopping.wait(), SNAPSHOT_TTL_S)
    except ConnectionError:
        pass  # the viewer went away
    finally:
        source.streams -= 1
    return response


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    source = StatusSource(ctx)
    app[SOURCE] = source

    async def stop_streams(_app: web.Application) -> None:
        source.stopping.set()

    async def close(_app: web.Application) -> None:
        source.close()

    app.on_shutdown.append(stop_streams)
    app.on_cleanup.append(close)
    app.router.add_get("/", page)
    app.router.add_get("/status/data.json", data)
    app.router.add_get("/status/events", events)
    app.router.add_static("/status/static", STATIC, append_version=False)
