"""Keys retiring from the tables: tombstones, markers, late events, an address's rebirth,
and the due index that finds them without holding every key."""

import pytest
from factories import JAN_2026
from factories import event as ev
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.bounce.qualifier import default_qualifier
from streams.domain.recipient.delivery_kpi import KpiCounts
from streams.pipeline import keyed_state
from streams.pipeline.feedback import FeedbackProcessor, LateEvent, PipelineConfig
from streams.pipeline.records import tombstone_fields
from streams.pipeline.table_values import Retired

H = 3_600_000
DAY = 24 * H


def processor(**config):
    return FeedbackProcessor({}, {}, {}, default_qualifier(), PipelineConfig(**config))


def tombstones(out, topic):
    return [
        (o.key, tombstone_fields(o.headers)) for o in out if o.topic == topic and o.value is None
    ]


def delivered(fp, mid, t, offset):
    fp.process("send", ev(mid, "relayed", t), 0, offset)
    return fp.process("send", ev(mid, "delivered", t + 1), 0, offset + 1)


def test_a_retired_message_gets_a_tombstone_with_its_last_version_and_time():
    fp = processor(message_retention_ms=H)
    published = delivered(fp, "M1", 0, 1)
    version = [o.value["version"] for o in published if o.topic == "status"][-1]
    out = fp.tick(JAN_2026 + 2 * H, 0, 3)
    assert tombstones(out, "status") == [("M1", (version, JAN_2026 + 2 * H))]
    # The marker goes after one more retention period, with no second tombstone.
    assert isinstance(fp.messages.get("M1"), Retired)
    out = fp.tick(JAN_2026 + 4 * H, 0, 4)
    assert tombstones(out, "status") == [] and "M1" not in fp.messages


def kpi_total(fp, delivery_id="D1"):
    """The delivery's counts over its partials as the processor holds them (``c`` counts
    retired messages too; ``r`` says how many of them are retired)."""
    fp.flush_kpis(0)
    total = KpiCounts()
    for key, rec in fp.kpi_parts.items():
        if key.startswith(f"{delivery_id}|"):
            total = total + KpiCounts.from_dict(rec["c"])
    return total


@pytest.mark.parametrize("after_ms", [30 * 60_000, 2 * H + 1, 3 * H])
def test_every_event_of_a_retired_message_is_refused_and_its_counts_stay(after_ms):
    """Stamped before or after the tombstone: the message's history is gone, so taking the
    event in would start it over and count it a second time."""
    fp = processor(message_retention_ms=H)
    delivered(fp, "M1", 0, 1)
    before = kpi_total(fp)
    fp.tick(JAN_2026 + 2 * H, 0, 3)
    assert kpi_total(fp) == before and before.to_deliver == 1
    with pytest.raises(LateEvent, match="its message's tombstone"):
        fp.process("bounce", ev("M1", "async", after_ms, smtp_code=550), 0, 4)
    assert isinstance(fp.messages.get("M1"), Retired)  # nothing changed
    assert kpi_total(fp) == before


def test_once_the_marker_is_gone_an_event_older_than_the_retention_is_refused():
    fp = processor(message_retention_ms=H)
    delivered(fp, "M1", 0, 1)
    fp.tick(JAN_2026 + 2 * H, 0, 3)
    fp.tick(JAN_2026 + 4 * H, 0, 4)
    assert "M1" not in fp.messages
    with pytest.raises(LateEvent, match="more than the message retention"):
        fp.process("bounce", ev("M1", "async", 10, smtp_code=550), 0, 5)
    # Another message's event within the retention is taken in.
    fp.process("send", ev("M2", "relayed", 4 * H - 10), 0, 6)
    assert fp.messages.live("M2") is not None


def test_a_retired_address_gets_a_tombstone_and_an_older_event_leaves_it_alone():
    fp = processor(message_retention_ms=H, address_retention_ms=2 * H)
    delivered(fp, "M1", 0, 1)
    out = fp.tick(JAN_2026 + 3 * H, 0, 3)
    assert [key for key, _ in tombstones(out, "address")] == ["m1@example.org"]
    # Another message to the same address, stamped before the address's tombstone.
    out = fp.process(
        "bounce", ev("M2", "sync", 5 * H // 2, recipient="m1@example.org", smtp_code=550), 0, 4
    )
    assert [o.topic for o in out if o.topic == "address"] == []
    assert isinstance(fp.addresses.get("m1@example.org"), Retired)


def test_an_operator_action_applies_to_a_retired_address():
    fp = processor(message_retention_ms=H, address_retention_ms=2 * H)
    delivered(fp, "M1", 0, 1)
    fp.tick(JAN_2026 + 3 * H, 0, 3)
    action = {
        "event_id": "O1",
        "event_time": JAN_2026 + H,
        "recipient": "m1@example.org",
        "kind": "denylist",
        "actor": "ops",
        "reason": None,
    }
    out = fp.process("operator", action, 0, 4)
    [record] = [o.value for o in out if o.topic == "address"]
    assert record["state"] == "denylisted" and record["version"] > 1


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20 * 60)), min_size=1, max_size=30),
    st.integers(1, 90),
    st.integers(1, 5),
)
def test_the_due_index_finds_every_due_key_whatever_its_span_and_scan_chunk(sends, span_min, chunk):
    """Messages become due at many distances from the clock while others are written
    between the ticks; with a short span and a scan of a few records per tick (many
    rescans, writes during them), every final message retires when it does with one span
    longer than the test."""

    def run():
        fp = processor(message_retention_ms=30 * 60_000)
        pending = sorted(sends, key=lambda s: s[1])
        retired, refused = [], []
        for step in range(0, 48 * 60, 7):
            while pending and pending[0][1] <= step:
                mid, minute = pending.pop(0)
                offset = len(sends) - len(pending)
                try:
                    fp.process("send", ev(f"M{mid}", "delivered", minute * 60_000), 0, offset)
                except LateEvent:  # a send of a message id already retired
                    refused.append((step, mid))
                fp.flush_kpis(0)
            out = fp.tick(JAN_2026 + step * 60_000, 0, 10_000 + step)
            retired += [(step, key) for key, _ in tombstones(out, "status")]
        return retired, refused

    spans = (keyed_state.DUE_SPAN_MS, keyed_state.SCAN_CHUNK)
    try:
        keyed_state.DUE_SPAN_MS, keyed_state.SCAN_CHUNK = span_min * 60_000, chunk
        short = run()
        keyed_state.DUE_SPAN_MS, keyed_state.SCAN_CHUNK = 100 * DAY, 10**9
        long = run()
    finally:
        keyed_state.DUE_SPAN_MS, keyed_state.SCAN_CHUNK = spans
    assert short == long
    assert {key for _, key in long[0]} == {f"M{m}" for m, _ in sends}
