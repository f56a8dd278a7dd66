"""HTTP ingest throughput beside the project's raw producer, in one run, on one broker.

1. raw producer: the events of the records below, already converted and encoded, sent
   with ``RecordSink`` and flushed (the fastest the service could hand them on);
2. ``POST /publish_log_v1``: KumoMTA log records, one per request, from 32 concurrent
   clients (as KumoMTA's TSA publisher posts them);
3. ``POST /webhooks/sparkpost``: batches of 1,000 SparkPost events, 4 at a time.

A ``mta-feedback serve`` subprocess answers; the load comes from aiohttp's client in this
process. Each route's figure is records/s from the first request to the last answer (every
answer a 200 after the broker's acknowledgement), with its p99 request time, its ratio to
the raw producer, and the service's CPU time per 1,000 records (steadier than rates on a
shared machine). Prints one JSON line.

    python benchmarks/ingest_http.py [--kumo N] [--batches N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from streams.adapters.kumomta import KumoMtaConverter
from streams.adapters.sparkpost import SparkPostConverter
from streams.pipeline.topics import INPUT_TOPICS, Topic
from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.runtime.sink import RecordSink
from streams.runtime.vendor_records import to_record
from streams.testing.worker import settings_env
from streams.tools.stack import Stack

CLIENTS = 32
BATCH = 1000
BATCH_CLIENTS = 4
_LISTENING = re.compile(r"listening on (http://\S+)")


def kumo_records(n: int, now: int) -> list[dict[str, Any]]:
    """KumoMTA Delivery / TransientFailure records (shape of docs/reference/log_record.md)."""
    out = []
    for i in range(n):
        failed = i % 4 == 3
        out.append(
            {
                "type": "TransientFailure" if failed else "Delivery",
                "id": f"{i:032x}",
                "sender": "bounces@sender.example",
                "recipient": f"user{i}@example.net",
                "queue": "bench:tenant@example.net",
                "site": "pool0->(mx1|mx2).example.net",
                "size": 4096,
                "response": {
                    "code": 421 if failed else 250,
                    "enhanced_code": {"class": 4, "subject": 7, "detail": 0}
                    if failed
                    else {"class": 2, "subject": 0, "detail": 0},
                    "content": "Try again later" if failed else "OK queued",
                    "command": ".",
                },
                "peer_address": {"name": "mx1.example.net", "addr": "198.51.100.7"},
                "timestamp": now - 600 + i % 600,
                "created": now - 700,
                "num_attempts": 1,
                "bounce_classification": "Uncategorized",
                "egress_pool": "pool0",
                "egress_source": "source0",
                "meta": {},
                "headers": {},
                "delivery_protocol": "ESMTP",
            }
        )
    return out


def sparkpost_batches(batches: int, now: int) -> list[list[dict[str, Any]]]:
    """Batches of SparkPost delivery / bounce events (SparkPost's event definitions)."""
    out = []
    for b in range(batches):
        batch = []
        for i in range(BATCH):
            n = b * BATCH + i
            kind = "bounce" if n % 10 == 9 else "delivery"
            event = {
                "type": kind,
                "event_id": f"{n:017d}",
                "timestamp": str(now - 600 + n % 600),
                "message_id": f"{n:020x}",
                "transmission_id": "bench",
                "campaign_id": "bench",
                "rcpt_to": f"user{n}@example.com",
                "raw_rcpt_to": f"user{n}@example.com",
                "sending_ip": "192.0.2.25",
                "num_retries": "0",
                "queue_time": "900",
            }
            if kind == "bounce":
                event.update(error_code="550", bounce_class="10", raw_reason="550 5.1.1 unknown")
            batch.append({"msys": {"message_event": event}})
        out.append(batch)
    return out


def raw_producer(settings: Settings, records: list[dict[str, Any]], convert: Any) -> float:
    """Records/s of RecordSink sending the already-encoded events of ``records``."""
    codec = Codec.from_settings(settings)
    names = {f: settings.topic(f) for f in (*INPUT_TOPICS, Topic.DLQ)}
    encoded = []
    for index, record in enumerate(records):
        for result in convert(record):
            out = to_record(codec, result, "bench", index, names)
            if out is not None:
                encoded.append((settings.topic(out.topic), out.key, out.value))
    sink = RecordSink(settings)
    sink.produce(*encoded[0])  # warm-up: connections and metadata are not timed
    sink.flush()
    started = time.monotonic()
    for topic, key, value in encoded:
        sink.produce(topic, key, value)
    sink.flush()
    return len(encoded) / (time.monotonic() - started)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def load(
    url: str, bodies: Iterator[tuple[bytes, int]], clients: int
) -> tuple[int, float, list[float]]:
    """POST every body from ``clients`` concurrent clients; (records, seconds, latencies)."""
    latencies: list[float] = []
    records = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal records
        for body, count in bodies:
            started = time.monotonic()
            async with session.post(url, data=body) as response:
                answer = await response.json()
                if response.status != 200 or answer["bad"]:
                    raise RuntimeError(f"{url}: {response.status} {answer}")
            latencies.append(time.monotonic() - started)
            records += count

    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return records, time.monotonic() - started, latencies


def start_service(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**settings_env(settings), "MTA_HTTP_LISTEN": "127.0.0.1:0"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.tools.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _LISTENING.search(log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"serve did not start:\n{log.read_text(errors='replace')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kumo", type=int, default=20_000, help="KumoMTA records to post")
    parser.add_argument("--batches", type=int, default=20, help="SparkPost batches of 1,000")
    args = parser.parse_args()
    base = Settings.from_env()
    prefix = f"benchhttp{int(time.time())}"
    settings = dataclasses.replace(base, topic_prefix=prefix, app_id=prefix)
    Stack(settings).up()
    now = int(time.time())
    kumo = kumo_records(args.kumo, now)
    batches = sparkpost_batches(args.batches, now)
    kumo_conv, spark_conv = KumoMtaConverter(), SparkPostConverter()
    raw_kumo = raw_producer(settings, kumo, kumo_conv.convert_record)
    raw_spark = raw_producer(settings, [e for b in batches for e in b], spark_conv.convert_item)

    # Fresh ids, so that the service's events are new records too.
    kumo = kumo_records(args.kumo, now + 1)
    batches = sparkpost_batches(args.batches, now + 1)
    log = Path(settings.run_dir) / f"{prefix}-serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc, url = start_service(settings, log)
    try:
        # A warm-up request: connections to the broker, the codec's schemas.
        asyncio.run(load(f"{url}/publish_log_v1", iter([(json.dumps(kumo[0]).encode(), 1)]), 1))
        singles = iter([(json.dumps(r).encode(), 1) for r in kumo[1:]])
        cpu = cpu_s(proc.pid)
        k_records, k_seconds, k_times = asyncio.run(load(f"{url}/publish_log_v1", singles, CLIENTS))
        k_cpu, cpu = cpu_s(proc.pid) - cpu, cpu_s(proc.pid)
        bodies = iter([(json.dumps(b).encode(), len(b)) for b in batches])
        s_records, s_seconds, s_times = asyncio.run(
            load(f"{url}/webhooks/sparkpost", bodies, BATCH_CLIENTS)
        )
        s_cpu = cpu_s(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait(30)
    publish = k_records / k_seconds
    sparkpost = s_records / s_seconds
    print(
        json.dumps(
            {
                "publish_log_v1_records_per_s": round(publish),
                "publish_log_v1_p99_ms": round(p99(k_times), 1),
                "publish_log_v1_clients": CLIENTS,
                # Service CPU per 1,000 records: steadier than rates on a shared machine.
                "publish_log_v1_cpu_ms_per_1k": round(k_cpu / k_records * 1e6),
                "sparkpost_records_per_s": round(sparkpost),
                "sparkpost_p99_ms": round(p99(s_times), 1),
                "sparkpost_cpu_ms_per_1k": round(s_cpu / s_records * 1e6),
                "sparkpost_batch": BATCH,
                "sparkpost_clients": BATCH_CLIENTS,
                "raw_producer_kumo_records_per_s": round(raw_kumo),
                "raw_producer_sparkpost_records_per_s": round(raw_spark),
                "publish_log_v1_vs_raw": round(publish / raw_kumo, 3),
                "sparkpost_vs_raw": round(sparkpost / raw_spark, 3),
                "linger_ms": settings.linger_ms,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
