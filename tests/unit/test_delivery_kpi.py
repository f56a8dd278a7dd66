"""Delivery KPIs from message view transitions: deltas, sums, order independence."""

from __future__ import annotations

import itertools
import json
import zlib
from dataclasses import fields

import factories
import pytest
from factories import UNALIGNED_2023
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.recipient.delivery_kpi import NAMES, KpiCounts, KpiDelta, kpi_delta
from streams.domain.recipient.message_status import (
    FAILED,
    SENT,
    TAKEN_INTO_ACCOUNT,
    MessageState,
    MessageView,
    ValidityPolicy,
    apply,
    deadline,
    view,
)
from streams.domain.types import Qualification

H = 3_600_000
DAY = 24 * H
POLICY = ValidityPolicy()

TAKEN = MessageView(status=TAKEN_INTO_ACCOUNT)
TAKEN_ERR = MessageView(status=TAKEN_INTO_ACCOUNT, failure_type="soft", has_error=True)
SENT_V = MessageView(status=SENT)
HARD_V = MessageView(
    status=FAILED, failure_type="hard", failure_reason="User unknown", has_error=True
)
SOFT_V = MessageView(
    status=FAILED, failure_type="soft", failure_reason="Unreachable", has_error=True
)


# --- deltas and counts ---------------------------------------------------------------


def test_both_classes_have_the_field_order_their_arithmetic_assumes():
    assert tuple(f.name for f in fields(KpiDelta)) == NAMES
    assert tuple(f.name for f in fields(KpiCounts)) == NAMES


@given(st.lists(st.integers(-5, 5), min_size=6, max_size=6))
def test_counts_add_field_by_field_and_round_trip(values):
    counts = KpiCounts(*values)
    assert KpiCounts.from_dict(counts.to_dict()) == counts
    assert list(counts.to_dict()) == list(NAMES)
    total = (counts + KpiCounts(*range(6))).to_dict()
    assert [total[n] for n in NAMES] == [v + i for i, v in enumerate(values)]
    assert KpiDelta(*values).is_zero == (not any(values))


def test_new_message_is_to_deliver_and_taken_into_account() -> None:
    assert kpi_delta(None, TAKEN) == KpiDelta(to_deliver=1, taken_into_account=1)


def test_delivery_moves_taken_to_sent() -> None:
    assert kpi_delta(TAKEN, SENT_V) == KpiDelta(taken_into_account=-1, sent=1)


def test_async_bounce_moves_sent_to_failed_hard() -> None:
    assert kpi_delta(SENT_V, HARD_V) == KpiDelta(sent=-1, failed_hard=1, bounces_errors=1)


def test_expiry_counts_as_failed_soft() -> None:
    assert kpi_delta(TAKEN_ERR, SOFT_V) == KpiDelta(taken_into_account=-1, failed_soft=1)


def test_first_error_counts_once_in_bounces_errors() -> None:
    assert kpi_delta(TAKEN, TAKEN_ERR) == KpiDelta(bounces_errors=1)
    assert kpi_delta(TAKEN_ERR, TAKEN_ERR).is_zero


@pytest.mark.parametrize("v", [TAKEN, TAKEN_ERR, SENT_V, HARD_V, SOFT_V])
def test_unchanged_contribution_is_zero(v: MessageView) -> None:
    assert kpi_delta(v, v).is_zero
    assert not kpi_delta(None, v).is_zero


def test_complaint_or_attempts_do_not_change_counts() -> None:
    assert kpi_delta(SENT_V, MessageView(status=SENT, complained=True)).is_zero
    assert kpi_delta(TAKEN, MessageView(status=TAKEN_INTO_ACCOUNT, attempts=3)).is_zero


def test_counts_follow_a_delivery() -> None:
    c = KpiCounts()
    assert (c.success_pct, c.pending, c.failed) == (0.0, 0, 0)
    for old, new in [
        (None, TAKEN),
        (None, TAKEN),
        (None, TAKEN),
        (None, TAKEN),
        (TAKEN, SENT_V),
        (TAKEN, SENT_V),
        (TAKEN, HARD_V),
        (SENT_V, HARD_V),
    ]:
        c = c.add(kpi_delta(old, new))
    assert c == KpiCounts(
        to_deliver=4, taken_into_account=1, sent=1, failed_hard=2, failed_soft=0, bounces_errors=2
    )
    assert (c.failed, c.pending, c.success_pct) == (2, 1, 25.0)


def test_partial_counts_sum() -> None:
    a = KpiCounts(to_deliver=3, taken_into_account=1, sent=2, bounces_errors=1)
    b = KpiCounts(to_deliver=1, failed_soft=1, bounces_errors=1)
    assert a + b == KpiCounts(
        to_deliver=4, taken_into_account=1, sent=2, failed_soft=1, bounces_errors=2
    )
    assert sum([a, b], KpiCounts()) == a + b
    assert (a + b).success_pct == 50.0


def test_round_trip_through_json() -> None:
    c = KpiCounts(7, 2, 3, 1, 1, 4)
    assert KpiCounts.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert KpiCounts.from_dict({}) == KpiCounts()


# --- the whole path, in any order ----------------------------------------------------

