"""What a read of the operator API costs: ``GET /v1/messages/{id}`` beside Redis itself.

1. ``GET /v1/messages/{id}``: a ``mta-feedback serve`` subprocess, 32 concurrent
   connections of aiohttp's client in this process, over message views written as the
   view updater writes them;
2. raw Redis: ``HGETALL`` of the same keys, at the same concurrency, with redis.asyncio
   (a pool of 32 connections) in this process.

Each figure is requests/s from the first request to the last answer (every answer a 200,
or a hash found), with its p99; for the service also its CPU time per 1,000 requests
(steadier than rates on a shared machine). Prints one JSON line.

    python benchmarks/api_read.py [--messages N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from ingest_http import cpu_s, p99, start_service

from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.serving.views import ViewStore
from streams.tools.stack import Stack

CLIENTS = 32


def status_record(i: int, now: int) -> dict[str, object]:
    return {
        "event_id": f"m{i}-2",
        "event_time": now,
        "message_id": f"m{i:08d}",
        "delivery_id": "bench",
        "status": "failed" if i % 5 == 0 else "sent",
        "failure_type": "hard" if i % 5 == 0 else None,
        "failure_reason": "User unknown" if i % 5 == 0 else None,
        "rule": "user-unknown" if i % 5 == 0 else None,
        "attempts": 1 + i % 3,
        "version": 2,
    }


async def run_clients(
    one: Callable[[str], Awaitable[None]], ids: list[str], requests: int
) -> tuple[float, list[float]]:
    """Call ``one(id)`` ``requests`` times from CLIENTS concurrent tasks; (s, latencies)."""
    latencies: list[float] = []
    turns = iter(range(requests))

    async def client() -> None:
        for n in turns:
            started = time.monotonic()
            await one(ids[n % len(ids)])
            latencies.append(time.monotonic() - started)

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return time.monotonic() - started, latencies


async def api_reads(url: str, ids: list[str], requests: int) -> tuple[float, list[float]]:
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(message_id: str) -> None:
            async with session.get(f"{url}/v1/messages/{message_id}") as response:
                body = await response.json()
                if response.status != 200 or body["message_id"] != message_id:
                    raise RuntimeError(f"{response.status} {body}")

        await run_clients(one, ids, CLIENTS)  # warm-up: connections, Redis pool
        return await run_clients(one, ids, requests)


async def redis_reads(
    settings: Settings, keys: dict[str, str], ids: list[str], requests: int
) -> tuple[float, list[float]]:
    client = aioredis.Redis.from_url(
        settings.redis_url, decode_responses=True, max_connections=CLIENTS
    )

    async def one(message_id: str) -> None:
        if not await client.hgetall(keys[message_id]):
            raise RuntimeError(f"no hash for {message_id}")

    try:
        await run_clients(one, ids, CLIENTS)
        return await run_clients(one, ids, requests)
    finally:
        await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="message views written")
    parser.add_argument("--requests", type=int, default=20_000, help="reads of each kind")
    args = parser.parse_args()
    prefix = f"benchapi{int(time.time())}"
    settings = dataclasses.replace(Settings.from_env(), topic_prefix=prefix, app_id=prefix)
    Stack(settings).up()
    store = ViewStore.from_settings(settings)
    now = int(time.time() * 1000)
    records = [status_record(i, now) for i in range(args.messages)]
    store.write(Topic.STATUS, records)
    ids = [str(r["message_id"]) for r in records]
    keys = {i: store.key("msg", i) for i in ids}
    log = Path(settings.run_dir) / f"{prefix}-serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc, url = start_service(settings, log)
    try:
        cpu = cpu_s(proc.pid)
        api_s, api_times = asyncio.run(api_reads(url, ids, args.requests))
        api_cpu = cpu_s(proc.pid) - cpu
        redis_s, redis_times = asyncio.run(redis_reads(settings, keys, ids, args.requests))
    finally:
        proc.terminate()
        proc.wait(30)
        for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
            store.client.delete(key)
    api_rps = args.requests / api_s
    redis_rps = args.requests / redis_s
    print(
        json.dumps(
            {
                "api_get_message_requests_per_s": round(api_rps),
                "api_get_message_p99_ms": round(p99(api_times), 1),
                "api_cpu_ms_per_1k": round(api_cpu / (args.requests + CLIENTS) * 1e6),
                "redis_hgetall_requests_per_s": round(redis_rps),
                "redis_hgetall_p99_ms": round(p99(redis_times), 1),
                "api_vs_redis": round(api_rps / redis_rps, 3),
                "clients": CLIENTS,
                "requests": args.requests,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
