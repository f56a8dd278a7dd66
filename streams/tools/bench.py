"""``mta-feedback bench``: the full pipeline in one worker process (or ``--workers N`` in
one consumer group) against a raw baseline.

In one run, on the same broker and the same events:

1. produce N realistic Avro input events (a generated campaign) into fresh topics;
2. baseline: an aiokafka consumer that decodes the same events and updates a dict;
3. bare agent: a Faust worker (the pipeline's configuration) whose one agent does the
   baseline's work, so the cost of Faust's per-event path is shown apart from ours;
4. pipeline: one worker (decode, qualify, status, address, KPI, reputation, throttle,
   outputs) started on the pre-loaded topics; its rate is measured from its first
   committed offset to the last, so group join and start-up are left out; with
   ``--workers N``, N workers in one group, timed once they have all synced the same
   group generation (``bench_group``), their CPU summed;
5. latency: events produced at 50% (``--latency-load``) of the measured pipeline rate;
   end-to-end latency is event produced → its message's first status record written,
   beside the machine's CPU use meanwhile (worker, broker and generator share it);
6. feedback latency: then 200 (``--feedback-triggers``) rate-limit replies, each for a
   fresh domain, produced 50 ms apart; rate-limit reply produced → its throttle record
   written to the control topic;
7. memory, with the table store of MTA_STORE or ``--store`` (printed as ``store``): the
   worker's RSS growth from start-up to after the backlog, once the control step has
   read the signals the backlog made, the output buffers have drained and the worker has given
   freed heap back (``rss_mb_per_million_messages``), and its
   peak RSS growth, buffers of the backlog's busiest moment and all, each per million
   tracked messages; with N workers, every RSS figure is the sum over the N.

Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from streams.pipeline.topics import INPUT_TOPICS, Topic
from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer
from streams.testing import latency as feedback_latency
from streams.testing.latency import FirstSeen, figures
from streams.testing.sample import SampleCampaign
from streams.testing.services import free_port
from streams.tools import bench_group
from streams.tools.bench_group import machine_busy
from streams.tools.progress import Bar, progress_bar
from streams.tools.stack import Stack, answers, broker_address

# A Faust agent doing only the baseline's work, under the worker's configuration.
BARE_AGENT = "streams.testing.bare_agent"


def _events(n: int, seed: int, delivery: str) -> list[tuple[str, dict[str, Any]]]:
    """At least ``n`` events from campaigns of 10,000 recipients (about 2.4 events each)."""
    out: list[tuple[str, dict[str, Any]]] = []
    batch = 0
    while len(out) < n:
        campaign = SampleCampaign(
            recipients=10_000,
            seed=seed + batch,
            delivery_id=f"{delivery}{batch}",
            start_ms=int(time.time() * 1000) - 5 * 86_400_000,
        )
        for family, event in campaign.events():
            event["message_id"] = f"{delivery}{batch}-{event['message_id']}"
            out.append((family, event))
        batch += 1
    return out[:n]


def _produce(settings: Settings, events: list[tuple[str, dict[str, Any]]]) -> float:
    started = time.monotonic()
    with EventProducer(settings) as producer:
        for family, event in events:
            producer.send(family, event)
    return time.monotonic() - started


async def _baseline(settings: Settings, total: int) -> float:
    """aiokafka getmany + Avro decode + dict update; events per second."""
    from aiokafka import AIOKafkaConsumer

    codec = Codec.from_settings(settings)
    families = {settings.topic(f): f for f in INPUT_TOPICS}
    consumer = AIOKafkaConsumer(
        *families,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    state: dict[str, dict[str, Any]] = {}
    seen = 0
    started = None
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if started is None and batches:
                started = time.monotonic()
            for tp, records in batches.items():
                family = families[tp.topic]
                for record in records:
                    event = codec.decode(family, record.value)
                    state[event["message_id"]] = event
                    seen += 1
    finally:
        await consumer.stop()
    return seen / (time.monotonic() - (started or time.monotonic()))


def _latency(settings: Settings, rate: float, seconds: float, from_ms: int) -> dict[str, Any]:
    """Produce relayed events at ``rate``/s, their event times 1 ms apart from ``from_ms``;
    latency to each message's first status record."""
    sent: dict[str, float] = {}
    n = int(rate * seconds)

    def relayed(i: int | str, event_time: int) -> dict[str, Any]:
        return {
            "event_id": f"lat-{i}",
            "event_time": event_time,
            "delivery_id": "LAT",
            "message_id": f"LAT-{i}",
            "recipient": f"lat{i}@example.net",
            "kind": "relayed",
        }

    # Encoded before the clock starts: the load generator shares the machine.
    codec = Codec.from_settings(settings)
    topic = settings.topic(Topic.SEND)
    records = [
        (
            f"LAT-{i}",
            f"lat{i}@example.net".encode(),
            codec.encode("send", relayed(i, from_ms + 1 + i), topic),
        )
        for i in range(n)
    ]
    with FirstSeen(settings, Topic.STATUS) as follower:
        with EventProducer(settings) as producer:
            # Not timed: an idempotent producer's first record waits for its producer id
            # and metadata (about 0.5 s here), which is start-up, not pipeline latency.
            producer.send("send", relayed("warm-up", from_ms))
            producer.flush(10)
            follower.wait_for({"LAT-warm-up"})
            start, busy_before = time.monotonic(), machine_busy()
            for i, (mid, key, value) in enumerate(records):
                due = start + i / rate
                while (delay := due - time.monotonic()) > 0:
                    time.sleep(min(delay, 0.01))
                producer.produce_raw(topic, key, value)
                sent[mid] = time.time()
            busy_after = machine_busy()
        follower.wait_for(set(sent), timeout=120)
    result = figures(sent, follower.seen)
    busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
    return {
        "latency_rate_eps": round(rate, 1),
        # Worker, broker and load generator share this machine: near 100% the latency
        # figures are CPU queueing.
        "latency_machine_cpu_pct": round(busy * 100, 1),
        "latency_events": n,
        "latency_received": result["received"],
        "p50_ms": result.get("p50_ms", -1.0),
        "p99_ms": result.get("p99_ms", -1.0),
    }


