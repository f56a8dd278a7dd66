"""The pipeline steps over dict state: redelivery, time, KPI reconciliation, retention."""

from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
from factories import JAN_2026
from factories import event as ev

from streams.domain.bounce.qualifier import default_qualifier
from streams.domain.control.mx_rules import load_mx_rules
from streams.pipeline.control import ControlProcessor
from streams.pipeline.feedback import FeedbackProcessor, PipelineConfig
from streams.pipeline.kpi import KpiAggregator
from streams.pipeline.records import Source, signal_output
from streams.pipeline.table_values import Retired

H = 3_600_000


def processor(messages=None, parts=None, **config):
    return FeedbackProcessor(
        {} if messages is None else messages,
        {},
        {} if parts is None else parts,
        default_qualifier(),
        PipelineConfig(**config),
    )


def topics(outputs):
    return [o.topic for o in outputs]


def test_a_redelivered_event_republishes_the_same_version_and_a_duplicate_does_not():
    fp = processor()
    first = fp.process("send", ev("M1", "relayed", 0), partition=0, offset=5)
    assert topics(first) == ["status", "address"]
    part = fp.flush_kpis(0)
    assert topics(part) == ["kpi-part"] and part[0].value["v"] == 1
    again = fp.process("send", ev("M1", "relayed", 0), partition=0, offset=5)
    status = [o for o in again if o.topic == "status"]
    assert status and status[0].value["version"] == first[0].value["version"] == 1
    assert [o.value["v"] for o in fp.flush_kpis(0)] == [1]  # the partial again, unchanged
    # The same event produced twice sits at a later offset: nothing changes, nothing is sent.
    assert fp.process("send", ev("M1", "relayed", 0), partition=0, offset=9) == []
    assert fp.flush_kpis(0) == []


def test_kpi_partials_are_published_once_per_tick_with_the_summed_change():
    parts = {}
    fp = processor(parts=parts)
    for i in range(50):
        fp.process("send", ev(f"M{i}", "relayed", i), 0, i)
        fp.process("send", ev(f"M{i}", "delivered", 100 + i), 0, 100 + i)
    fp.process("send", {**ev("X1", "relayed", 0), "delivery_id": "D2"}, 1, 1)
    out = fp.tick(JAN_2026 + 200, 0, 300)
    assert topics(out) == ["kpi-part"]  # one for D1 in partition 0; D2 waits for its own tick
    assert out[0].value["c"]["to_deliver"] == 50 and out[0].value["c"]["sent"] == 50
    assert out[0].value["v"] == 1 and parts["D1|0"]["c"] == out[0].value["c"]
    assert [o.value["delivery_id"] for o in fp.tick(JAN_2026 + 200, 1, 2)] == ["D2"]
    assert fp.tick(JAN_2026 + 300, 0, 301) == []


def test_pending_kpi_changes_lost_in_a_rebalance_are_redone_by_reconciliation():
    messages, parts = {}, {}
    fp = processor(messages, parts)
    fp.process("send", ev("M1", "relayed", 0), 0, 1)
    fp.flush_kpis(0)
    fp.process("send", ev("M1", "delivered", 1), 0, 2)
    fp.process("send", ev("M2", "relayed", 2), 0, 3)
    fp.reset_indexes()  # the partition was revoked before its tick and comes back
    out = fp.tick(JAN_2026 + 10, 0, 4)
    assert [o.value["c"]["to_deliver"] for o in out if o.topic == "kpi-part"] == [2]
    assert parts["D1|0"]["c"]["sent"] == 1


def test_the_clock_fails_a_message_when_its_validity_runs_out():
    fp = processor()
    fp.process("send", ev("M1", "relayed", 0, validity_seconds=3600), 0, 1)
    fp.process("retry", ev("M1", "deferred", 10, attempt=1, smtp_code=451), 0, 1)
    first = fp.tick(JAN_2026 + H, 0, 1)  # exactly at the deadline nothing has happened yet
    assert topics(first) == ["kpi-part"] and first[0].value["c"]["failed_soft"] == 0
    out = fp.tick(JAN_2026 + H + 1, 0, 2)
    status = [o.value for o in out if o.topic == "status"]
    assert status[0]["status"] == "failed"
    assert status[0]["failure_type"] == "soft"
    assert "kpi-part" in topics(out)


