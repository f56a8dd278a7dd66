"""Prometheus metrics of the stream worker, and its ``/metrics``, ``/healthz`` and ``/readyz``.

The agents' hot path only adds to plain dicts (``WorkerStats``); a collector turns them into
Prometheus samples when scraped, so an event costs a few dict updates (about 3 us). What
the pipeline decides (statuses, qualifications, address states, throttle modes) is read
from the output records the worker sends, never computed again here.

Labels stay bounded: families and kinds (Avro enums), statuses, rule names, provider groups,
partitions. No address, message id or delivery id is ever a label.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from aiohttp import web
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streams.pipeline.records import Output
from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.runtime.sink import RecordSink

log = logging.getLogger(__name__)

# Workers on one machine take the next free port from MTA_WEB_PORT on, this many at most.
PORT_TRIES = 32
# Seconds between two computations of the Redis view lag (admin requests to the broker).
VIEW_LAG_TTL_S = 5.0
WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
# The topics the Redis view updater reads (VIEW_TOPICS of streams/serving/views.py).
VIEW_TOPICS = (Topic.STATUS, Topic.ADDRESS, Topic.KPI, Topic.THROTTLE, Topic.REPUTATION)
GC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


def provider_group(scope: str, key: str) -> str:
    """The provider group a throttle key belongs to; domain keys share one label value."""
    if scope == "group":
        return key
    if scope == "ip_group":
        return key.rpartition("|")[2]
    return "(domain)"


class BucketCounts:
    """A histogram's counts without prometheus-client's lock: the control agent observes
    every signal it releases, and only its own thread does."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


