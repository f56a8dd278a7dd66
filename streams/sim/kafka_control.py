"""The control plane through the real broker and a running worker.

- ``publish``: the project's ``EventProducer`` to the input topics (keyed by recipient).
- ``throttle()``: the newest record per key of the throttle (control) topic, read from the
  beginning by a plain consumer with manual assignment, as a sender would read it; the KPI
  topic is read the same way for the live view and the summary.
- ``advance(now)``: a clock tick ``{"now": ms}`` to every partition of the clock topic, the
  same record the worker's own timer sends, so suspensions end and quiet keys step up
  while the simulator skips idle time.
- ``sync()``: flush, then wait until the worker's consumer group has *committed* offsets at
  or past the end of every input and clock partition as they were when ``sync`` started,
  then the same for the internal signal and KPI-partial topics (which the first stage
  filled), then read the throttle and KPI topics to their current end. A Faust worker
  flushes its producer before it commits (``Consumer._commit_offsets``), so a committed
  input offset means the outputs of every earlier input are on their topics. The cost is
  about one commit interval (``MTA_COMMIT_INTERVAL_S``) per stage; the wait fails with
  ``SyncTimeout`` when the worker makes no progress for ``timeout_s`` (a large batch may
  take longer than that).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from streams.pipeline.records import clock_value
from streams.pipeline.topics import INPUT_TOPICS, Topic
from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer
from streams.sim.control import LatestRecords
from streams.sim.mta import Event


class SyncTimeout(TimeoutError):
    """The worker did not catch up in time."""


class _Stall:
    """Times out only when a progress measure stops moving for ``timeout_s``: a large
    batch may take long, a stuck worker must not hang the simulation."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.progress = -1
        self.since = time.monotonic()

    def check(self, progress: int) -> bool:
        now = time.monotonic()
        if progress != self.progress:
            self.progress, self.since = progress, now
        return now - self.since > self.timeout_s


class KafkaControlPlane:
    name = "kafka"

    def __init__(self, settings: Settings, timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.codec = Codec.from_settings(settings)
        self.producer = EventProducer(settings, self.codec)
        client = {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_client_config()}
        self._ticks = Producer({**client, "linger.ms": 5})
        # Reads the worker group's committed offsets; it never subscribes, so never joins.
        self._offsets = Consumer(
            {**client, "group.id": settings.app_id, "enable.auto.commit": False}
        )
        self._reader = Consumer(
            {
                **client,
                "group.id": f"{settings.app_id}-sim-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        self._reader.assign(
            [
                TopicPartition(settings.topic(name), p, OFFSET_BEGINNING)
                for name in ("throttle", "kpi")
                for p in range(settings.partitions)
            ]
        )
        self._names = {settings.topic(n): n for n in ("throttle", "kpi")}
        self._latest = LatestRecords()
        self._now_ms = 0  # the latest virtual time given to advance

    @property
    def throttle_records(self) -> int:
        return self._latest.throttle_records

    def publish(self, events: Sequence[Event]) -> None:
        for family, event in events:
            self.producer.send(family, event)

    def advance(self, now_ms: int) -> None:
        self._now_ms = max(self._now_ms, now_ms)
        self._tick()

    def _tick(self) -> None:
        value = json.dumps(clock_value(self._now_ms)).encode()
        for p in range(self.settings.partitions):
            self._ticks.produce(self.settings.topic(Topic.CLOCK), value, partition=p)

    def _flush_ticks(self) -> None:
        if self._ticks.flush(self.timeout_s):
            raise SyncTimeout("clock ticks not delivered")

    def sync(self) -> None:
        self.producer.flush(self.timeout_s)
        self._flush_ticks()
        self._caught_up((*INPUT_TOPICS, "clock"))
        # KPI partials go out on a partition's clock tick, and a tick may have been taken
        # before the inputs of its partition (another topic): one more tick, once they are
        # all in, publishes every partial they changed.
        self._tick()
        self._flush_ticks()
        self._caught_up(("clock",))
        self._caught_up(("signal", "kpi-part"))
        self._read_outputs()

    def _partitions(self, names: Sequence[str]) -> list[TopicPartition]:
        return [
            TopicPartition(self.settings.topic(n), p)
            for n in names
            for p in range(self.settings.partitions)
        ]

    def _ends(self, tps: Sequence[TopicPartition]) -> dict[tuple[str, int], int]:
        return {
            (tp.topic, tp.partition): self._offsets.get_watermark_offsets(tp, timeout=10)[1]
            for tp in tps
        }

    def _caught_up(self, names: Sequence[str]) -> None:
        tps = self._partitions(names)
        ends = self._ends(tps)
        behind = [tp for tp in tps if ends[(tp.topic, tp.partition)] > 0]
        stall = _Stall(self.timeout_s)
        while behind:
            committed = self._offsets.committed(behind, timeout=10)
            # An uncommitted partition reports a negative offset.
            behind = [tp for tp in committed if tp.offset < ends[(tp.topic, tp.partition)]]
            if not behind:
                return
            if stall.check(sum(max(tp.offset, 0) for tp in committed)):
                lag = {
                    f"{tp.topic}[{tp.partition}]": ends[(tp.topic, tp.partition)] - tp.offset
                    for tp in behind
                }
                raise SyncTimeout(f"worker {self.settings.app_id} made no progress: lag {lag}")
            time.sleep(0.05)

    def _read_outputs(self) -> None:
        tps = self._partitions(("throttle", "kpi"))
        ends = self._ends(tps)
        stall = _Stall(self.timeout_s)
        while True:
            positions = self._reader.position(tps)
            if all(ends[(tp.topic, tp.partition)] <= max(tp.offset, 0) for tp in positions):
                return
            if stall.check(sum(max(tp.offset, 0) for tp in positions)):
                raise SyncTimeout("throttle and KPI topics not read to their end in time")
            for msg in self._reader.consume(1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"control topic read failed: {err}")
                name = self._names[msg.topic()]
                self._latest.add(name, self.codec.decode(name, msg.value()))

    def throttle(self) -> Mapping[str, Mapping[str, Any]]:
        return self._latest.throttle

    def kpi(self, delivery_id: str) -> Mapping[str, Any] | None:
        return self._latest.kpis.get(delivery_id)

    def close(self) -> None:
        self._reader.close()
        self._offsets.close()
        self._ticks.flush(10)
