"""The Faust application: topics and tables declared once, and the agents as thin glue.

Each agent decodes, calls a step of streams/pipeline/steps.py with its Faust tables as state,
and sends the outputs. Bad input goes to the dead-letter topic with the reason and its
source coordinates; the agent carries on.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import faust
import orjson
from faust import streams as faust_streams
from faust.types import TP, EventT

from streams.domain.bounce.qualifier import load_qualifier
from streams.domain.control.mx_rules import load_mx_rules
from streams.pipeline.steps import (
    ControlProcessor,
    FeedbackProcessor,
    KpiAggregator,
    Output,
    signal_output,
)
from streams.pipeline.topics import INPUT_TOPICS, TOPICS, input_streams
from streams.runtime import faust_patches, gc_tuning
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.config import Settings
from streams.runtime.sink import RecordSink
from streams.runtime.validate import validate_event

log = logging.getLogger(__name__)

_AVRO_TOPICS = {spec.name: spec.schema for spec in TOPICS if spec.schema}
TICK_INTERVAL_S = 1.0
STALL_TICKS = 10


def _credentials(settings: Settings) -> Any:
    if settings.security_protocol == "PLAINTEXT":
        return None
    context = None
    if settings.security_protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.security_protocol.startswith("SASL"):
        _check_login(settings)
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


class _Sent(NamedTuple):
    """What Faust's table reads back from a changelog send: the record's partition."""

    message: Any


class _Partition(NamedTuple):
    partition: int


def _json(obj: Any) -> bytes:
    # Non-string keys become strings, as with the standard library.
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def _changelog_via(sink: RecordSink, table: faust.Table) -> None:
    """Write ``table``'s changelog through ``sink``: one C-level enqueue per change instead
    of Faust's per-record Python send path (the largest share of the worker's time)."""
    topic = table.changelog_topic.get_topic_name()

    def send_changelog(
        partition: int,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> _Sent:
        # Serializers are Faust's way to say "raw" for a deletion (value None): ignored, as
        # keys and values are always JSON here and a deletion is a tombstone.
        sink.produce(topic, _json(key), None if value is None else _json(value), partition)
        return _Sent(_Partition(partition))

    table.send_changelog = send_changelog  # type: ignore[method-assign]


def _flush_before_commit(
    app: faust.App,
    sink: RecordSink,
    tables: list[faust.Table],
    persist: Callable[[], Callable[[], None]],
) -> None:
    """Faust flushes its producer before it commits offsets; ``persist`` writes the state
    kept in memory between commits, then the sink is flushed too, so no input offset is
    committed before its outputs and table changes are on the broker. What ``persist``
    returns is written after that flush and flushed in turn (the control step's
    sequencers, which must never be stored ahead of its states). Persistent stores then
    learn how far their changelogs are written (as Faust's own changelog callback would
    tell them)."""
    faust_flush = app.producer.flush
    changelogs = {t.changelog_topic.get_topic_name(): t for t in tables}

    async def flush() -> None:
        then = persist()
        await faust_flush()
        await sink.aflush()
        then()
        await sink.aflush()
        for (topic, partition), offset in list(sink.delivered_offsets.items()):
            table = changelogs.get(topic)
            if table is not None:
                table.data.set_persisted_offset(TP(topic, partition), offset)

    app.producer.flush = flush  # type: ignore[method-assign]


class _PartitionEvent:
    """Stands for the current event where Faust needs one to know a write's partition."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


class _Message(NamedTuple):
    topic: str
    partition: int


@contextmanager
def _writing_partition(topic: str, partition: int) -> Iterator[None]:
    """Table writes outside stream iteration (at commit time): Faust tables and stores take
    a write's partition from the current event, so one stands in for the duration."""
    event = _PartitionEvent(topic, partition)
    token = faust_streams._current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def _check_login(settings: Settings) -> None:
    """Fail fast with a clear KafkaAuthError: aiokafka reports a rejected SCRAM login as
    ``KeyError('v')`` deep in its handshake."""
    from confluent_kafka import KafkaException, Producer

    probe = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_client_config()}
    )
    try:
        probe.list_topics(timeout=settings.session_timeout_s)
    except KafkaException:
        # Serves the error callback, which raises on a rejected login; a broker that is
        # merely unreachable is left to Faust, which waits for it.
        probe.poll(0)


