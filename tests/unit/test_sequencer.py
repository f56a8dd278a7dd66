"""The event-time sequencer releases one order whatever the arrival interleaving."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.control.sequencer import Sequencer

STREAMS = ("send:0", "send:1", "bounce:0")
TICK = 10


def _seq() -> Sequencer[str]:
    return Sequencer(STREAMS, TICK)


def test_nothing_is_released_before_every_stream_is_heard_of():
    seq = _seq()
    assert seq.add("send:0", 0, 5, "a")
    assert list(seq.steps()) == []
    seq.claim("send:1", 100)
    assert list(seq.steps()) == []
    seq.claim("bounce:0", 100)
    assert list(seq.steps()) == []  # send:0 may still send at 5
    seq.claim("send:0", 6)
    assert list(seq.steps()) == [("signal", 5, "a")]


def test_signals_and_ticks_come_in_event_time_order_below_the_watermark():
    seq = _seq()
    seq.add("send:1", 0, 31, "late-stream")
    seq.add("send:0", 0, 12, "a")
    seq.add("send:0", 1, 25, "b")
    seq.claim("bounce:0", 40)
    # send:0's bound is 25 (its last signal): b waits, a and the tick at 20 go.
    assert list(seq.steps()) == [("signal", 12, "a"), ("tick", 20, None)]
    seq.claim("send:0", 50)
    seq.claim("send:1", 40)
    assert list(seq.steps()) == [
        ("signal", 25, "b"),
        ("tick", 30, None),
        ("signal", 31, "late-stream"),
        ("tick", 40, None),  # nothing below 40 can come any more
    ]
    assert seq.held == 0


def test_at_equal_times_streams_come_in_the_order_given():
    seq = _seq()
    seq.add("bounce:0", 0, 10, "outcome")
    seq.add("send:1", 0, 10, "attempt 2")
    seq.add("send:0", 0, 10, "attempt 1")
    steps = list(seq.steps(until=11))
    assert [s[2] for s in steps] == ["attempt 1", "attempt 2", "outcome"]


def test_a_stream_whose_times_go_backwards_keeps_its_offset_order():
    seq = _seq()
    seq.add("send:0", 0, 30, "first")
    seq.add("send:0", 1, 10, "second")  # effective time 30
    steps = list(seq.steps(until=100))
    assert [s[2] for s in steps if s[0] == "signal"] == ["first", "second"]
    assert [s[1] for s in steps if s[0] == "signal"] == [30, 30]


def test_a_redelivered_signal_is_refused_and_stored_state_survives_a_restart():
    seq = _seq()
    seq.add("send:0", 0, 12, "a")
    seq.add("send:0", 1, 14, "b")
    assert not seq.add("send:0", 1, 14, "b")  # held already
    list(seq.steps(until=13))
    restored: Sequencer[str] = Sequencer.from_dict(seq.to_dict(), STREAMS, TICK)
    assert not restored.add("send:0", 0, 12, "a")  # released before the restart
    assert restored.add("send:0", 1, 14, "b")
    assert next(restored.steps(until=100)) == ("signal", 14, "b")


def test_tick_must_be_positive():
    with pytest.raises(ValueError, match="tick_ms"):
        Sequencer(STREAMS, 0)


# Per stream: event times that never go backwards (the streams' offset order).
_times = st.lists(st.integers(0, 200), max_size=12).map(sorted)


@settings(max_examples=200, deadline=None)
@given(
    per_stream=st.tuples(_times, _times, _times),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_interleaving_claims_and_restarts_give_the_reference_order(per_stream, seed):
    """Arrivals interleaved at random, valid claims and releases at random points, and
    restarts from the stored state (held signals read again): the released sequence is
    the one of a run that saw everything first."""
    signals = [
        (stream, offset, t, f"{stream}@{offset}")
        for stream, times in zip(STREAMS, per_stream, strict=True)
        for offset, t in enumerate(times)
    ]
    end = max((s[2] for s in signals), default=0) + 1

    reference = _seq()
    for stream, offset, t, item in signals:
        reference.add(stream, offset, t, item)
    expected = list(reference.steps(until=end))

    rng = random.Random(seed)
    queues = {s: [x for x in signals if x[0] == s] for s in STREAMS}
    sent = {s: 0 for s in STREAMS}  # signals of each stream handed over so far
    arrived: list = []  # the signal topic, in arrival order
    seq = _seq()
    got: list = []
    stored = (seq.to_dict(), 0)  # state and output count at the last commit
    while any(sent[s] < len(queues[s]) for s in STREAMS):
        stream = rng.choice([s for s in STREAMS if sent[s] < len(queues[s])])
        x = queues[stream][sent[stream]]
        arrived.append(x)
        seq.add(*x)
        sent[stream] += 1
        for s in STREAMS:  # a true claim: the next time the stream will send
            if rng.random() < 0.3:
                rest = queues[s][sent[s] :]
                seq.claim(s, rest[0][2] if rest else end)
        if rng.random() < 0.5:
            got += list(seq.steps())
        if rng.random() < 0.3:
            stored = (seq.to_dict(), len(got))
        if rng.random() < 0.1:
            # crash: what was released since the commit is lost with its effects, and
            # the signal topic is read again (released signals are refused)
            seq = Sequencer.from_dict(stored[0], STREAMS, TICK)
            del got[stored[1] :]
            for y in arrived:
                seq.add(*y)
    got += list(seq.steps(until=end))
    assert got == expected
