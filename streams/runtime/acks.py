"""In-order acknowledgement of the control agent's records."""

from __future__ import annotations

from collections import deque
from typing import Any

from faust.types import TP, EventT


class InOrderAcks:
    """Acknowledges each partition's records in offset order, as they are done.

    Faust commits up to the first gap in the acknowledged offsets, but does not check that
    the run starts at the committed offset: with record c held and c+1 acknowledged it
    commits past c, and a crash then loses c. Handing Faust only each partition's prefix of
    done records keeps its commit behind every record still held.

    Records are told apart by the event, not the offset: after a rebalance a record is read
    again at the same offset, and the earlier reading, if it finishes late, must not mark
    the new one done."""

    def __init__(self) -> None:
        # Per partition, in arrival (offset) order: [event, done]; and the same entries by
        # event, for the events tracked since the last reset.
        self._open: dict[TP, deque[list[Any]]] = {}
        self._entries: dict[int, list[Any]] = {}

    def track(self, event: EventT) -> None:
        entry = [event, False]
        self._open.setdefault(event.message.tp, deque()).append(entry)
        self._entries[id(event)] = entry  # the entry keeps the event, so its id, alive

    def done(self, events: list[EventT]) -> None:
        tps: set[TP] = set()
        for event in events:
            entry = self._entries.get(id(event))
            if entry is not None:  # else tracked before a reset: it is read again
                entry[1] = True
                tps.add(event.message.tp)
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
