"""``mta-feedback bench``: the full pipeline in one worker process against a raw baseline.

In one run, on the same broker and the same events:

1. produce N realistic Avro input events (a generated campaign) into fresh topics;
2. baseline: an aiokafka consumer that decodes the same events and updates a dict;
3. bare agent: a Faust worker (the pipeline's configuration) whose one agent does the
   baseline's work, so the cost of Faust's per-event path is shown apart from ours;
4. pipeline: one worker (decode, qualify, status, address, KPI, reputation, throttle,
   outputs) started on the pre-loaded topics; its rate is measured from its first
   committed offset to the last, so group join and start-up are left out;
5. latency: events produced at 50% (``--latency-load``) of the measured pipeline rate;
   end-to-end latency is event produced → its message's first status record consumed,
   beside the machine's CPU use meanwhile (worker, broker and generator share it);
6. feedback latency: then 200 (``--feedback-triggers``) rate-limit replies, each for a
   fresh domain, produced 50 ms apart; rate-limit reply produced → its throttle record
   consumed from the control topic;
7. memory, with the table store of MTA_STORE or ``--store`` (printed as ``store``): the
   worker's RSS growth from start-up to after the backlog, once its output buffers have
   drained and it has given freed heap back (``rss_mb_per_million_messages``), and its
   peak RSS growth, buffers of the backlog's busiest moment and all, each per million
   tracked messages.

Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from streams.pipeline.topics import INPUT_TOPICS, Topic
from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.runtime.gc_tuning import TRIM_INTERVAL_S
from streams.runtime.producer import EventProducer
from streams.testing import latency as feedback_latency
from streams.testing.latency import FirstSeen, figures
from streams.testing.sample import SampleCampaign
from streams.testing.services import free_port
from streams.testing.worker import WorkerProcess, committed_input
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


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs so far, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


class _Run(NamedTuple):
    eps: float
    cpu_ms_per_1k: float  # worker CPU per 1,000 events: steadier than eps on a shared machine
    start_rss_mb: float
    worker: WorkerProcess
    # RSS (MB) once the backlog is done and the worker has settled (the pipeline's).
    settled_rss_mb: float = 0.0


def _pipeline(settings: Settings, total: int, log: Path, module: str | None = None) -> _Run:
    """Events/s and CPU per event of one worker (the pipeline's, or another Faust worker
    ``module``) over the pre-loaded topics, and its RSS (MB) before any."""
    worker = WorkerProcess(settings, log, views=False, module=module).start()
    worker.wait_ready(120)
    assert worker.proc is not None
    pid = worker.proc.pid
    start_rss = _rss_mb(pid)
    first_at = None
    done = 0
    deadline = time.monotonic() + 1800
    while done < total and time.monotonic() < deadline:
        done = committed_input(settings)
        if first_at is None and done > 0:
            first_at, first_done, first_cpu = time.monotonic(), done, _cpu_s(pid)
        time.sleep(0.25)
    if first_at is None or done < total:
        tail = worker.tail()
        worker.stop()
        raise RuntimeError(f"{log.name}: processed {done} of {total} events:\n{tail}")
    if done == first_done:
        worker.stop()
        raise RuntimeError(f"all {total} events were committed at once: too few to time")
    eps = (done - first_done) / (time.monotonic() - first_at)
    cpu = (_cpu_s(pid) - first_cpu) / (done - first_done) * 1e6
    settled = 0.0
    if module is None:
        # Output buffers drain after the last commit, and the worker gives the freed heap
        # back every TRIM_INTERVAL_S: what stays is what the tables hold.
        time.sleep(TRIM_INTERVAL_S + 2)
        settled = _rss_mb(pid)
    return _Run(eps, cpu, start_rss, worker, settled)


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
            start, busy_before = time.monotonic(), _machine_busy()
            for i, (mid, key, value) in enumerate(records):
                due = start + i / rate
                while (delay := due - time.monotonic()) > 0:
                    time.sleep(min(delay, 0.01))
                producer.produce_raw(topic, key, value)
                sent[mid] = time.monotonic()
            busy_after = _machine_busy()
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
) -> dict[str, Any]:
    """The measures of this module's docstring; with stderr a terminal, a bar shows the phase.
    ``store`` replaces MTA_STORE for the worker."""
    base = base or Settings.from_env()
    if store:
        base = dataclasses.replace(base, store=store)
    with progress_bar("bench", len(_PHASES), unit="phases") as bar:
        return _measure(n_events, seed, latency_seconds, base, load, feedback_triggers, bar)


def _phase(bar: Bar, name: str) -> None:
    bar.update(_PHASES.index(name), note=name)


def _measure(
    n_events: int,
    seed: int,
    latency_seconds: float,
    base: Settings,
    load: float,
    triggers: int,
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
    worker: WorkerProcess | None = None
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
        bare = _pipeline(bare_settings, len(events), run_dir / f"{prefix}-bare.log", BARE_AGENT)
        bare.worker.stop()
        print(f"bare Faust agent {bare.eps:.0f} events/s", file=sys.stderr)
        _phase(bar, "pipeline worker")
        measured = _pipeline(settings, len(events), run_dir / f"{prefix}-worker.log")
        pipeline, start_rss, worker = measured.eps, measured.start_rss_mb, measured.worker
        print(f"pipeline {pipeline:.0f} events/s", file=sys.stderr)
        assert worker.proc is not None
        messages = len({e["message_id"] for _, e in events})
        rss_mb = _peak_rss_mb(worker.proc.pid)
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
            "pipeline_eps": round(pipeline, 1),
            "baseline_eps": round(baseline, 1),
            "ratio": round(pipeline / baseline, 3),
            "bare_agent_eps": round(bare.eps, 1),
            "bare_agent_ratio": round(bare.eps / baseline, 3),
            "worker_cpu_ms_per_1k_events": round(measured.cpu_ms_per_1k, 1),
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
            "settled_rss_mb": round(measured.settled_rss_mb, 1),
            # What the tracked state costs: RSS growth from start-up to after the backlog,
            # once the worker settled, per million tracked messages (warm-up included).
            "rss_mb_per_million_messages": round(
                (measured.settled_rss_mb - start_rss) / messages * 1e6, 1
            ),
        }
    finally:
        if worker is not None:
            worker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        if not broker_was_up:
            stack.down()


def main(
    n_events: int, seed: int, load: float = 0.5, store: str | None = None, triggers: int = 200
) -> int:
    if not 0 < load <= 1:
        print("mta-feedback bench: --latency-load must be in (0, 1]", file=sys.stderr)
        return 2
    if triggers < 1:
        print("mta-feedback bench: --feedback-triggers must be at least 1", file=sys.stderr)
        return 2
    print(json.dumps(run(n_events, seed, load=load, store=store, feedback_triggers=triggers)))
    return 0
