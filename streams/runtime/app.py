"""The Faust application: one agent per step of the declared topology, as thin glue.

Each agent decodes, calls its step (``streams.pipeline``) with Faust tables as state, and
sends the outputs. Bad input goes to the dead-letter topic with the reason and its source
coordinates; the agent carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from streams.domain.bounce.qualifier import load_qualifier
from streams.pipeline.control import ControlProcessor
from streams.pipeline.feedback import FeedbackProcessor, LateEvent
from streams.pipeline.kpi import KpiAggregator
from streams.pipeline.records import (
    Output,
    clock_time,
    clock_value,
    progress_claims,
    progress_value,
    signal_output,
)
from streams.pipeline.topics import INPUT_TOPICS, SCHEMA_FILES, TOPICS, Topic, input_streams
from streams.pipeline.topology import CONTROL, INGEST, KPI, TOPOLOGY, check_handlers
from streams.runtime import faust_patches, gc_tuning
from streams.runtime.acks import ControlRecord, InOrderAcks
from streams.runtime.auth import credentials
from streams.runtime.checkpoint import (
    changelog_via,
    flush_before_commit,
    json_bytes,
    writing_partition,
)
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.config import Settings
from streams.runtime.metrics import (
    OBSERVED_TOPICS,
    WorkerMetrics,
    WorkerProbes,
    consumer_lag,
    serve_endpoint,
)
from streams.runtime.progress import InputProgress, TailProbe
from streams.runtime.rocksdb_memory import SharedBudget, share_budget
from streams.runtime.sink import RecordSink
from streams.runtime.validate import validate_event

log = logging.getLogger(__name__)

# An agent's body: iterates the stream of its step's topics.
Runner = Callable[[faust.StreamT], Coroutine[Any, Any, None]]
TICK_INTERVAL_S = 1.0
STALL_TICKS = 10


@dataclass
class Components:
    """What the agents work with; exposed for the tests and the worker command."""

    app: faust.App
    codec: Codec
    feedback: FeedbackProcessor
    kpi: KpiAggregator
    control: ControlProcessor
    metrics: WorkerMetrics
    dead_letters: int = 0


def faust_app(settings: Settings) -> faust.App:
    """The Faust application with this project's broker, commit and fetch configuration;
    also the base of the benchmark's bare agent (streams/testing/bare_agent.py)."""
    faust_patches.apply(
        {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_client_config()},
        settings.fetch_max_bytes,
    )
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=credentials(settings),
        store=settings.store,
        datadir=settings.data_dir,
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        # The worker's own endpoint (streams/runtime/metrics.py) serves /metrics and health.
        web_enabled=False,
        # The control agent holds back the records of the signals its sequencer waits
        # with; a rebalance must not wait for them (they are read again after it).
        stream_wait_empty=False,
        # Tables keep JSON; every topic below says raw bytes explicitly (Avro is ours).
        key_serializer="json",
        value_serializer="json",
    )


def table_key_count(table: faust.Table) -> int:
    """Keys a table holds in this worker; for RocksDB its own estimate, as counting the
    keys of millions of records would stall a scrape."""
    dbs = getattr(table.data, "_dbs", None)
    if dbs is None:
        return len(table.data)
    return sum(db.property_int_value("rocksdb.estimate-num-keys") or 0 for db in list(dbs.values()))