QS = st.sampled_from(
    [
        Qualification("soft", "Mailbox full", 1, "r-mailbox-full"),
        Qualification("undefined", "Undefined", 3, "r-undef"),
        Qualification("ignored", "Greylisted", 40, "r-greylist"),
        None,
    ]
)
HARDS = st.sampled_from(
    [
        Qualification("hard", "User unknown", 10, "r-user-unknown"),
        Qualification("hard", "Invalid domain", 11, "r-invalid-domain"),
    ]
)
Step = tuple[str, dict, Qualification | None]


@st.composite
def message_history(draw: st.DrawFn, delivery: str, mid: str) -> list[Step]:
    """Relay, retries and soft bounces, then delivered (maybe followed by an async
    bounce or a complaint), a hard bounce, an expiry, or nothing (validity overrun)."""
    seq = itertools.count()
    events: list[Step] = []

    def add(family: str, kind: str, t: int, q: Qualification | None = None, **kw: object) -> None:
        fields = {"event_id": f"{mid}-{next(seq)}", "delivery_id": delivery}
        fields = {**fields, "recipient": f"{mid}@example.com", **kw}
        events.append((family, factories.event(mid, kind, t, start=0, **fields), q))

    t = UNALIGNED_2023 + draw(st.integers(0, DAY))
    validity = draw(st.sampled_from([None, 3600, 86_400, 10 * 86_400, -1]))
    add("send", "relayed", t, validity_seconds=validity)
    for attempt in range(1, draw(st.integers(0, 4)) + 1):
        t += draw(st.integers(1, 20 * H))
        if draw(st.booleans()):
            add("retry", "deferred", t, draw(QS), attempt=attempt, next_attempt_time=t + H)
        else:
            add("bounce", "sync", t, draw(QS), attempt=attempt)
    t += draw(st.integers(1, 30 * H))
    outcome = draw(st.sampled_from(["delivered", "hard", "expired", "none"]))
    if outcome == "delivered":
        add("send", "delivered", t)
        if draw(st.booleans()):
            add("bounce", "async", t + draw(st.integers(1, DAY)), draw(HARDS))
        if draw(st.booleans()):
            add("bounce", "complaint", t + draw(st.integers(1, DAY)))
    elif outcome == "hard":
        add("bounce", "sync", t, draw(HARDS))
    elif outcome == "expired":
        add("retry", "expired", t, draw(QS))
    return events


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Step], list[Step]]:
    events = [
        e
        for i in range(draw(st.integers(1, 6)))
        for e in draw(message_history(f"d{i % 2}", f"m{i}"))
    ]
    arrival = list(draw(st.permutations(events)))
    for _ in range(draw(st.integers(0, 8))):
        arrival.insert(draw(st.integers(0, len(arrival))), draw(st.sampled_from(events)))
    return events, arrival


PARTITIONS = 3


def process(arrival: list[Step]) -> tuple[dict[str, MessageView], dict[str, KpiCounts]]:
    """What the agents do: apply, view at the event clock, count the view's change in
    the partition's partial counts; re-view messages whose deadline the clock passed."""
    states: dict[str, MessageState] = {}
    counted: dict[str, MessageView] = {}
    partial: dict[tuple[int, str], KpiCounts] = {}
    now = 0

    def recount(mid: str) -> None:
        s = states[mid]
        key = (zlib.crc32(mid.encode()) % PARTITIONS, s.delivery_id)
        new = view(s, now)
        partial[key] = partial.get(key, KpiCounts()).add(kpi_delta(counted.get(mid), new))
        counted[mid] = new

    for family, event, q in arrival:
        now = max(now, event["event_time"])
        mid = event["message_id"]
        states[mid] = apply(states.get(mid), family, event, q, POLICY)
        recount(mid)
        for other, s in states.items():
            dl = deadline(s)
            if dl is not None and dl < now:
                recount(other)

    # The deadline index alone keeps every counted view current.
    assert counted == {mid: view(s, now) for mid, s in states.items()}
    totals: dict[str, KpiCounts] = {}
    for (_, delivery), counts in partial.items():
        totals[delivery] = totals.get(delivery, KpiCounts()) + counts
    return counted, totals


def direct_counts(
    views: dict[str, MessageView], delivery_of: dict[str, str]
) -> dict[str, KpiCounts]:
    totals: dict[str, KpiCounts] = {}
    for mid, v in views.items():
        d = delivery_of[mid]
        totals[d] = totals.get(d, KpiCounts()).add(kpi_delta(None, v))
    return totals


@settings(max_examples=200, deadline=None)
@given(deliveries())
def test_kpis_do_not_depend_on_order_or_duplicates(case: tuple[list, list]) -> None:
    events, arrival = case
    in_order = sorted(events, key=lambda e: e[1]["event_time"])
    views, kpis = process(arrival)
    ref_views, ref_kpis = process(in_order)
    assert views == ref_views
    assert kpis == ref_kpis
    delivery_of = {e["message_id"]: e["delivery_id"] for _, e, _ in events}
    assert kpis == direct_counts(views, delivery_of)
    for counts in kpis.values():
        assert counts.pending == counts.taken_into_account >= 0
        assert counts.sent + counts.failed + counts.pending == counts.to_deliver
