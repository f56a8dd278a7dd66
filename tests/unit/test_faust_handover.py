"""The hand-over patches of streams/runtime/faust_handover.py, checked without a broker.

As in test_faust_patches.py, each scenario runs with the upstream function and again with
the patch: the upstream run shows the defect's symptom, the patched run does not. The
consumer is a real Faust consumer of an app that is never started; the fetches are fakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from faust.types.tuples import Message

from streams.runtime import faust_handover
from streams.testing.faust_patching import unstarted_app, use_patch

STREAM = TP("faust-patches-test-input", 0)

# -- patch_direct_record_handover


OFFSETS = [*range(50), *range(60, 100)]  # offsets 50-59 are missing


async def hand_over_records() -> tuple[list[int], int, list[Any]]:
    """Offsets handed to the stream, tasks created meanwhile, gaps recorded for commits."""
    consumer = unstarted_app().consumer
    consumer.app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
    handed: list[int] = []

    async def callback(message: Any) -> None:
        handed.append(message.offset)

    fetcher = SimpleNamespace(_stopped=asyncio.Event())

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for offset in OFFSETS:
            yield STREAM, SimpleNamespace(topic=STREAM.topic, offset=offset)
        fetcher._stopped.set()

    consumer.callback = callback
    consumer.getmany = getmany  # type: ignore[method-assign]
    tasks = 0

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        nonlocal tasks
        tasks += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    asyncio.get_running_loop().set_task_factory(counting_factory)
    await consumer._drain_messages(fetcher)
    return handed, tasks, sorted(consumer._gap[STREAM])


def test_records_are_handed_over_without_tasks_and_gaps_are_logged(monkeypatch, caplog):
    use_patch(monkeypatch, "patch_direct_record_handover", patched=False)
    handed, tasks, gaps = asyncio.run(hand_over_records())
    assert handed == OFFSETS
    assert tasks >= 4 * len(OFFSETS)
    use_patch(monkeypatch, "patch_direct_record_handover", patched=True)
    with caplog.at_level(logging.WARNING, logger=faust_handover.__name__):
        assert asyncio.run(hand_over_records()) == (handed, 1, gaps)
    assert f"{STREAM}: offsets 50-59 skipped" in caplog.text


# A fetch of offsets 0-9; the hand-over of offset 5 waits through a rebalance, whose seek
# sets the read offset back to the committed offset 2; the next fetch reads 2-9 again.
STALE_AT, COMMITTED = 5, 2


async def hand_over_through_a_rebalance() -> list[tuple[int, int]]:
    """(generation, offset) of every record handed to the stream."""
    consumer = unstarted_app().consumer
    consumer.app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
    app = consumer.app
    handed: list[tuple[int, int]] = []

    async def callback(message: Any) -> None:
        handed.append((app.consumer_generation_id, message.offset))
        if app.consumer_generation_id == 0 and message.offset == STALE_AT:
            app.consumer_generation_id = 1  # what the rebalance does meanwhile
            consumer._read_offset[STREAM] = COMMITTED

    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    fetches = [range(10), range(COMMITTED, 10)]

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for offset in fetches.pop(0):
            yield STREAM, SimpleNamespace(topic=STREAM.topic, offset=offset, key=None, value=b"")
        if not fetches:
            fetcher._stopped.set()

    consumer.callback = callback
    consumer.getmany = getmany  # type: ignore[method-assign]
    await consumer._drain_messages(fetcher)
    return handed


def test_a_hand_over_through_a_rebalance_leaves_the_read_offset_to_its_seek(monkeypatch):
    use_patch(monkeypatch, "patch_direct_record_handover", patched=False)
    after = [o for g, o in asyncio.run(hand_over_through_a_rebalance()) if g == 1]
    # The stale fetch goes on, then the new one is dropped up to 9: 2-5 are never read again.
    assert after == [6, 7, 8, 9, 9]
    use_patch(monkeypatch, "patch_direct_record_handover", patched=True)
    handed = asyncio.run(hand_over_through_a_rebalance())
    assert handed[: STALE_AT + 1] == [(0, o) for o in range(STALE_AT + 1)]
    assert handed[STALE_AT + 1 :] == [(1, o) for o in range(COMMITTED, 10)]


# -- patch_stale_acks_ignored


def acked_offsets(generations: dict[int, int | None]) -> tuple[list[int], set[int]]:
    """Offsets the consumer counts as acknowledged after acking one message per offset of
    ``generations`` (offset → the generation it was fetched in), in generation 3; and the
    offsets marked acked."""
    consumer = unstarted_app().consumer
    consumer.app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
    consumer.app.consumer_generation_id = 3
    marked = set()
    for offset, generation in generations.items():
        message = Message(
            STREAM.topic, STREAM.partition, offset, 0.0, 0, None, None, b"", None,
            tp=STREAM, generation_id=generation,
        )  # fmt: skip
        consumer.ack(message)
        if message.acked:
            marked.add(offset)
    return sorted(consumer._acked[STREAM]), marked


def test_acknowledgements_from_before_a_rebalance_count_for_nothing(monkeypatch):
    generations = {10: 3, 11: 2, 12: None, 13: 3}
    use_patch(monkeypatch, "patch_stale_acks_ignored", patched=False)
    assert acked_offsets(generations) == ([10, 11, 12, 13], {10, 11, 12, 13})
    use_patch(monkeypatch, "patch_stale_acks_ignored", patched=True)
    # Offset 11 is read again in this generation: done, but not counted for the commit.
    assert acked_offsets(generations) == ([10, 12, 13], {10, 11, 12, 13})
