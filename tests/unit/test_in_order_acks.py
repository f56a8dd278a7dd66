"""Control records are acknowledged to Faust in offset order (streams.runtime.acks.InOrderAcks)."""

from __future__ import annotations

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.acks import InOrderAcks

TP0, TP1 = TP("signal", 0), TP("signal", 1)


class Record:
    """A record as the control agent keeps it (``ControlRecord``): its partition, offset
    and acknowledgement."""

    def __init__(self, tp: TP, offset: int, acked: list[tuple[TP, int]]) -> None:
        self.tp, self.offset = tp, offset
        self._acked = acked
        self.acked = False

    def ack(self) -> bool:
        self._acked.append((self.tp, self.offset))
        self.acked = True
        return True


def test_a_record_done_after_a_held_one_waits_for_it():
    acked: list[tuple[TP, int]] = []
    acks = InOrderAcks()
    held, progress, other = Record(TP0, 3, acked), Record(TP0, 4, acked), Record(TP1, 9, acked)
    for event in (held, progress, other):
        acks.track(event)
    acks.done([progress, other])
    assert acked == [(TP1, 9)]  # partition 1 does not wait for partition 0
    acks.done([held])
    assert acked == [(TP1, 9), (TP0, 3), (TP0, 4)]


def test_after_a_rebalance_nothing_from_before_is_acknowledged():
    acked: list[tuple[TP, int]] = []
    acks = InOrderAcks()
    old = Record(TP0, 3, acked)
    acks.track(old)
    acks.reset()
    new = Record(TP0, 3, acked)  # read again
    acks.track(new)
    acks.done([new])
    assert new.acked and not old.acked


def test_a_reading_from_before_a_rebalance_done_late_does_not_mark_the_new_one_done():
    acked: list[tuple[TP, int]] = []
    acks = InOrderAcks()
    old = Record(TP0, 3, acked)
    acks.track(old)
    acks.reset()
    new, after = Record(TP0, 3, acked), Record(TP0, 4, acked)  # read again, still held
    acks.track(new)
    acks.track(after)
    acks.done([old, after])
    assert acked == []
    acks.done([new])
    assert acked == [(TP0, 3), (TP0, 4)] and not old.acked


@given(st.permutations(range(12)))
def test_acknowledgements_are_a_growing_prefix_whatever_the_order_done(order):
    acked: list[tuple[TP, int]] = []
    acks = InOrderAcks()
    events = [Record(TP0, 100 + i, acked) for i in range(12)]
    for event in events:
        acks.track(event)
    for i in order:
        acks.done([events[i]])
        assert [offset for _tp, offset in acked] == list(range(100, 100 + len(acked)))
        assert {events[j].offset for j in order[: order.index(i) + 1]} >= {
            offset for _tp, offset in acked
        }
    assert len(acked) == 12