class InputProgress:
    """How far each input stream this worker reads has come, told to every control
    partition (``{"progress": {stream: ms}}``) so that its sequencer can release signals.

    A stream's claim is the largest event time processed from it (a stream's times are
    assumed not to go backwards). A stream is *idle* when nothing is left to read in it
    and nothing of it was processed for ``idle_s``; it then claims the worker's clock as
    it was ``idle_s`` ago, plus 1 ms (assuming the producers write in event-time order),
    so that an idle partition does not hold every decision back. "Nothing left" is not
    taken from the client's high watermark, which Tansu reports short (the base offset of
    the last batch): a partition that looks read to the end is a *candidate*, and the
    caller probes the broker for a record at or after its next offset (``ends``). A
    stream's claim never goes down, and claims are sent when they change."""

    def __init__(
        self,
        family_of: dict[str, str],
        idle_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.family_of = family_of
        self.idle_s = idle_s
        self.monotonic = monotonic
        self.latest: dict[TP, tuple[int, int]] = {}  # tp → (last offset, largest time)
        # tp → (monotonic time, worker clock) when it was last seen with nothing to read
        self._quiet: dict[TP, tuple[float, int]] = {}
        self._claimed: dict[str, int] = {}  # stream → largest claim made
        self._sent: dict[str, int] = {}
        # stream → (high watermark, next to process, last handed over) when last seen busy
        self.busy: dict[str, tuple[int | None, int, int | None]] = {}

    def note(self, tp: TP, offset: int, time_ms: int | None) -> None:
        """Record ``offset`` of ``tp`` as handled (``time_ms`` None: dead-lettered)."""
        last = self.latest.get(tp)
        time_ms = -1 if time_ms is None else time_ms
        self.latest[tp] = (offset, time_ms if last is None else max(last[1], time_ms))
        self._quiet.pop(tp, None)

    def _inputs(self, consumer: Any) -> Iterator[tuple[TP, str, int, bool]]:
        """(tp, stream, next offset to process, whether records are with the agent) per
        assigned input partition."""
        for tp in consumer.assignment():
            family = self.family_of.get(tp.topic)
            if family is None:
                continue
            last = self.latest.get(tp)
            done = last[0] + 1 if last else consumer._committed_offset.get(tp) or 0
            read = consumer._read_offset.get(tp)  # last handed to the agent
            yield (
                tp,
                f"{family}:{tp.partition}",
                done,
                (last is not None and read is not None and read > last[0]),
            )

    def candidates(self, consumer: Any) -> dict[TP, int]:
        """Partitions that look read to the end: tp → the offset to probe for a record."""
        out = {}
        for tp, _stream, done, in_flight in self._inputs(consumer):
            end = _highwater(consumer, tp)
            if not in_flight and (end is None or done >= end):
                out[tp] = done
        return out

    def claims(self, consumer: Any, clock: int, ends: Mapping[TP, int]) -> dict[str, int] | None:
        """The claims to send now, or None when they have not changed. ``ends``: where a
        probe found partitions to end (no record at or after that offset)."""
        now = self.monotonic()
        claims: dict[str, int] = {}
        for tp, stream, done, in_flight in self._inputs(consumer):
            last = self.latest.get(tp)
            claim = last[1] if last is not None and last[1] >= 0 else None
            if in_flight or ends.get(tp) != done:
                self._quiet.pop(tp, None)
                self.busy[stream] = (_highwater(consumer, tp), done, consumer._read_offset.get(tp))
            else:
                since, then = self._quiet.setdefault(tp, (now, clock))
                self.busy.pop(stream, None)
                if now - since >= self.idle_s:
                    if then:  # a clock of 0: no event seen yet, nothing to claim
                        claim = max(claim or 0, then + 1)
                    self._quiet[tp] = (now, clock)
            if claim is not None:
                self._claimed[stream] = max(claim, self._claimed.get(stream, claim))
            if stream in self._claimed:
                claims[stream] = self._claimed[stream]
        if not claims or claims == self._sent:
            return None
        self._sent = claims
        return claims

    def describe(self, stream: str) -> str:
        """What this worker knows of ``stream``, for an operator looking at a stall."""
        if stream in self.busy:
            end, done, read = self.busy[stream]
            return (
                f"reading here: high watermark {end}, next to process {done}, "
                f"last handed over {read}"
            )
        if stream in self._claimed:
            return f"idle here, claimed {self._claimed[stream]}"
        return "not read here (another worker's, or not yet assigned)"

    def reset(self) -> None:
        self.latest.clear()
        self._quiet.clear()
        self._claimed.clear()
        self.busy.clear()
        self._sent = {}


class TailProbe:
    """Tells which partitions have a record at or after an offset, asking the broker
    (blocking: run it in an executor). One plain consumer, made when first needed, reads
    from each offset until a record or the partition's end shows; a partition that shows
    neither within ``wait_s`` counts as having records (so it is not taken for idle)."""

    def __init__(self, settings: Settings, wait_s: float = 2.0) -> None:
        self.config = {
            "bootstrap.servers": settings.bootstrap_servers,
            **settings.kafka_client_config(),
            "group.id": f"{settings.app_id}-tail-probe",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "auto.offset.reset": "earliest",
        }
        self.wait_s = wait_s
        self._consumer: Any = None

    def ends(self, offsets: Mapping[TP, int]) -> dict[TP, int]:
        """The partitions of ``offsets`` with no record at or after theirs."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        if not offsets:
            return {}
        if self._consumer is None:
            self._consumer = Consumer(self.config)
        by_key = {(tp.topic, tp.partition): tp for tp in offsets}
        self._consumer.assign(
            [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        )
        ended: dict[TP, int] = {}
        seen: set[TP] = set()
        deadline = time.monotonic() + self.wait_s
        while len(ended) + len(seen) < len(offsets) and time.monotonic() < deadline:
            msg = self._consumer.poll(0.1)
            if msg is None:
                continue
            tp = by_key.get((msg.topic(), msg.partition()))
            if tp is None or tp in seen or tp in ended:
                continue
            error = msg.error()
            if error is None:
                seen.add(tp)
            elif error.code() == KafkaError._PARTITION_EOF and msg.offset() <= offsets[tp]:
                ended[tp] = offsets[tp]
        return ended


class InOrderAcks:
    """Acknowledges each partition's records in offset order, as they are done.

    Faust commits up to the first gap in the acknowledged offsets, but does not check that
    the run starts at the committed offset: with record c held and c+1 acknowledged it
    commits past c, and a crash then loses c. Handing Faust only each partition's prefix of
    done records keeps its commit behind every record still held."""

    def __init__(self) -> None:
        self._open: dict[TP, deque[EventT]] = {}  # in arrival (offset) order
        self._done: dict[TP, set[int]] = {}

    def track(self, event: EventT) -> None:
        self._open.setdefault(event.message.tp, deque()).append(event)

    def done(self, events: list[EventT]) -> None:
        for event in events:
            msg = event.message
            self._done.setdefault(msg.tp, set()).add(msg.offset)
        for tp in {event.message.tp for event in events}:
            queue, done = self._open.get(tp), self._done[tp]
            while queue and queue[0].message.offset in done:
                head = queue.popleft()
                done.discard(head.message.offset)
                head.ack()

    def reset(self) -> None:
        """After a rebalance: what was not acknowledged is read again."""
        self._open.clear()
        self._done.clear()


def _highwater(consumer: Any, tp: TP) -> int | None:
    try:
        return consumer.highwater(tp)  # type: ignore[no-any-return]
    except AssertionError:  # aiokafka: no longer assigned (a rebalance is under way)
        return None


@dataclass
class Components:
    """What the agents work with; exposed for the tests and the worker command."""

    app: faust.App
    codec: Codec
    feedback: FeedbackProcessor
    kpi: KpiAggregator
    control: ControlProcessor
    dead_letters: int = 0


def faust_app(settings: Settings) -> faust.App:
    """The Faust application with this project's broker, commit and fetch configuration;
    also the base of the benchmark's bare agent (streams/testing/bare_agent.py)."""
    faust_patches.apply(
        {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_client_config()}
    )
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
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
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        # The control agent holds back the records of the signals its sequencer waits
        # with; a rebalance must not wait for them (they are read again after it).
        stream_wait_empty=False,
        # Tables keep JSON; every topic below says raw bytes explicitly (Avro is ours).
        key_serializer="json",
        value_serializer="json",
    )


