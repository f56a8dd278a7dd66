"""Input progress: how far each input stream a worker reads has come, and a probe that asks
the broker whether a partition really has nothing left to read."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from faust.types import TP

from streams.runtime.config import Settings


class InputProgress:
    """How far each input stream this worker reads has come, told to every control
    partition (``{"progress": {stream: ms}}``) so that its sequencer can release signals.

    A stream's claim is the largest event time processed from it (a stream's times are
    assumed not to go backwards). A stream is *idle* when nothing is left to read in it
    and nothing of it was processed for ``idle_s``; it then claims the worker's clock as
    it was ``idle_s`` ago, plus 1 ms (assuming the producers write in event-time order and
    a record takes less than ``idle_s`` to reach the broker), so that an idle partition
    does not hold every decision back. The clock is sampled at every round, so an idle
    claim trails the clock by ``idle_s`` and the round's interval, no more. "Nothing left" is not
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
        # tp → monotonic time since when it has been seen with nothing to read
        self._quiet: dict[TP, float] = {}
        # (monotonic time, worker clock) of each round of the last ``idle_s``, oldest first,
        # with the last round before that
        self._clocks: deque[tuple[float, int]] = deque()
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
        then = self._clock_ago(now, clock)
        claims: dict[str, int] = {}
        for tp, stream, done, in_flight in self._inputs(consumer):
            last = self.latest.get(tp)
            claim = last[1] if last is not None and last[1] >= 0 else None
            if in_flight or ends.get(tp) != done:
                self._quiet.pop(tp, None)
                self.busy[stream] = (_highwater(consumer, tp), done, consumer._read_offset.get(tp))
            else:
                since = self._quiet.setdefault(tp, now)
                self.busy.pop(stream, None)
                # A clock of 0 (or none that old): no event seen yet, nothing to claim.
                if now - since >= self.idle_s and then:
                    claim = max(claim or 0, then + 1)
            if claim is not None:
                self._claimed[stream] = max(claim, self._claimed.get(stream, claim))
            if stream in self._claimed:
                claims[stream] = self._claimed[stream]
        if not claims or claims == self._sent:
            return None
        self._sent = claims
        return claims

    def _clock_ago(self, now: float, clock: int) -> int | None:
        """Note this round's clock; return the clock as it was ``idle_s`` ago (that of the
        last round at or before then), None when no round is that old."""
        self._clocks.append((now, clock))
        cutoff = now - self.idle_s
        while len(self._clocks) > 1 and self._clocks[1][0] <= cutoff:
            self._clocks.popleft()
        when, then = self._clocks[0]
        return then if when <= cutoff else None

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
        self._clocks.clear()
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


def _highwater(consumer: Any, tp: TP) -> int | None:
    try:
        return consumer.highwater(tp)  # type: ignore[no-any-return]
    except AssertionError:  # aiokafka: no longer assigned (a rebalance is under way)
        return None
