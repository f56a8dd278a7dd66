"""The control agent's records: what it keeps of each while held, and their in-order
acknowledgement."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from faust.types import TP, EventT


class ControlRecord:
    """What the control agent keeps of a record it read, in place of the faust event.

    A signal's record is held until the sequencer releases it, and a backlog holds tens of
    thousands at once. For a short signal a faust event and its Kafka record are about
    eight objects and 620 bytes, this about four and 300, value and key included
    (``tests/unit/test_control_record.py``). What a backlog held and freed leaves the
    small-object allocator's arenas sparse, and they are not given back
    (docs/performance.md, "Tracked state").

    It answers to what the consumer's acknowledgement reads of a message, and is
    acknowledged as the event would be on its last reference: the control topic is read by
    one agent only, so each of its records has one."""

    __slots__ = (
        "__weakref__",  # the consumer keeps its unacknowledged records in a WeakSet
        "_consumer",
        "acked",
        "generation_id",
        "key",
        "offset",
        "partition",
        "timestamp",
        "topic",
        "tp",
        "value",
    )

    def __init__(self, event: EventT) -> None:
        msg = event.message
        self.topic, self.partition, self.offset = msg.topic, msg.partition, msg.offset
        self.key, self.value, self.timestamp = msg.key, msg.value, msg.timestamp
        self.tp = msg.tp
        self.generation_id = msg.generation_id
        self.acked = False
        self._consumer = event.app.consumer

    def ack(self) -> bool:
        return bool(self._consumer.ack(self))  # False once acknowledged: it checks ``acked``


class Ackable(Protocol):
    tp: TP

    def ack(self) -> bool: ...


class InOrderAcks:
    """Acknowledges each partition's records in offset order, as they are done.

    Faust commits up to the first gap in the acknowledged offsets, but does not check that
    the run starts at the committed offset: with record c held and c+1 acknowledged it
    commits past c, and a crash then loses c. Handing Faust only each partition's prefix of
    done records keeps its commit behind every record still held.

    Records are told apart by their reading (the object), not the offset: after a rebalance
    a record is read again at the same offset, and the earlier reading, if it finishes
    late, must not mark the new one done."""

    def __init__(self) -> None:
        # Per partition, in arrival (offset) order: [record, done]; and the same entries by
        # record, for the records tracked since the last reset.
        self._open: dict[TP, deque[list[Any]]] = {}
        self._entries: dict[int, list[Any]] = {}

    def track(self, record: Ackable) -> None:
        entry = [record, False]
        self._open.setdefault(record.tp, deque()).append(entry)
        self._entries[id(record)] = entry  # the entry keeps the record, so its id, alive

    def done(self, records: list[Ackable]) -> None:
        tps: set[TP] = set()
        for record in records:
            entry = self._entries.get(id(record))
            if entry is not None:  # else tracked before a reset: it is read again
                entry[1] = True
                tps.add(record.tp)
        for tp in tps:
            queue = self._open[tp]
            while queue and queue[0][1]:
                head = queue.popleft()[0]
                del self._entries[id(head)]
                head.ack()
            if not queue:
                del self._open[tp]

    def reset(self) -> None:
        """After a rebalance: what was not acknowledged is read again."""
        self._open.clear()
        self._entries = {}  # a dict keeps the size a backlog gave it
