"""What a worker claims about the input streams it reads (runtime.progress.InputProgress)."""

from __future__ import annotations

from dataclasses import dataclass, field

from faust.types import TP

from streams.runtime.progress import InputProgress

SEND0, RETRY0 = TP("p.send", 0), TP("p.retry", 0)


@dataclass
class FakeConsumer:
    """The four things InputProgress reads from Faust's consumer; ``ends`` are the high
    watermarks the client knows (None: none yet, -1: the partition is being revoked)."""

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


def _claims(
    progress: InputProgress, consumer: FakeConsumer, clock: int, broker: dict[TP, int]
) -> dict[str, int] | None:
    """One round as the worker's timer runs it, ``broker`` holding each partition's true
    end (what the probe finds)."""
    candidates = progress.candidates(consumer)
    ends = {tp: offset for tp, offset in candidates.items() if broker.get(tp, 0) <= offset}
    return progress.claims(consumer, clock, ends)


def test_a_busy_stream_claims_the_largest_time_processed_once_per_change():
    progress, _clock = _progress()
    consumer = FakeConsumer({SEND0: 10, RETRY0: None})
    progress.note(SEND0, 3, 5_000)
    progress.note(SEND0, 4, 4_000)  # times going backwards do not lower the claim
    consumer._read_offset[SEND0] = 4
    broker = {SEND0: 10, RETRY0: 3}
    assert _claims(progress, consumer, 5_000, broker) == {"send:0": 5_000}
    assert _claims(progress, consumer, 5_000, broker) is None  # unchanged: nothing to send
    assert progress.candidates(consumer) == {RETRY0: 0}  # no watermark known: probe it


def test_a_stream_with_nothing_to_read_claims_the_clock_of_one_idle_period_ago():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 5, RETRY0: 7}, _committed_offset={RETRY0: 7})
    broker = {SEND0: 5, RETRY0: 7}
    progress.note(SEND0, 4, 5_000)
    consumer._read_offset[SEND0] = 4
    assert _claims(progress, consumer, 5_000, broker) == {"send:0": 5_000}
    clock.now += 0.5
    assert _claims(progress, consumer, 6_000, broker) is None  # not idle long enough
    clock.now += 0.6
    assert _claims(progress, consumer, 7_000, broker) == {"send:0": 5_001, "retry:0": 5_001}
    clock.now += 1.0
    assert _claims(progress, consumer, 7_000, broker) == {"send:0": 7_001, "retry:0": 7_001}


def test_a_short_high_watermark_is_not_taken_for_the_end():
    """Tansu reports the base offset of the last batch: after a restart the committed
    offset can equal it while the batch's records are still to be read."""
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 12, RETRY0: 3}, _committed_offset={SEND0: 12, RETRY0: 3})
    broker = {SEND0: 15, RETRY0: 3}
    assert progress.candidates(consumer) == {SEND0: 12, RETRY0: 3}
    for _ in range(3):
        _claims(progress, consumer, 9_000, broker)
        clock.now += 1.0
    assert _claims(progress, consumer, 9_000, broker) is None
    assert progress._claimed == {"retry:0": 9_001}  # the truly idle one only
    assert "next to process 12" in progress.describe("send:0")


def test_records_left_to_read_or_handed_over_and_unprocessed_are_not_idleness():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 9, RETRY0: None})
    broker = {SEND0: 9, RETRY0: 2}
    progress.note(SEND0, 4, 5_000)
    consumer._read_offset[SEND0] = 4
    for _ in range(3):  # records 5-8 are on the broker: the end is ahead
        _claims(progress, consumer, 9_000, broker)
        clock.now += 1.0
    assert _claims(progress, consumer, 9_000, broker) is None
    consumer.ends[SEND0] = 5  # record 5 is with the agent, not processed yet
    consumer._read_offset[SEND0] = 5
    broker[SEND0] = 5
    for _ in range(3):
        assert _claims(progress, consumer, 9_000, broker) is None
        clock.now += 1.0
    consumer.ends[SEND0] = -1  # a rebalance is under way
    assert _claims(progress, consumer, 9_000, broker) is None