def test_a_restarted_worker_takes_up_the_clock_its_predecessors_stored():
    clocks = {}
    before = FeedbackProcessor({}, {}, {}, default_qualifier(), clocks=clocks)
    before.process("send", ev("M1", "relayed", 50), 0, 1)
    before.tick(JAN_2026 + 100, 1, 7)  # a tick of another worker, carrying its clock
    before.tick(JAN_2026 + 20, 0, 8)  # an older tick moves nothing back
    assert clocks == {"1": JAN_2026 + 100, "0": JAN_2026 + 100}
    # Its input and ticks are committed: a new worker reads nothing that carries the time.
    after = FeedbackProcessor({}, {}, {}, default_qualifier(), clocks=clocks)
    assert after.clock == 0
    after.restore_clock()
    assert after.clock == JAN_2026 + 100
    after.process("send", ev("M2", "relayed", 200), 0, 2)
    after.restore_clock()  # never back
    assert after.clock == JAN_2026 + 200


def test_the_clock_is_stored_at_each_commit_for_the_partitions_whose_events_moved_it():
    """A worker killed once its last input is committed, before a tick stored the clock:
    the clock its successor restores still covers that input."""
    clocks: dict[str, int] = {}
    before = FeedbackProcessor({}, {}, {}, default_qualifier(), clocks=clocks)
    before.process("send", ev("M1", "relayed", 50), 2, 1)
    before.process("send", ev("M2", "relayed", 80), 3, 1)
    written: list[int] = []

    @contextmanager
    def in_partition(partition: int) -> Iterator[None]:
        written.append(partition)
        yield

    before.store_clock(in_partition)
    assert clocks == {"2": JAN_2026 + 80, "3": JAN_2026 + 80} and written == [2, 3]
    before.store_clock(in_partition)  # nothing moved since: nothing written
    assert written == [2, 3]
    after = FeedbackProcessor({}, {}, {}, default_qualifier(), clocks=clocks)
    after.restore_clock()
    assert after.clock == JAN_2026 + 80


def test_kpi_partials_are_reconciled_from_the_messages_after_a_crash():
    messages, parts = {}, {}
    fp = processor(messages, parts)
    for i, kind in enumerate(["relayed", "delivered"]):
        fp.process("send", ev("M1", kind, i), 0, i)
    fp.process("send", ev("M2", "relayed", 5), 0, 3)
    fp.flush_kpis(0)
    good = dict(parts["D1|0"]["c"])
    # The crash lost the last partial write but kept the message writes.
    parts["D1|0"] = {**parts["D1|0"], "c": {**good, "to_deliver": 1}}
    restarted = processor(messages, parts)
    out = restarted.process("send", ev("M3", "relayed", 6), 0, 4)
    fixed = [o.value for o in out if o.topic == "kpi-part"]
    assert fixed[0]["c"] == good  # first the correction
    restarted.flush_kpis(0)
    assert parts["D1|0"]["c"]["to_deliver"] == 3