# What the progress bar shows, in order.
_PHASES = (
    "producing events",
    "baseline consumer",
    "bare Faust agent",
    "pipeline worker",
    "latency",
    "feedback latency",
)


def run(
    n_events: int,
    seed: int = 1,
    latency_seconds: float = 20.0,
    base: Settings | None = None,
    load: float = 0.5,
    store: str | None = None,
    feedback_triggers: int = 200,
    workers: int = 1,
) -> dict[str, Any]:
    """The measures of this module's docstring; with stderr a terminal, a bar shows the phase.
    ``store`` replaces MTA_STORE for the worker; ``workers`` pipeline workers share a group."""
    base = base or Settings.from_env()
    if error := bench_group.group_error(workers, base.partitions):
        raise ValueError(error)
    if store:
        base = dataclasses.replace(base, store=store)
    with progress_bar("bench", len(_PHASES), unit="phases") as bar:
        return _measure(
            n_events, seed, latency_seconds, base, load, feedback_triggers, workers, bar
        )


def _phase(bar: Bar, name: str) -> None:
    bar.update(_PHASES.index(name), note=name)


def _measure(
    n_events: int,
    seed: int,
    latency_seconds: float,
    base: Settings,
    load: float,
    triggers: int,
    workers: int,
    bar: Bar,
) -> dict[str, Any]:
    prefix = f"bench{int(time.time())}"
    # Each run's RocksDB tables in a directory of their own, removed at the end.
    data_dir = str(Path(base.run_dir) / prefix)
    settings = dataclasses.replace(
        base, topic_prefix=prefix, app_id=prefix, data_dir=data_dir, web_port=free_port()
    )
    stack = Stack(settings)
    broker_was_up = answers(*broker_address(settings))
    stack.up()
    group: bench_group.Run | None = None
    try:
        _phase(bar, "producing events")
        events = _events(n_events, seed, "B")
        produce_s = _produce(settings, events)
        print(f"produced {len(events)} events in {produce_s:.1f}s", file=sys.stderr)
        _phase(bar, "baseline consumer")
        baseline = asyncio.run(_baseline(settings, len(events)))
        print(f"baseline {baseline:.0f} events/s", file=sys.stderr)
        run_dir = Path(settings.run_dir)
        bare_settings = dataclasses.replace(settings, app_id=f"{prefix}-bare")
        _phase(bar, "bare Faust agent")
        broker_pid = next((s.pid for s in stack.status() if s.name == "broker"), None)
        bare_log = run_dir / f"{prefix}-bare.log"
        bare = bench_group.run(
            bare_settings, len(events), bare_log, BARE_AGENT, broker_pid=broker_pid
        )
        bare.stop()
        print(f"bare Faust agent {bare.eps:.0f} events/s", file=sys.stderr)
        _phase(bar, "pipeline worker")
        print(f"pipeline: {workers} worker(s) in one group", file=sys.stderr)
        log = run_dir / f"{prefix}-worker.log"
        group = bench_group.run(settings, len(events), log, workers=workers, broker_pid=broker_pid)
        pipeline, start_rss = group.eps, group.start_rss_mb
        print(f"pipeline {pipeline:.0f} events/s", file=sys.stderr)
        messages = len({e["message_id"] for _, e in events})
        rss_mb = group.peak_rss_total_mb()
        # Event time goes on from the loaded events: a jump of days would make the worker
        # expire and retire the loaded messages at once (a 1 s stall in the first seconds).
        last_ms = max(event["event_time"] for _, event in events)
        _phase(bar, "latency")
        latency = _latency(settings, pipeline * load, latency_seconds, last_ms)
        # Feedback after that load, its event times going on from the latency events'.
        _phase(bar, "feedback latency")
        from_ms = last_ms + latency["latency_events"] + 2
        feedback = feedback_latency.measure(settings, from_ms, triggers)
        return {
            "store": settings.store,
            "events": len(events),
            "tracked_messages": messages,
            "workers": workers,
            "pipeline_eps": round(pipeline, 1),
            "baseline_eps": round(baseline, 1),
            "ratio": round(pipeline / baseline, 3),
            "bare_agent_eps": round(bare.eps, 1),
            "bare_agent_ratio": round(bare.eps / baseline, 3),
            "worker_cpu_ms_per_1k_events": round(group.cpu_ms_per_1k, 1),
            "bare_agent_cpu_ms_per_1k_events": round(bare.cpu_ms_per_1k, 1),
            **latency,
            "feedback_triggers": feedback["triggers"],
            "feedback_received": feedback["received"],
            "feedback_p50_ms": feedback.get("p50_ms", -1.0),
            "feedback_p99_ms": feedback.get("p99_ms", -1.0),
            "start_rss_mb": round(start_rss, 1),
            "peak_rss_mb": round(rss_mb, 1),
            # Peak growth over the start-up footprint, scaled to a million tracked messages:
            # buffers and caches that do not grow with the state count in it.
            "peak_growth_mb_per_million_messages": round((rss_mb - start_rss) / messages * 1e6, 1),
            "settled_rss_mb": round(group.settled_rss_mb, 1),
            # What the tracked state costs: RSS growth from start-up to after the backlog,
            # once the worker settled, per million tracked messages (warm-up included).
            "rss_mb_per_million_messages": round(
                (group.settled_rss_mb - start_rss) / messages * 1e6, 1
            ),
        }
    finally:
        if group is not None:
            group.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        if not broker_was_up:
            stack.down()


def main(
    n_events: int,
    seed: int,
    load: float = 0.5,
    store: str | None = None,
    triggers: int = 200,
    workers: int = 1,
) -> int:
    if not 0 < load <= 1:
        print("mta-feedback bench: --latency-load must be in (0, 1]", file=sys.stderr)
        return 2
    if triggers < 1:
        print("mta-feedback bench: --feedback-triggers must be at least 1", file=sys.stderr)
        return 2
    base = Settings.from_env()
    if error := bench_group.group_error(workers, base.partitions):
        print(f"mta-feedback bench: {error}", file=sys.stderr)
        return 2
    result = run(
        n_events,
        seed,
        base=base,
        load=load,
        store=store,
        feedback_triggers=triggers,
        workers=workers,
    )
    print(json.dumps(result))
    return 0
