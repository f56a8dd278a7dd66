"""Bounded soak: one worker at half its measured maximum rate, RSS and lag sampled.

    python benchmarks/soak.py --duration 600      # what `make reliability` runs
    python benchmarks/soak.py --duration 120      # a dry run

First a burst measures the maximum rate (events/s the worker drains from a backlog); then
events are produced at half that rate (or ``--rate``) for ``--duration`` seconds. Every
``--interval`` s a JSON line gives the worker's RSS, the consumer lag, the keys of the
private Redis (DBSIZE) and among them the tombstone markers (``P:gone:*``), and the keys
of each of the worker's tables (its ``mta_table_keys`` gauge); a final JSON summary gives
the RSS growth after warm-up (target < 10 %), the lag trend (events/s, ~0 when keeping
up), and whether the Redis keys other than markers and the keys of the ``messages`` and
``addresses`` tables levelled off: the mean of the last quarter's samples within
``PLATEAU_TOLERANCE_PCT`` of the third quarter's (retired keys get tombstones, so both stop
growing at the plateau). The markers expire on Redis's clock, a day past the message
retention: they keep growing through a soak, whose event time runs days per minute.
Uses the shared broker with its own topics and a private redis-server; exit code 1 if a
target is missed.

The input is a sender at steady state: campaigns follow each other every 6 hours of event
time, to an audience of ``--audience`` campaigns' worth of recipients (each campaign mails
one of those lists again, as senders do). Tracked state is bounded by the retention of
final messages (``MTA_MESSAGE_RETENTION_S``, 7 days in production) and of idle addresses;
production reaches that plateau after its retention period, so the soak shortens the
retention (``--retention-s``) to reach it within its warm-up (the first quarter).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis
from confluent_kafka import Consumer, TopicPartition

from streams.pipeline.topics import INPUT_TOPICS
from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer
from streams.testing.sample import Event, SampleCampaign
from streams.testing.services import RedisServer, free_port
from streams.testing.worker import WorkerProcess, worker_table_keys
from streams.tools.stack import Stack


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Lag:
    """Input events produced but not yet committed by the worker's consumer group.

    Counted as produced minus the sum of committed offsets: Tansu's ListOffsets (high
    watermark) answers wrongly for topics written by an idempotent producer.
    """

    def __init__(self, settings: Settings) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.app_id}
        )
        self._tps = [
            TopicPartition(settings.topic(name), p)
            for name in INPUT_TOPICS
            for p in range(settings.partitions)
        ]

    def __call__(self, produced: int) -> int:
        committed = self._consumer.committed(self._tps, timeout=10)
        # Faust commits the offset of the last processed record, not the next one to read.
        return produced - sum(tp.offset + 1 for tp in committed if tp.offset >= 0)

    def close(self) -> None:
        self._consumer.close()


# The tables whose keys retire (tombstones); the others hold per delivery or per key
# sums that are small and never retire.
RETIRING_TABLES = ("messages", "addresses")
# How close the last quarter's mean key counts must be to the third quarter's (%).
PLATEAU_TOLERANCE_PCT = 10.0


def table_keys_or(port: int, last: dict[str, int]) -> dict[str, int]:
    """The worker's table key counts; ``last`` when it does not answer in time (a worker
    in a long commit on a loaded machine), so that one late answer does not end the soak."""
    try:
        return worker_table_keys(port, timeout=15)
    except OSError as exc:
        print(f"soak: worker metrics not read ({exc}); last counts kept", file=sys.stderr)
        return last


def markers(views: redis.Redis, prefix: str) -> int:
    """The tombstone markers in the views."""
    return sum(1 for _ in views.scan_iter(match=f"{prefix}:gone:*", count=5000))


def metrics_port(log_text: str, asked: int) -> int:
    """The port the worker's endpoint took: the one asked for, or the next free one, which
    it logs."""
    found = re.search(r"metrics and health on port (\d+)", log_text)
    return int(found.group(1)) if found else asked


def plateau(points: list[tuple[float, float | None]], duration: float) -> dict[str, object]:
    """Mean of a count over the third and the last quarter of the soak, the change between
    them (%) and whether it is within PLATEAU_TOLERANCE_PCT (not when a quarter has no
    sample)."""
    q3 = [v for t, v in points if duration / 2 <= t < duration * 3 / 4 and v is not None]
    q4 = [v for t, v in points if t >= duration * 3 / 4 and v is not None]
    if not q3 or not q4:
        return {"q3_mean": None, "q4_mean": None, "change_pct": None, "levelled": False}
    m3, m4 = sum(q3) / len(q3), sum(q4) / len(q4)
    change = (m4 - m3) / m3 * 100 if m3 else None
    return {
        "q3_mean": round(m3),
        "q4_mean": round(m4),
        "change_pct": None if change is None else round(change, 1),
        "levelled": m4 == 0 if change is None else abs(change) <= PLATEAU_TOLERANCE_PCT,
    }


CAMPAIGN_SPACING_MS = 6 * 3_600_000


def campaigns(audience: int) -> Iterator[Event]:
    """An endless stream of sample campaigns, each with its own delivery id and start time,
    to ``audience`` lists of recipients in turn."""
    n = 0
    while True:
        n += 1
        yield from SampleCampaign(
            recipients=2000,
            seed=n % audience,
            delivery_id=f"S{n}",
            start_ms=SampleCampaign.start_ms + n * CAMPAIGN_SPACING_MS,
        ).events()


def wait_drained(lag: Lag, produced: int, timeout: float) -> float:
    started = time.monotonic()
    while lag(produced) > 0:
        if time.monotonic() - started > timeout:
            raise TimeoutError("the worker did not drain the backlog")
        time.sleep(0.5)
    return time.monotonic() - started


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def run(
    duration: float,
    interval: float,
    burst: int,
    workdir: Path,
    audience: int,
    retention_s: int,
    fixed_rate: float | None = None,
) -> int:
    redis_server = RedisServer(workdir / "redis.log").start()
    prefix = f"soak{uuid.uuid4().hex[:8]}"
    settings = dataclasses.replace(
        Settings.from_env(),
        topic_prefix=prefix,
        app_id=prefix,
        redis_url=redis_server.url,
        data_dir=str(workdir / "data"),
        message_retention_s=retention_s,
        address_retention_s=retention_s,
        web_port=free_port(),
    )
    Stack(settings).create_topics()
    worker = WorkerProcess(settings, workdir / "worker.log").start()
    lag = Lag(settings)
    views = redis.Redis.from_url(redis_server.url)
    events = campaigns(audience)
    try:
        worker.wait_ready()
        assert worker.proc is not None
        pid = worker.proc.pid
        port = metrics_port(worker.log_text(), settings.web_port)
        with EventProducer(settings) as producer:
            for _ in range(burst):
                producer.send(*next(events))
        drained = wait_drained(lag, burst, timeout=600)
        max_rate = burst / drained
        rate = max_rate / 2 if fixed_rate is None else fixed_rate
        emit(
            {
                "phase": "measure",
                "burst": burst,
                "seconds": round(drained, 1),
                "max_rate": round(max_rate),
                "soak_rate": round(rate),
            }
        )

        samples: list[dict] = []
        started = time.monotonic()
        next_sample = started
        sent = 0
        tables: dict[str, int] = {}
        with EventProducer(settings) as producer:
            while (now := time.monotonic()) - started < duration:
                due = int((now - started) * rate)
                while sent < due:
                    producer.send(*next(events))
                    sent += 1
                if now >= next_sample:
                    tables = table_keys_or(port, tables)
                    redis_keys = views.dbsize()
                    gone = markers(views, prefix)
                    sample = {
                        "t": round(now - started),
                        "sent": sent,
                        "rss_mb": round(rss_mb(pid), 1),
                        "lag": lag(burst + sent),
                        "redis_keys": redis_keys,
                        "redis_markers": gone,
                        "redis_view_keys": redis_keys - gone,
                        "table_keys": tables,
                        "retiring_table_keys": (
                            sum(tables[t] for t in RETIRING_TABLES)
                            if all(t in tables for t in RETIRING_TABLES)
                            else None
                        ),
                    }
                    samples.append(sample)
                    emit(sample)
                    next_sample += interval
                time.sleep(0.02)
        alive = worker.alive() and worker.proc.pid == pid
    finally:
        lag.close()
        views.close()
        worker.stop()
        redis_server.kill()

    warm = [s for s in samples if s["t"] >= duration / 4] or samples
    growth = (warm[-1]["rss_mb"] - warm[0]["rss_mb"]) / warm[0]["rss_mb"] * 100
    lag_trend = slope([(s["t"], s["lag"]) for s in warm])
    redis_plateau = plateau([(s["t"], s["redis_view_keys"]) for s in samples], duration)
    table_plateau = plateau([(s["t"], s["retiring_table_keys"]) for s in samples], duration)
    summary = {
        "phase": "summary",
        "duration_s": duration,
        "retention_s": retention_s,
        "audience_recipients": audience * 2000,
        "max_rate": round(max_rate),
        "soak_rate": round(rate),
        "events": sent,
        "rss_after_warmup_mb": warm[0]["rss_mb"],
        "rss_final_mb": warm[-1]["rss_mb"],
        "rss_growth_pct": round(growth, 1),
        "lag_max": max(s["lag"] for s in samples),
        "lag_final": samples[-1]["lag"],
        "lag_trend_per_s": round(lag_trend, 2),
        "redis_keys_final": samples[-1]["redis_keys"],
        "redis_markers_final": samples[-1]["redis_markers"],
        "table_keys_final": samples[-1]["table_keys"],
        "plateau_tolerance_pct": PLATEAU_TOLERANCE_PCT,
        "redis_view_keys_plateau": redis_plateau,
        "table_keys_plateau": table_plateau,
        "worker_restarted": not alive,
        "rss_target_met": growth < 10,
        "keys_levelled": redis_plateau["levelled"] and table_plateau["levelled"],
    }
    emit(summary)
    met = summary["rss_target_met"] and summary["keys_levelled"]
    return 0 if met and alive else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="soak seconds")
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--burst", type=int, default=4000, help="events to measure max rate")
    parser.add_argument(
        "--audience", type=int, default=10, help="recipient lists of 2,000 mailed in turn"
    )
    parser.add_argument(
        "--retention-s",
        type=int,
        default=86_400,
        help="event-time retention of final messages and idle addresses (production: days)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="soak at this many events/s instead of half the measured maximum (to compare runs:"
        " the burst is drained in whole seconds of committed offsets)",
    )
    args = parser.parse_args()
    if args.rate is not None and args.rate <= 0:
        parser.error(f"--rate must be positive, got {args.rate:g}")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        return run(
            args.duration,
            args.interval,
            args.burst,
            Path(tmp),
            args.audience,
            args.retention_s,
            args.rate,
        )


if __name__ == "__main__":
    sys.exit(main())