@pytest.mark.parametrize("lost", ["changelog", "output"])
def test_after_a_crash_the_kpi_reaches_the_truth_whichever_write_was_lost(lost):
    """A partial's table write and its record go out separately: a crash can lose either.
    Lost table write: the next version would repeat one the aggregator has; lost record:
    the table agrees with the messages and nothing would be sent. Either way the restarted
    worker's partials, at versions from its epoch, bring the aggregator to the truth."""
    messages, parts, sums = {}, {}, {}
    fp, agg = processor(messages, parts), KpiAggregator(sums)

    def feed(out):
        kpi = []
        for o in out:
            if o.topic == "kpi-part":
                kpi += agg.process(o.value, JAN_2026, len(kpi))
        return kpi

    fp.process("send", ev("M1", "relayed", 0), 0, 1)
    feed(fp.flush_kpis(0))
    before = dict(parts["D1|0"])
    fp.process("send", ev("M2", "relayed", 5), 0, 2)
    out = fp.flush_kpis(0)
    if lost == "changelog":
        feed(out)  # the record went out...
        parts["D1|0"] = before  # ...its table write did not
    # else the table write stayed and the record never reached the aggregator
    restarted = processor(messages, parts)
    restarted.reset_indexes(epoch=1_000_000)
    agg.begin(1_000_000)
    kpi = feed(restarted.tick(JAN_2026 + 10, 0, 3))
    assert kpi and kpi[-1].value["to_deliver"] == 2
    assert kpi[-1].value["version"] >= 1_000_000


def test_retention_removes_final_messages_but_keeps_their_counts():
    messages, parts = {}, {}
    fp = processor(messages, parts, message_retention_ms=H)
    fp.process("send", ev("M1", "relayed", 0), 0, 1)
    fp.process("send", ev("M1", "delivered", 10), 0, 2)
    out = fp.tick(JAN_2026 + 2 * H, 0, 3)
    assert isinstance(fp.messages.get("M1"), Retired) and fp.messages.live("M1") is None
    assert [(o.topic, o.key, o.value) for o in out if o.topic == "status"] == [
        ("status", "M1", None)
    ]
    assert parts["D1|0"]["c"]["sent"] == 1
    assert parts["D1|0"]["r"]["sent"] == 1
    # A restart reconciles to the same counts: the retired contribution is remembered.
    restarted = processor(messages, parts)
    restarted.tick(JAN_2026 + 2 * H, 0, 4)
    assert parts["D1|0"]["c"]["sent"] == 1


def test_the_aggregator_sums_partitions_and_ignores_older_versions():
    sums = {}
    agg = KpiAggregator(sums)
    c = {"to_deliver": 2, "sent": 1, "taken_into_account": 1}
    out = agg.process({"delivery_id": "D1", "partition": 0, "v": 2, "c": c}, JAN_2026, 10)
    assert out[0].value["to_deliver"] == 2
    out = agg.process({"delivery_id": "D1", "partition": 1, "v": 1, "c": c}, JAN_2026, 11)
    assert out[0].value["to_deliver"] == 4
    assert out[0].value["success_pct"] == 50.0
    stale = {"delivery_id": "D1", "partition": 0, "v": 1, "c": {"to_deliver": 9}}
    assert agg.process(stale, JAN_2026, 12) == []
    # Redelivered (offset at or below the last change): republished, same version.
    again = agg.process(stale, JAN_2026, 11)
    assert again[0].value["version"] == 2
    assert again[0].value["to_deliver"] == 4


STREAMS = ["retry:0", "retry:2", "retry:3"]
END = JAN_2026 + 10 * H


def _control(rules, windows=None, settings=None, sequences=None):
    return ControlProcessor(
        {} if windows is None else windows,
        {} if settings is None else settings,
        rules,
        STREAMS,
        sequences,
    )


def _feed(control, records, until=END):
    """Hold ``records`` (signal topic order) and take in all below ``until``."""
    for record in records:
        control.add(record, 0)
    return control.release(0, until=until).outputs


