"""The worker's checkpoint: before Faust commits input offsets, the state kept in memory is
written to the tables, then table changelogs and outputs are flushed to the broker, so no
input offset is committed ahead of what it caused.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import faust
import orjson
from faust import streams as faust_streams
from faust.types import TP

from streams.runtime.sink import RecordSink


class _Sent(NamedTuple):
    """What Faust's table reads back from a changelog send: the record's partition."""

    message: Any


class _Partition(NamedTuple):
    partition: int


def json_bytes(obj: Any) -> bytes:
    # Non-string keys become strings, as with the standard library.
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def changelog_via(sink: RecordSink, table: faust.Table) -> None:
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
        # keys are always JSON here, values JSON or the encoded bytes of the large tables
        # (streams/pipeline/table_values.py), and a deletion is a tombstone.
        if value is not None and not isinstance(value, bytes):
            value = json_bytes(value)
        sink.produce(topic, json_bytes(key), value, partition)
        return _Sent(_Partition(partition))

    table.send_changelog = send_changelog  # type: ignore[method-assign]


def flush_before_commit(
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
def writing_partition(topic: str, partition: int) -> Iterator[None]:
    """Table writes outside stream iteration (at commit time): Faust tables and stores take
    a write's partition from the current event, so one stands in for the duration."""
    event = _PartitionEvent(topic, partition)
    token = faust_streams._current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)