def build_app(settings: Settings) -> Components:
    app = faust_app(settings)
    codec = Codec.from_settings(settings.schema_registry_url)

    def topic(name: str) -> faust.TopicT:
        return app.topic(
            settings.topic(name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )

    topics = {spec.name: topic(spec.name) for spec in TOPICS}

    sink = RecordSink(settings)
    tables: list[faust.Table] = []

    def table(name: str) -> faust.Table:
        created = app.Table(name, default=None, partitions=settings.partitions)
        _changelog_via(sink, created)
        tables.append(created)
        return created

    qualifier = load_qualifier(settings.bounce_rules_file or None)
    rules = load_mx_rules(settings.mx_rules_file or None)
    parts = Components(
        app=app,
        codec=codec,
        feedback=FeedbackProcessor(
            table("messages"),
            table("addresses"),
            table("kpi-parts"),
            qualifier,
            settings.pipeline_config(),
            signal_fn=signal_output(rules),
            clocks=table("clocks"),
        ),
        kpi=KpiAggregator(table("kpi-sums")),
        control=ControlProcessor(
            table("windows"),
            table("throttle-state"),
            rules,
            input_streams(settings.partitions),
            table("sequences"),
        ),
    )

    signal_topic = settings.topic("signal")
    topic_names = {spec.name: settings.topic(spec.name) for spec in TOPICS}
    progress = InputProgress(
        {settings.topic(name): name for name in INPUT_TOPICS}, settings.commit_interval_s
    )
    tail_probe = TailProbe(settings)
    acks = InOrderAcks()
    _flush_before_commit(
        app,
        sink,
        tables,
        lambda: parts.control.persist(lambda p: _writing_partition(signal_topic, p)),
    )

    def send_outputs(outputs: list[Output]) -> None:
        for out in outputs:
            schema = _AVRO_TOPICS.get(out.topic)
            value = codec.encode(schema, out.value) if schema else _json(out.value)
            sink.produce(topic_names[out.topic], out.key.encode(), value)

    def dead_letter(event: EventT, kind: str, reason: str) -> None:
        parts.dead_letters += 1
        msg = event.message
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
        sink.produce(topic_names["dlq"], msg.key, codec.encode("dlq", record))

    family_of = {settings.topic(name): name for name in (*INPUT_TOPICS, "clock")}

    def ingest(msg: Any) -> list[Output]:
        family = family_of[msg.topic]
        if family == "clock":
            now = int(orjson.loads(msg.value)["now"])
            return parts.feedback.tick(now, msg.partition, msg.offset)
        time_ms = None
        try:
            record = codec.decode(family, msg.value)
            validate_event(family, record)
            time_ms = record["event_time"]
            return parts.feedback.process(family, record, msg.partition, msg.offset)
        finally:
            # A dead-lettered record is handled too: its partition can go idle after it.
            progress.note(msg.tp, msg.offset, time_ms)

    def kpi(msg: Any) -> list[Output]:
        return parts.kpi.process(orjson.loads(msg.value), parts.feedback.clock, msg.offset)

    def control(event: EventT) -> list[EventT]:
        """Takes in a signal or a progress record and sends what the sequencer releases;
        returns the records to acknowledge. A signal's record stays unacknowledged while
        the sequencer holds it, so after a crash it is read again."""
        msg = event.message
        data = orjson.loads(msg.value)
        if "progress" in data:
            parts.control.claim(msg.partition, data["progress"])
            ack = [event]
        # A clock tick ("now", from an older worker) is not needed: the sequencer ticks.
        elif "now" in data or not parts.control.add(data, msg.partition, event):
            return [event]
        else:
            ack = []
        released = parts.control.release(msg.partition)
        send_outputs(released.outputs)
        for held, exc in released.failed:
            log.error("control failed at %s@%s: %r", held.message.tp, held.message.offset, exc)
            dead_letter(held, "processing", f"{type(exc).__name__}: {exc}"[:1000])
        return ack + released.tokens + [held for held, _exc in released.failed]

    def agent(channel: Any, name: str, step: Callable[[Any], list[Output]]) -> None:
        async def run(stream: faust.StreamT) -> None:
            async for event in stream.events():
                try:
                    send_outputs(step(event.message))
                except DecodeError as exc:
                    dead_letter(event, exc.kind, exc.reason)
                except Exception as exc:  # a bug must not stop the stream: park the record
                    msg = event.message
                    log.exception("%s failed at %s@%s", name, msg.tp, msg.offset)
                    dead_letter(event, "processing", f"{type(exc).__name__}: {exc}"[:1000])

        app.agent(channel, name=name)(run)

    async def run_control(stream: faust.StreamT) -> None:
        async for event in stream.noack().events():
            acks.track(event)
            try:
                done = control(event)
            except Exception as exc:  # malformed, never held: park the record
                msg = event.message
                log.exception("control failed at %s@%s", msg.tp, msg.offset)
                dead_letter(event, "processing", f"{type(exc).__name__}: {exc}"[:1000])
                done = [event]
            acks.done(done)

    ingest_topics = app.topic(
        *(settings.topic(name) for name in (*INPUT_TOPICS, "clock")),
        key_serializer="raw",
        value_serializer="raw",
    )
    agent(ingest_topics, "ingest", ingest)
    agent(topics["kpi-part"], "kpi", kpi)
    app.agent(topics["signal"], name="control")(run_control)

    stalled: dict[int, tuple[tuple[str, int], int]] = {}

    @app.timer(TICK_INTERVAL_S)
    async def freeze_tables() -> None:
        # Full garbage collection passes over the tables paused the worker for 100-360 ms.
        gc_tuning.freeze_survivors()

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
            value = _json({"now": parts.feedback.clock})
            for partition in range(settings.partitions):
                sink.produce(topic_names["clock"], None, value, partition)

    @app.timer(settings.commit_interval_s)
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
            value = _json({"progress": claims})
            for partition in range(settings.partitions):
                sink.produce(signal_topic, None, value, partition)

    @app.on_partitions_assigned.connect
    async def on_assigned(*_args: Any, **_kwargs: Any) -> None:
        parts.feedback.reset_indexes()
        parts.control.reset()
        progress.reset()
        acks.reset()

    return parts