def test_rate_limit_replies_throttle_the_provider_group_through_the_control_step():
    rules = load_mx_rules(None)
    make_signal = signal_output(rules)
    records = []
    for i in range(5):
        event = ev(f"M{i}", "deferred", i * 1000, smtp_code=421, enhanced_status="4.7.28")
        event["recipient"] = f"user{i}@gmail.com"
        q = default_qualifier().qualify(421, "4.7.28", "421 4.7.28 rate limited - gsmtp")
        signal = make_signal("retry", event, q, Source("retry:0", i))
        assert signal is not None and signal.key == "google"
        records.append(signal.value)
    control = _control(rules)
    for record in records:
        assert control.add(record, 0)
    # Nothing is decided before every input stream has moved past the signals.
    assert control.release(0).outputs == []
    assert control.waiting() == {0: (5, "retry:2", -1)}  # retry:2 never heard of
    control.claim(0, {"retry:0": JAN_2026 + 5000, "retry:2": JAN_2026 + 5000})
    assert control.release(0).outputs == []
    control.claim(0, {"retry:3": JAN_2026 + 5000, "unknown:9": 0})
    released = control.release(0)
    assert released.tokens == [None] * 5 and released.failed == []
    settings = [o for o in released.outputs if o.topic == "throttle"]
    google = [s.value for s in settings if s.key == "group:google"]
    assert google and google[0]["mode"] == "backoff"
    assert google[0]["max_rate_per_hour"] < rules.group("google").max_rate_per_hour.baseline
    assert all(not s.key.endswith("yahoo") for s in settings)


def _gmail_signals(n):
    rules = load_mx_rules(None)
    make_signal = signal_output(rules)
    q = default_qualifier().qualify(421, "4.7.28", "421 4.7.28 rate limited - gsmtp")
    records = []
    for i in range(n):
        event = ev(f"M{i}", "deferred", i * 1000, smtp_code=421, enhanced_status="4.7.28")
        event["recipient"] = f"user{i}@gmail.com"
        records.append(make_signal("retry", event, q, Source("retry:0", i)).value)
    return rules, records


def _windows(control):
    control.persist()
    return {k: v["w"] for k, v in control.windows.items()}


def _reference_and_stored(n):
    """A control step fed every signal, and one storing into dicts, with the signals."""
    rules, signals = _gmail_signals(n)
    once = _control(rules)
    _feed(once, signals)
    stores = {}, {}, {}
    return rules, signals, once, _control(rules, *stores), stores


def test_control_state_is_stored_on_persist_and_a_restart_counts_each_signal_once():
    rules, signals, once, crashed, (windows, settings, sequences) = _reference_and_stored(10)
    _feed(crashed, signals[:4])
    crashed.persist()()
    assert windows and settings and sequences
    stored = dict(windows)
    _feed(crashed, signals[4:7])
    assert windows == stored  # nothing written between two commits
    # The crash loses what was not persisted; the input comes again from offset 2, the
    # last commit being older than the last persist: 2 and 3 were taken in already.
    restarted = _control(rules, windows, settings, sequences)
    assert [restarted.add(s, 0) for s in signals[2:5]] == [False, False, True]
    _feed(restarted, signals[5:])
    assert _windows(restarted) == _windows(once)
    assert {k: v["s"] for k, v in settings.items()} == {k: v["s"] for k, v in once.settings.items()}


def test_a_crash_between_the_states_and_the_sequencer_loses_no_signal():
    """The sequencers are stored after the windows and settings are on the broker: a crash
    in between leaves the sequencer behind, and the re-read signals are taken in again and
    recognised per key, not skipped."""
    rules, signals, once, crashed, (windows, settings, sequences) = _reference_and_stored(10)
    _feed(crashed, signals[:6])
    crashed.persist()()
    _feed(crashed, signals[6:8])
    stored = dict(sequences)
    store_sequences = crashed.persist()
    assert sequences == stored  # not before the states are on the broker
    store_sequences()
    assert sequences != stored
    sequences.update(stored)  # the crash came before that step
    restarted = _control(rules, windows, settings, sequences)
    assert [restarted.add(s, 0) for s in signals[4:8]] == [False, False, True, True]
    _feed(restarted, signals[8:])
    assert _windows(restarted) == _windows(once)
    assert {k: v["s"] for k, v in settings.items()} == {k: v["s"] for k, v in once.settings.items()}


def test_a_signal_without_source_or_time_is_refused_before_it_is_held():
    rules, signals = _gmail_signals(1)
    control = _control(rules)
    for field in ("src", "t"):
        bad = {k: v for k, v in signals[0].items() if k != field}
        with pytest.raises(KeyError, match=field):
            control.add(bad, 0)
    assert control.waiting() == {}


