"""Patches of how faust-streaming hands fetched records to the agents and counts their
acknowledgements, where a rebalance can come in the middle (see docs/faust-patches.md).
Registered with the other patches; ``streams.runtime.faust_patches.apply`` installs them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING, Consumer
from faust.types import Message

from streams.runtime.faust_patch_registry import Target, registers

log = logging.getLogger(__name__)

_DRAIN_MESSAGES = Target(
    Consumer,
    "_drain_messages",
    "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
)
_ACK = Target(Consumer, "ack", "5fcf41cf45153475de3790dc56fec1b83335956dc8b3bf7ff6bbb2b57627f03f")


async def _drain_messages(self: Consumer, fetcher: Any) -> None:
    """faust 0.15's ``Consumer._drain_messages`` with a direct hand-over (see below)."""
    callback = self.callback
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    read_offset = self._read_offset
    acks_enabled_for = self.app.topics.acks_enabled_for
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(CONSUMER_FETCHING)
            records = self.getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = read_offset.get(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # read before a seek back; dropped, as faust does
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        # This project's topics have no offset gaps (no compaction, no
                        # transactions): one here means records the client dropped.
                        log.warning("%s: offsets %s-%s skipped", tp, r_offset + 1, offset - 1)
                        await self._add_gap(tp, r_offset + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    generation = self.app.consumer_generation_id
                    if self.suspend_flow.is_set():
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        await callback(message)
                    if self.app.consumer_generation_id != generation or not self.flow_active:
                        # The hand-over waited through a rebalance, whose seek set the read
                        # offsets after it: the rest of this fetch, and this record's
                        # offset, are from before it (its acknowledgement counts for
                        # nothing, see patch_stale_acks_ignored).
                        break
                    read_offset[tp] = offset
            self.diag.unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            return
        raise
    finally:
        self.diag.unset_flag(CONSUMER_FETCHING)


@registers(_DRAIN_MESSAGES)
def patch_direct_record_handover() -> None:
    """Per-record tasks: the fetch loop hands each record over directly.

    Faust's fetch loop (``Consumer._drain_messages``) hands every record over with
    ``wait_first(callback(message), suspend_flow.wait())``, which wraps both, and the
    service's stop and crash events, in tasks: four tasks per record, so a busy worker
    spent its time creating and cancelling tasks. The record is handed over directly while
    the flow is not suspended. A hand-over can still wait through a whole rebalance (its
    queue full, or the flow suspended meanwhile) and then put its record in a queue the
    rebalance cleared; the loop then drops the rest of that fetch and leaves the read
    offset where the rebalance's seek set it. Storing the stale record's offset there, as
    the upstream loop does, drops the records from the committed offset up to it as "read
    before a seek back": input lost under a rebalance during a backlog. Any offset
    gap left in an acknowledged topic is also logged as a warning: this project's topics
    have none of their own, so one means records the client dropped."""
    _DRAIN_MESSAGES.replace(_drain_messages)


def _ack(self: Consumer, message: Message) -> bool:
    fetched_in = message.generation_id  # None: not fetched by a consumer (a test's record)
    if fetched_in is not None and fetched_in != self.app.consumer_generation_id:
        # Read before the last rebalance: the new assignment reads it again from the
        # committed offset. Marked done so that nothing waits for it.
        message.acked = True
        self._unacked_messages.discard(message)
        return False
    return bool(_ACK.upstream(self, message))


@registers(_ACK)
def patch_stale_acks_ignored() -> None:
    """Lost input under a rebalance: acknowledgements from before it count for nothing.

    A stream skips an event of an older consumer generation (one that waited in a queue or
    a hand-over through the rebalance) and acknowledges it, as it does a filtered one. The
    consumer then counted that offset as done in the new generation, although the record
    is read again from the committed offset and not yet handled: Faust commits up to the
    first gap in acknowledged offsets, so a crash could lose it, and with the offset just
    after the committed one missing the commit went past it for good. Only records of the
    current generation are counted now."""
    _ACK.replace(_ack)
