"""Batched input beneath Faust's stream iterator (streams.runtime.batches), on Faust's own
app, stream, channel queue, events and messages; no broker."""

from __future__ import annotations

import asyncio

import faust
from faust.events import Event
from faust.streams import current_event
from faust.types import EventT
from faust.types.tuples import Message

from streams.runtime.batches import ack, batches, each


def _app() -> faust.App:
    app = faust.App("batches-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    app.flow_control.resume()
    return app


def _event(app: faust.App, partition: int, offset: int, generation: int) -> EventT:
    message = Message(
        "in", partition, offset, 0.0, 0, {}, b"k", b"v", None, generation_id=generation
    )
    return Event(app, b"k", b"v", {}, message)


def _offsets(events: list[EventT]) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in events]


def test_waiting_events_come_in_order_a_batch_of_at_most_max_at_a_time():
    async def run() -> list[list[tuple[int, int]]]:
        app = _app()
        stream = app.stream(app.channel())
        for offset in range(7):
            stream.channel.queue.put_nowait(_event(app, 0, offset, 0))
        it = batches(stream, max_events=3)
        return [_offsets(await it.__anext__()) for _ in range(3)]

    assert asyncio.run(run()) == [
        [(0, 0), (0, 1), (0, 2)],
        [(0, 3), (0, 4), (0, 5)],
        [(0, 6)],
    ]


def test_a_rebalance_while_a_batch_waits_leaves_its_earlier_events_unacknowledged():
    """Partition 1 is revoked, partition 0 kept, while their events wait in the queue: the
    batch holds both generations; only the events read after the rebalance are handled
    and acknowledged, and the earlier ones stay unacknowledged, to be read again by their
    partition's owner from the committed offsets."""

    async def run() -> tuple[list[tuple[int, int]], list[EventT], list[EventT]]:
        app = _app()
        stream = app.stream(app.channel())
        queue = stream.channel.queue
        before = [_event(app, 0, 5, 1), _event(app, 1, 7, 1), _event(app, 0, 6, 1)]
        for event in before:
            queue.put_nowait(event)
        app.consumer_generation_id = 2  # the rebalance: partition 0 is read again from 5
        after = [_event(app, 0, 5, 2), _event(app, 0, 6, 2)]
        for event in after:
            queue.put_nowait(event)
        batch = await batches(stream).__anext__()
        ack(batch)
        return _offsets(batch), before, after

    handled, before, after = asyncio.run(run())
    assert handled == [(0, 5), (0, 6)]
    assert all(e.message.acked for e in after)
    assert not any(e.message.acked for e in before)


def test_events_taken_while_the_flow_is_suspended_are_left_for_after_the_rebalance():
    async def run() -> list[tuple[int, int]]:
        app = _app()
        stream = app.stream(app.channel())
        queue = stream.channel.queue
        queue.put_nowait(_event(app, 0, 1, 0))
        app.flow_control.suspend()
        it = batches(stream)
        waiting = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.05)  # the suspended flow drops the first event
        assert not waiting.done()
        app.flow_control.resume()
        queue.put_nowait(_event(app, 0, 1, 0))  # read again after the seek
        return _offsets(await asyncio.wait_for(waiting, 5))

    assert asyncio.run(run()) == [(0, 1)]


def test_each_event_is_the_current_one_while_it_is_handled():
    """Faust tables take a write's changelog partition from the current event."""
    app = _app()
    events = [_event(app, 2, 0, 0), _event(app, 3, 0, 0)]
    seen = [current_event() for _event in each(events)]
    assert seen == events
    assert current_event() is None


def test_batches_end_when_the_actor_is_told_to_stop_reading():
    """Faust stops an actor by throwing StopAsyncIteration into its channel's queue."""

    async def run() -> list[list[tuple[int, int]]]:
        app = _app()
        stream = app.stream(app.channel())
        stream.channel.queue.put_nowait(_event(app, 0, 0, 0))
        got = []

        async def read() -> None:
            async for events in batches(stream):
                got.append(_offsets(events))

        reading = asyncio.ensure_future(read())
        await asyncio.sleep(0.05)
        stream.channel._throw(StopAsyncIteration())
        await asyncio.wait_for(reading, 5)
        return got

    assert asyncio.run(run()) == [[(0, 0)]]
