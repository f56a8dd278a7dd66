"""What a worker claims about the input streams it reads (streams.app.InputProgress)."""

from __future__ import annotations

from dataclasses import dataclass, field

from faust.types import TP

from streams.app import InputProgress

SEND0, RETRY0 = TP("p.send", 0), TP("p.retry", 0)


@dataclass
class FakeConsumer:
    """The four things InputProgress reads from Faust's consumer."""

    ends: dict[TP, int | None]
    _committed_offset: dict[TP, int] = field(default_factory=dict)
    _read_offset: dict[TP, int] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int | None:
        end = self.ends[tp]
        if end == -1:
            raise AssertionError("Partition is not assigned")
        return end


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress() -> tuple[InputProgress, Clock]:
    clock = Clock()
    return InputProgress({"p.send": "send", "p.retry": "retry"}, 1.0, clock), clock


def test_a_busy_stream_claims_the_largest_time_processed_once_per_change():
    progress, _clock = _progress()
    consumer = FakeConsumer({SEND0: 10, RETRY0: None})
    progress.note(SEND0, 3, 5_000)
    progress.note(SEND0, 4, 4_000)  # times going backwards do not lower the claim
    consumer._read_offset[SEND0] = 4
    assert progress.claims(consumer, clock=5_000) == {"send:0": 5_000}
    assert progress.claims(consumer, clock=5_000) is None  # unchanged: nothing to send


def test_a_stream_with_nothing_to_read_claims_the_clock_of_one_idle_period_ago():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 5, RETRY0: 7}, _committed_offset={RETRY0: 7})
    progress.note(SEND0, 4, 5_000)
    consumer._read_offset[SEND0] = 4
    assert progress.claims(consumer, clock=5_000) == {"send:0": 5_000}
    clock.now += 0.5
    assert progress.claims(consumer, clock=6_000) is None  # not idle long enough
    clock.now += 0.6
    assert progress.claims(consumer, clock=7_000) == {"send:0": 5_001, "retry:0": 5_001}
    clock.now += 1.0
    assert progress.claims(consumer, clock=7_000) == {"send:0": 7_001, "retry:0": 7_001}


def test_records_left_to_read_or_handed_over_and_unprocessed_are_not_idleness():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 9, RETRY0: None})
    progress.note(SEND0, 4, 5_000)
    consumer._read_offset[SEND0] = 4
    for _ in range(3):  # records 5-8 are on the broker: the end is ahead
        progress.claims(consumer, clock=9_000)
        clock.now += 1.0
    assert progress.claims(consumer, clock=9_000) is None
    consumer.ends[SEND0] = 5  # a short high watermark, but record 5 is with the agent
    consumer._read_offset[SEND0] = 5
    for _ in range(3):
        assert progress.claims(consumer, clock=9_000) is None
        clock.now += 1.0
    consumer.ends[SEND0] = -1  # a rebalance is under way
    assert progress.claims(consumer, clock=9_000) is None


def test_an_idle_stream_claims_once_the_worker_has_a_clock():
    progress, clock = _progress()
    consumer = FakeConsumer({RETRY0: 0})
    assert progress.claims(consumer, clock=0) is None  # started, no event anywhere yet
    clock.now += 1.0
    assert progress.claims(consumer, clock=3_000) is None
    clock.now += 1.0
    assert progress.claims(consumer, clock=3_000) == {"retry:0": 3_001}


def test_a_dead_lettered_last_record_does_not_keep_a_stream_busy():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 6})
    progress.note(SEND0, 4, 5_000)
    progress.note(SEND0, 5, None)  # undecodable: no event time, but handled
    consumer._read_offset[SEND0] = 5
    assert progress.claims(consumer, clock=5_000) == {"send:0": 5_000}
    clock.now += 1.0
    assert progress.claims(consumer, clock=5_000) == {"send:0": 5_001}


def test_claims_never_go_down_between_idle_periods():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 5})
    progress.note(SEND0, 4, 5_000)
    consumer._read_offset[SEND0] = 4
    assert progress.claims(consumer, clock=5_000) == {"send:0": 5_000}
    clock.now += 1.0
    assert progress.claims(consumer, clock=8_000) == {"send:0": 5_001}
    assert "idle here, claimed 5001" in progress.describe("send:0")
    for _ in range(3):  # within the next idle period: the idle claim stands, nothing to send
        clock.now += 0.3
        assert progress.claims(consumer, clock=8_000) is None
    clock.now += 0.2
    assert progress.claims(consumer, clock=8_000) == {"send:0": 8_001}
    progress.note(SEND0, 5, 6_000)  # a late record below the claim does not lower it
    consumer.ends[SEND0], consumer._read_offset[SEND0] = 7, 5
    assert progress.claims(consumer, clock=8_000) is None
    assert "reading here: end 7, next to process 6" in progress.describe("send:0")
    assert "not read here" in progress.describe("send:1")