def build_app(settings: Settings) -> Components:
    app = faust_app(settings)
    codec = Codec.from_settings(settings)

    sink = RecordSink(settings)
    tables: list[faust.Table] = []
    rocksdb = settings.store.startswith("rocksdb")
    budget = (
        SharedBudget(settings.rocksdb_cache_mb << 20, settings.rocksdb_write_buffer_mb << 20)
        if rocksdb
        else None
    )

    def table(name: str, encoded: bool = False) -> faust.Table:
        # ``encoded``: the step stores compact bytes (streams/pipeline/table_values.py).
        created = app.Table(
            name,
            default=None,
            partitions=settings.partitions,
            value_type=bytes if encoded else None,  # bytes: Faust's "raw" serializer
            options=settings.rocksdb_options() if rocksdb else None,
        )
        if budget is not None:
            share_budget(created, budget, settings.rocksdb_options())
        changelog_via(sink, created)
        tables.append(created)
        return created

    qualifier = load_qualifier(settings.bounce_rules_file or None)
    rules = settings.mx_rules()
    metrics = WorkerMetrics(
        WorkerProbes(
            held_signals=lambda: {p: w[0] for p, w in parts.control.waiting().items()},
            consumer_lag=lambda: consumer_lag(app),
            sink_queue=sink.queue_length,
            sink_errors=lambda: sink.stats.failed,
            table_keys=lambda: {t.name: table_key_count(t) for t in tables},
        )
    )
    stats = metrics.stats
    parts = Components(
        app=app,
        codec=codec,
        feedback=FeedbackProcessor(
            table("messages", encoded=True),
            table("addresses", encoded=True),
            table("kpi-parts"),
            qualifier,
            settings.pipeline_config(),
            signal_fn=signal_output(rules),
            clocks=table("clocks"),
            lazy_scan=rocksdb,
        ),
        kpi=KpiAggregator(table("kpi-sums")),
        control=ControlProcessor(
            table("windows"),
            table("throttle-state"),
            rules,
            input_streams(settings.partitions),
            table("sequences"),
            reload=lambda rec: orjson.loads(rec.value),
        ),
        metrics=metrics,
    )

    signal_topic = settings.topic(Topic.SIGNAL)
    topic_names = {spec.name: settings.topic(spec.name) for spec in TOPICS}
    progress = InputProgress(
        {settings.topic(name): name for name in INPUT_TOPICS}, settings.idle_after_ms / 1000
    )
    tail_probe = TailProbe(settings)
    acks = InOrderAcks()
    clock_topic = settings.topic(Topic.CLOCK)

    def persist() -> Callable[[], None]:
        parts.feedback.store_clock(lambda p: writing_partition(clock_topic, p))
        return parts.control.persist(lambda p: writing_partition(signal_topic, p))

    flush_before_commit(app, sink, tables, persist)

    def send_outputs(outputs: list[Output]) -> None:
        for out in outputs:
            if out.topic in OBSERVED_TOPICS:
                stats.output(out)
            topic = topic_names[out.topic]
            if out.value is None:  # a tombstone
                sink.produce(topic, out.key.encode(), None, headers=out.headers)
                continue
            avro = out.topic in SCHEMA_FILES
            value = codec.encode(out.topic, out.value, topic) if avro else json_bytes(out.value)
            sink.produce(topic, out.key.encode(), value)

    def dead_letter(msg: Any, kind: str, reason: str) -> None:
        """Parks a record (a faust message or a ``ControlRecord``) on the dead-letter topic."""
        parts.dead_letters += 1
        stats.dead_letter(kind)
        log.warning(
            "dead letter from %s[%s]@%s: %s: %s", msg.topic, msg.partition, msg.offset, kind, reason
        )
        record = {
            "event_time": int(time.time() * 1000),
            "source_topic": msg.topic,
            "source_partition": msg.partition,
            "source_offset": msg.offset,
            "key": msg.key,
            "value": msg.value,
            "error": reason,
            "error_kind": kind,
        }
        dlq = topic_names[Topic.DLQ]
        sink.produce(dlq, msg.key, codec.encode(Topic.DLQ, record, dlq))

    family_of = {settings.topic(name): name for name in INGEST.reads}

    def ingest(msg: Any) -> list[Output]:
        family = family_of[msg.topic]
        if family == Topic.CLOCK:
            now = clock_time(orjson.loads(msg.value))
            return parts.feedback.tick(now, msg.partition, msg.offset)
        time_ms = None
        try:
            record = codec.decode(family, msg.value)
            validate_event(family, record)
            stats.event_in(family, record["kind"])
            time_ms = record["event_time"]
            return parts.feedback.process(family, record, msg.partition, msg.offset)
        finally:
            # A dead-lettered record is handled too: its partition can go idle after it.
            progress.note(msg.tp, msg.offset, time_ms)

    def kpi(msg: Any) -> list[Output]:
        return parts.kpi.process(orjson.loads(msg.value), parts.feedback.clock, msg.offset)

    def control(rec: ControlRecord) -> list[ControlRecord]:
        """Takes in a signal or a progress record and sends what the sequencer releases;
        returns the records to acknowledge. A signal's record stays unacknowledged while
        the sequencer holds it, so after a crash it is read again."""
        data = orjson.loads(rec.value)
        claims = progress_claims(data)
        if claims is not None:
            parts.control.claim(rec.partition, claims)
            ack = [rec]
        elif not parts.control.add(data, rec.partition, rec):
            return [rec]
        else:
            ack = []
        released = parts.control.release(rec.partition)
        metrics.released(token.timestamp for token in released.tokens)
        send_outputs(released.outputs)
        for held, exc in released.failed:
            log.error("control failed at %s@%s: %r", held.tp, held.offset, exc)
            dead_letter(held, "processing", f"{type(exc).__name__}: {exc}"[:1000])
        return ack + released.tokens + [held for held, _exc in released.failed]

    def agent(name: str, step: Callable[[Any], list[Output]]) -> Runner:
        async def run(stream: faust.StreamT) -> None:
            async for event in stream.events():
                try:
                    send_outputs(step(event.message))
                except DecodeError as exc:
                    dead_letter(event.message, exc.kind, exc.reason)
                except LateEvent as exc:
                    dead_letter(event.message, exc.kind, str(exc))
                except Exception as exc:  # a bug must not stop the stream: park the record
                    msg = event.message
                    log.exception("%s failed at %s@%s", name, msg.tp, msg.offset)
                    dead_letter(msg, "processing", f"{type(exc).__name__}: {exc}"[:1000])

        return run

    async def run_control(stream: faust.StreamT) -> None:
        async for event in stream.noack().events():
            rec = ControlRecord(event)  # the event itself is not kept (see ControlRecord)
            acks.track(rec)
            try:
                done = control(rec)
            except Exception as exc:  # malformed, never held: park the record
                log.exception("control failed at %s@%s", rec.tp, rec.offset)
                dead_letter(rec, "processing", f"{type(exc).__name__}: {exc}"[:1000])
                done = [rec]
            acks.done(done)

    runners: dict[str, Runner] = {
        INGEST.name: agent(INGEST.name, ingest),
        KPI.name: agent(KPI.name, kpi),
        CONTROL.name: run_control,
    }
    check_handlers(runners, "worker")
    for step in TOPOLOGY:
        channel = app.topic(
            *(settings.topic(name) for name in step.reads),
            key_serializer="raw",
            value_serializer="raw",
        )
        app.agent(channel, name=step.name)(runners[step.name])

    stalled: dict[int, tuple[tuple[str, int], int]] = {}

    @app.timer(TICK_INTERVAL_S)
    async def freeze_tables() -> None:
        # Full garbage collection passes over the tables paused the worker for 100-360 ms.
        gc_tuning.freeze_survivors()

    @app.timer(gc_tuning.TRIM_INTERVAL_S)
    async def trim_heap() -> None:
        gc_tuning.trim_heap()

    @app.timer(TICK_INTERVAL_S)
    async def tick() -> None:
        waiting = parts.control.waiting()
        for partition, (held, stream, bound) in waiting.items():
            # Held signals are normal (about a commit interval's worth); a watermark that
            # has not moved for STALL_TICKS ticks is worth an operator's look.
            since = stalled.get(partition)
            ticks = since[1] + 1 if since and since[0] == (stream, bound) else 0
            stalled[partition] = ((stream, bound), ticks)
            if ticks and ticks % STALL_TICKS == 0:
                log.info(
                    "control[%s]: %s signals wait for input %s (at %s) for %s s; %s",
                    partition,
                    held,
                    stream,
                    "never heard of" if bound < 0 else bound,
                    round(ticks * TICK_INTERVAL_S),
                    progress.describe(stream),
                )
        for partition in set(stalled) - set(waiting):
            del stalled[partition]
        # Spread this worker's event-time clock to every partition, so that validity expiry,
        # quarantine resets and idle input partitions move on even where no event arrives.
        parts.feedback.restore_clock()
        if parts.feedback.clock:
            value = json_bytes(clock_value(parts.feedback.clock))
            for partition in range(settings.partitions):
                sink.produce(topic_names[Topic.CLOCK], None, value, partition)

    @app.timer(settings.progress_interval_ms / 1000)
    async def claim() -> None:
        # After the signals of the inputs it covers (one producer, ordered per partition).
        try:
            candidates = progress.candidates(app.consumer)
            asked = asyncio.get_running_loop().run_in_executor(None, tail_probe.ends, candidates)
            ends = await asyncio.wait_for(asked, timeout=10)
            claims = progress.claims(app.consumer, parts.feedback.clock, ends)
        except Exception:  # the timer must keep running: a dead one stops every decision
            log.exception("input progress not computed; retrying")
            return
        if claims is not None:
            log.debug("progress claims %s", claims)
            value = json_bytes(progress_value(claims))
            for partition in range(settings.partitions):
                sink.produce(signal_topic, None, value, partition)

    @app.on_partitions_assigned.connect
    async def on_assigned(*_args: Any, **_kwargs: Any) -> None:
        # KPI versions from here on beat any that an earlier owner published.
        epoch = time.time_ns() // 1000
        parts.feedback.reset_indexes(epoch)
        parts.kpi.begin(epoch)
        parts.control.reset()
        progress.reset()
        acks.reset()

    if settings.web_port:
        serve_endpoint(app, settings, metrics, sink)
    return parts
