"""Input in batches, beneath Faust's per-event stream iteration.

Faust's stream iterator spends, per event, a pass of the event loop (``sleep(0)``), two
sensor calls, a context variable, the processor chain and a generator resumption: most of
what a bare Faust agent costs. ``batches`` reads the agent's channel queue directly and
hands over every event already waiting (up to ``max_events``) at once; ``each`` makes each
event the current one in turn, as Faust's iterator does, since a table write takes its
changelog partition from the current event. The agent stays a Faust agent: the same
channel, the same acknowledgements, Faust's commit, tables and recovery.

Safety under a rebalance. A batch is taken from the queue and handled with no ``await``
in between (the steps and the producer are synchronous), so no rebalance callback runs in
the middle of one. Events can still wait in the queue across a rebalance: like Faust's
iterator, ``current`` leaves out those of an earlier consumer generation, or taken while
the flow is suspended (during the rebalance itself). Unlike Faust, it does not acknowledge
them: they are read again from the committed offsets by whichever worker owns their
partition now, and acknowledging them could let a commit pass records the new generation
has not handled yet.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator

import faust
from faust import streams as faust_streams
from faust.types import AppT, EventT

# Events handed over at once at most: enough to leave out the per-event machinery, few
# enough that a batch keeps the event loop (timers, commits, heartbeats) waiting < 50 ms.
MAX_BATCH = 200


def current(app: AppT, items: Iterable[object]) -> list[EventT]:
    """The events among ``items`` that this consumer generation may handle, tracked as
    pending acknowledgement (as Faust's iterator tracks them)."""
    if not app.flow_control.is_active():
        return []
    generation = app.consumer_generation_id
    acking = app.topics.acking_topics
    consumer = app.consumer
    events = []
    for item in items:
        if not isinstance(item, faust.types.EventT):
            continue
        message = item.message
        if message.generation_id != generation:
            continue
        if not message.tracked and message.topic in acking:
            message.tracked = True
            consumer.track_message(message)
        events.append(item)
    return events


async def batches(
    stream: faust.StreamT, max_events: int = MAX_BATCH
) -> AsyncIterator[list[EventT]]:
    """The agent's events, in arrival order, a batch of those already waiting at a time;
    the caller acknowledges each event it has handled (``ack``)."""
    await stream.maybe_start()
    channel = stream.channel
    queue = channel.queue
    while not stream.should_stop:
        # One pass of the event loop per batch, so that a full queue cannot starve the
        # timers and commits; the queue is checked after it (a rebalance clears queues).
        await asyncio.sleep(0)
        try:
            if queue._errors:
                raise queue._errors.popleft()
            items = [queue.get_nowait() if not queue.empty() else await channel.__anext__()]
        except StopAsyncIteration:  # the actor is told to stop reading (Actor.cancel)
            return
        while len(items) < max_events and not queue.empty():
            items.append(queue.get_nowait())
        events = current(stream.app, items)
        if events:
            yield events


def each(events: list[EventT]) -> Iterator[EventT]:
    """The batch's events, each the current event (``faust.streams.current_event``) while
    it is handled."""
    current_event = faust_streams._current_event
    try:
        for event in events:
            current_event.set(weakref.ref(event))  # type: ignore[arg-type]
            yield event
    finally:
        current_event.set(None)


def ack(events: Iterable[EventT]) -> None:
    for event in events:
        event.ack()
