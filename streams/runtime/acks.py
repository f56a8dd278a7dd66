"""In-order acknowledgement of the control agent's records."""

from __future__ import annotations

from collections import deque

from faust.types import TP, EventT


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