@dataclass
class WorkerStats:
    """Counts the agents add to; read at scrape time."""

    events: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    qualifications: dict[tuple[str, str], int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    address_states: dict[str, int] = field(default_factory=dict)
    throttle_changes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # Tombstones sent, by output topic (messages and addresses retired from the tables).
    retired: dict[str, int] = field(default_factory=dict)
    # Throttle key → (scope, mode) as last sent: keys in backoff or suspended now.
    throttle_modes: dict[str, tuple[str, str]] = field(default_factory=dict)
    sequencer_wait: BucketCounts = field(default_factory=lambda: BucketCounts(WAIT_BUCKETS))

    def event_in(self, family: str, kind: str) -> None:
        key = (family, kind)
        self.events[key] = self.events.get(key, 0) + 1

    def dead_letter(self, kind: str) -> None:
        self.dead_letters[kind] = self.dead_letters.get(kind, 0) + 1

    def output(self, out: Output) -> None:
        """Observe one output record the worker sends (status, address or throttle)."""
        value = out.value
        if value is None:
            self.retired[out.topic] = self.retired.get(out.topic, 0) + 1
        elif out.topic == Topic.STATUS:
            status = value["status"]
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if value.get("rule"):
                q = (value.get("failure_reason") or "", value["rule"])
                self.qualifications[q] = self.qualifications.get(q, 0) + 1
        elif out.topic == Topic.ADDRESS:
            state = value["state"]
            self.address_states[state] = self.address_states.get(state, 0) + 1
        elif out.topic == Topic.THROTTLE:
            scope, mode = value["scope"], value["mode"]
            if self.throttle_modes.get(out.key) != (scope, mode):
                self.throttle_modes[out.key] = (scope, mode)
                change = (scope, provider_group(scope, out.key), mode)
                self.throttle_changes[change] = self.throttle_changes.get(change, 0) + 1


OBSERVED_TOPICS = frozenset({Topic.STATUS, Topic.ADDRESS, Topic.THROTTLE})


def _counter(name: str, doc: str, labels: list[str], values: dict[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, count in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
    return family


def stats_metrics(stats: WorkerStats) -> Iterator[Metric]:
    yield _counter("mta_events_in", "Input events taken in", ["family", "kind"], stats.events)
    yield _counter(
        "mta_dead_letters", "Records sent to the dead-letter topic", ["kind"], stats.dead_letters
    )
    yield _counter(
        "mta_qualifications",
        "Status records carrying a bounce qualification",
        ["failure_reason", "rule"],
        stats.qualifications,
    )
    yield _counter(
        "mta_status_changes",
        "Message status records sent, by new status",
        ["status"],
        stats.statuses,
    )
    yield _counter(
        "mta_address_changes",
        "Address health records sent, by new state (quarantined, denylisted, ...)",
        ["state"],
        stats.address_states,
    )
    yield _counter(
        "mta_tombstones",
        "Keys retired from the tables, by output topic (a tombstone sent on each)",
        ["topic"],
        {str(topic): count for topic, count in stats.retired.items()},
    )
    yield _counter(
        "mta_throttle_changes",
        "Throttle settings whose mode changed",
        ["scope", "group", "mode"],
        stats.throttle_changes,
    )
    by_mode: dict[tuple[str, str], int] = {}
    groups = GaugeMetricFamily(
        "mta_throttle_group_mode",
        "1 for the current mode of a provider group",
        labels=["group", "mode"],
    )
    for key, (scope, mode) in sorted(stats.throttle_modes.items()):
        by_mode[(scope, mode)] = by_mode.get((scope, mode), 0) + 1
        if scope == "group":
            groups.add_metric([key, mode], 1)
    yield stats.sequencer_wait.family(
        "mta_sequencer_wait_seconds",
        "From a signal's write to its release by the event-time sequencer",
    )
    keys = GaugeMetricFamily("mta_throttle_keys", "Throttle keys by mode", labels=["scope", "mode"])
    for (scope, mode), count in sorted(by_mode.items()):
        keys.add_metric([scope, mode], count)
    yield keys
    yield groups


@dataclass
class WorkerProbes:
    """What a scrape asks the running worker (set by the app; each returns a snapshot)."""

    held_signals: Callable[[], dict[int, int]]
    consumer_lag: Callable[[], dict[tuple[str, int], int]]
    sink_queue: Callable[[], int]
    sink_errors: Callable[[], int]
    # Table name → keys held in this worker (RocksDB: its estimate).
    table_keys: Callable[[], dict[str, int]] = dict
    view_lag: dict[str, int] = field(default_factory=dict)


class WorkerCollector(Collector):
    def __init__(self, stats: WorkerStats, probes: WorkerProbes) -> None:
        self.stats = stats
        self.probes = probes

    def collect(self) -> Iterable[Metric]:
        yield from stats_metrics(self.stats)
        held = GaugeMetricFamily(
            "mta_sequencer_held_signals",
            "Signals the event-time sequencer holds",
            labels=["partition"],
        )
        for partition, count in sorted(self.probes.held_signals().items()):
            held.add_metric([str(partition)], count)
        yield held
        lag = GaugeMetricFamily(
            "mta_consumer_lag_records",
            "Records between the last one read and the end of each input partition",
            labels=["topic", "partition"],
        )
        for (topic, partition), count in sorted(self.probes.consumer_lag().items()):
            lag.add_metric([topic, str(partition)], count)
        yield lag
        yield GaugeMetricFamily(
            "mta_sink_queue_length",
            "Records the producer has not delivered yet",
            value=self.probes.sink_queue(),
        )
        yield CounterMetricFamily(
            "mta_sink_produce_errors",
            "Records the producer failed to deliver",
            value=self.probes.sink_errors(),
        )
        tables = GaugeMetricFamily(
            "mta_table_keys",
            "Keys in each table of this worker, retired markers included (RocksDB: estimated)",
            labels=["table"],
        )
        for table, count in sorted(self.probes.table_keys().items()):
            tables.add_metric([table], count)
        yield tables
        views = GaugeMetricFamily(
            "mta_view_lag_records",
            "Output records the Redis view updater has not applied yet",
            labels=["topic"],
        )
        for topic, count in sorted(self.probes.view_lag.items()):
            views.add_metric([topic], count)
        yield views


class GcTimer:
    """Times every collection through ``gc.callbacks`` into a histogram."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.histogram.labels(str(info["generation"])).observe(
                time.perf_counter() - self._started
            )

    def install(self) -> None:
        # One timer per process: a second worker app (tests) replaces the first.
        for callback in [c for c in gc.callbacks if isinstance(c, GcTimer)]:
            gc.callbacks.remove(callback)
        gc.callbacks.append(self)


class WorkerMetrics:
    """The worker's registry: its own collectors plus the process, platform and GC ones."""

    def __init__(self, probes: WorkerProbes) -> None:
        self.registry = CollectorRegistry()
        self.stats = WorkerStats()
        self.probes = probes
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.registry.register(WorkerCollector(self.stats, probes))
        self.gc_pause = Histogram(
            "mta_gc_pause_seconds",
            "Garbage collection pauses",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=self.registry,
        )
        GcTimer(self.gc_pause).install()

    def released(self, written_at_s: Iterable[float]) -> None:
        now = time.time()
        for at in written_at_s:
            # A writer's clock ahead of this one's is no negative wait.
            self.stats.sequencer_wait.observe(max(now - at, 0.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# -- the endpoint ------------------------------------------------------------------------


@dataclass
class Readiness:
    """Blocking checks (run in a thread) and the worker's own state (event loop)."""

    broker: Callable[[], bool]
    redis: Callable[[], bool] | None
    assigned: Callable[[], bool]
    recovered: Callable[[], bool]

    async def report(self) -> dict[str, bool]:
        loop = asyncio.get_running_loop()
        checks = {"assigned": self.assigned(), "recovered": self.recovered()}
        checks["broker"] = await loop.run_in_executor(None, self.broker)
        if self.redis is not None:
            checks["redis"] = await loop.run_in_executor(None, self.redis)
        return checks


def metrics_response(body: bytes) -> web.Response:
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def readiness_response(checks: dict[str, bool]) -> web.Response:
    ready = all(checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


def worker_web_app(
    metrics: WorkerMetrics, readiness: Readiness, refresh: Callable[[], Any]
) -> web.Application:
    async def get_metrics(_request: web.Request) -> web.Response:
        await refresh()
        return metrics_response(metrics.exposition())

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        return readiness_response(await readiness.report())

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_site(app: web.Application, host: str, base_port: int) -> tuple[web.AppRunner, int]:
    """Listen on ``base_port`` or the next free one (PORT_TRIES at most)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in range(base_port, min(base_port + PORT_TRIES, 65536)):
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                await runner.cleanup()
                raise
            continue
        return runner, port
    await runner.cleanup()
    raise OSError(errno.EADDRINUSE, f"ports {base_port}-{base_port + PORT_TRIES - 1} are in use")


# -- wiring into the Faust worker ------------------------------------------------------------


def consumer_lag(app: Any) -> dict[tuple[str, int], int]:
    """Records between the last one handed to an agent and the end, per assigned partition
    (input and internal topics alike; what the broker last told the consumer)."""
    consumer = app.consumer
    lag = {}
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is None:
            continue
        read = consumer._read_offset.get(tp)  # last handed to an agent
        done = read + 1 if read is not None else consumer._committed_offset.get(tp) or 0
        lag[(tp.topic, tp.partition)] = max(end - done, 0)
    return lag


def group_lag(
    settings: Settings, group: str, topics: list[str], timeout: float = 5.0
) -> dict[str, int]:
    """Records of ``topics`` that consumer ``group`` has not committed yet, per topic (admin
    API: a consumer in the group, even one that never subscribes, could disturb it)."""
    admin = AdminClient(
        {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_client_config()}
    )
    metadata = admin.list_topics(timeout=timeout)
    tps = [
        TopicPartition(topic, partition)
        for topic in topics
        if topic in metadata.topics
        for partition in metadata.topics[topic].partitions
    ]
    if not tps:
        return {}
    request = ConsumerGroupTopicPartitions(group, tps)
    committed = admin.list_consumer_group_offsets([request])[group].result(timeout)
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
    lag = dict.fromkeys(topics, 0)
    for tp in committed.topic_partitions:
        end = ends[TopicPartition(tp.topic, tp.partition)].result(timeout).offset
        lag[tp.topic] += max(end - max(tp.offset, 0), 0)
    return lag


def serve_endpoint(app: Any, settings: Settings, metrics: WorkerMetrics, sink: RecordSink) -> None:
    """Serve /metrics, /healthz and /readyz from the worker's event loop once it starts."""
    views = (
        redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        if settings.redis_views
        else None
    )
    view_topics = {settings.topic(name): str(name) for name in VIEW_TOPICS}
    refreshed = [0.0]

    def redis_reachable() -> bool:
        assert views is not None
        try:
            return bool(views.ping())
        except redis.RedisError:
            return False

    def view_lag() -> dict[str, int]:
        lag = group_lag(settings, f"{settings.app_id}-views", list(view_topics))
        return {view_topics[topic]: count for topic, count in lag.items()}

    async def refresh() -> None:
        if views is None or time.monotonic() - refreshed[0] < VIEW_LAG_TTL_S:
            return
        refreshed[0] = time.monotonic()
        try:
            lag = await asyncio.get_running_loop().run_in_executor(None, view_lag)
        except Exception as exc:  # a scrape must answer even when the broker does not
            log.warning("Redis view lag not computed: %s", exc)
            return
        metrics.probes.view_lag = lag

    readiness = Readiness(
        broker=sink.broker_reachable,
        redis=redis_reachable if views is not None else None,
        assigned=lambda: bool(app.consumer.assignment()),
        recovered=lambda: app.tables.recovery.completed.is_set() and not app.in_recovery,
    )
    web_app = worker_web_app(metrics, readiness, refresh)

    @app.task
    async def endpoint() -> None:
        runner, port = await start_site(web_app, "0.0.0.0", settings.web_port)
        log.info("metrics and health on port %s (/metrics, /healthz, /readyz)", port)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