def test_an_idle_stream_claims_once_the_worker_has_a_clock():
    progress, clock = _progress()
    consumer = FakeConsumer({RETRY0: 0})
    broker = {RETRY0: 0}
    assert _claims(progress, consumer, 0, broker) is None  # started, no event anywhere yet
    clock.now += 1.0
    assert _claims(progress, consumer, 3_000, broker) is None
    clock.now += 1.0
    assert _claims(progress, consumer, 3_000, broker) == {"retry:0": 3_001}


def test_a_dead_lettered_last_record_does_not_keep_a_stream_busy():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 6})
    broker = {SEND0: 6}
    progress.note(SEND0, 4, 5_000)
    progress.note(SEND0, 5, None)  # undecodable: no event time, but handled
    consumer._read_offset[SEND0] = 5
    assert _claims(progress, consumer, 5_000, broker) == {"send:0": 5_000}
    clock.now += 1.0
    assert _claims(progress, consumer, 5_000, broker) == {"send:0": 5_001}


def test_claims_never_go_down_between_idle_periods():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 5})
    broker = {SEND0: 5}
    progress.note(SEND0, 4, 5_000)
    consumer._read_offset[SEND0] = 4
    assert _claims(progress, consumer, 5_000, broker) == {"send:0": 5_000}
    clock.now += 1.0
    assert _claims(progress, consumer, 8_000, broker) == {"send:0": 5_001}
    assert "idle here, claimed 5001" in progress.describe("send:0")
    for _ in range(3):  # within the next idle period: the idle claim stands, nothing to send
        clock.now += 0.3
        assert _claims(progress, consumer, 8_000, broker) is None
    clock.now += 0.2
    assert _claims(progress, consumer, 8_000, broker) == {"send:0": 8_001}
    progress.note(SEND0, 5, 6_000)  # a late record below the claim does not lower it
    consumer.ends[SEND0], consumer._read_offset[SEND0], broker[SEND0] = 7, 5, 7
    assert _claims(progress, consumer, 8_000, broker) is None
    assert "high watermark 7, next to process 6" in progress.describe("send:0")
    assert "not read here" in progress.describe("send:1")


def test_a_probe_that_ran_before_more_was_processed_does_not_count():
    progress, clock = _progress()
    consumer = FakeConsumer({SEND0: 5})
    progress.note(SEND0, 4, 5_000)
    consumer._read_offset[SEND0] = 4
    ends = dict(progress.candidates(consumer))  # {SEND0: 5}
    progress.note(SEND0, 5, 5_500)  # processed meanwhile: the probe's offset is stale
    consumer.ends[SEND0] = 6
    consumer._read_offset[SEND0] = 5
    for _ in range(3):
        progress.claims(consumer, 9_000, ends)
        clock.now += 1.0
    assert progress._claimed == {"send:0": 5_500}


def test_an_idle_claim_trails_the_clock_by_one_idle_period_round_after_round():
    """Sampled every round: the claim is the clock of ``idle_s`` ago, not of the start of
    the current idle period (which would let it trail by up to twice as long)."""
    progress, clock = _progress()
    consumer = FakeConsumer({RETRY0: 0})
    broker = {RETRY0: 0}
    claimed = []
    for step in range(31):  # a round every 0.1 s for 3 s, the clock 100 ms on per round
        claims = _claims(progress, consumer, 1_000 + 100 * step, broker)
        if claims is not None:
            claimed.append((step, claims["retry:0"]))
        clock.now = round(clock.now + 0.1, 1)
    assert claimed[0] == (10, 1_001)
    assert claimed[1:] == [(step, 1_001 + 100 * (step - 10)) for step in range(11, 31)]