def test_a_signal_that_fails_on_release_is_reported_with_its_token_and_the_rest_go_on():
    rules, signals = _gmail_signals(3)
    control = _control(rules)
    bad = {k: v for k, v in signals[1].items() if k != "domain"}
    for i, record in enumerate([signals[0], bad, signals[2]]):
        control.add(record, 0, token=i)
    released = control.release(0, until=END)
    assert released.tokens == [0, 2]
    assert [(token, type(exc)) for token, exc in released.failed] == [(1, KeyError)]


def test_held_by_token_alone_the_control_step_decides_the_same():
    """The worker's control step holds only each signal's input record (``reload`` reads
    the signal from it again): the outputs equal those of one holding the records."""
    rules, signals = _gmail_signals(8)
    raw = [orjson.dumps(record) for record in signals]
    by_token = ControlProcessor({}, {}, rules, STREAMS, reload=orjson.loads)
    held = _control(rules)
    for i, record in enumerate(signals):
        by_token.add(record, 0, token=raw[i])
        held.add(record, 0)
    stored = [item for _eff, _rank, _s, _o, item in by_token._part(0).sequencer._held]
    assert {record for record, _token in stored} == {None}
    out = by_token.release(0, until=END)
    assert out.tokens == raw and out.failed == []
    assert out.outputs == held.release(0, until=END).outputs


def test_a_signal_emitted_again_by_a_reprocessed_input_counts_once():
    """After an ingest crash its inputs are processed again and their signals emitted
    again, at new offsets of the signal topic: the source, not that offset, identifies
    them."""
    rules = load_mx_rules(None)
    fp = FeedbackProcessor({}, {}, {}, default_qualifier(), signal_fn=signal_output(rules))
    events = []
    for i in range(6):
        event = ev(f"M{i}", "deferred", i * 1000, smtp_code=421, enhanced_status="4.7.28")
        event["recipient"] = f"user{i}@gmail.com"
        event["diagnostic"] = "421 4.7.28 rate limited - gsmtp"
        events.append(event)
    emitted = [
        o.value
        for i, e in enumerate(events)
        for o in fp.process("retry", e, 2, i)
        if o.topic == "signal"
    ]
    assert [s["src"] for s in emitted] == [["retry:2", i] for i in range(6)]
    once = _control(rules)
    _feed(once, emitted)
    twice = _control(rules)
    # Inputs 0-5 emitted, a crash, inputs 3-5 processed and emitted again: whether the
    # first copies were taken in already or are still held, they count once.
    _feed(twice, emitted[:4])
    _feed(twice, emitted[4:] + emitted[3:])
    assert _windows(twice) == _windows(once)
    assert {k: v["s"] for k, v in twice.settings.items()} == {
        k: v["s"] for k, v in once.settings.items()
    }
    # Streams are told apart: the same offset of another input partition is new.
    _feed(twice, [dict(emitted[0], src=["retry:3", 0])])
    assert _windows(twice) != _windows(once)


def test_a_record_rewritten_with_the_same_due_time_is_handled_once_when_due():
    messages, parts = {}, {}
    fp = processor(messages, parts, message_retention_ms=H)
    fp.tick(JAN_2026, 0, 0)  # due times are indexed from here on
    fp.process("send", ev("M2", "relayed", 100), 0, 1)  # the clock is ahead of M1's events
    fp.process("send", ev("M1", "relayed", 0), 0, 2)
    fp.process("send", ev("M1", "delivered", 1), 0, 3)
    fp.process("bounce", ev("M1", "complaint", 2), 0, 4)  # rewritten, due unchanged
    out = fp.tick(JAN_2026 + 100 + H + 1, 0, 5)
    assert [o.key for o in out if o.topic == "status"] == ["M1"]  # one tombstone
    assert isinstance(fp.messages.get("M1"), Retired)
    assert parts["D1|0"]["c"]["sent"] == 1
