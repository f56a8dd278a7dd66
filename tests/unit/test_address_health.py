"""Address health (quarantine) state machine: rules, bounds, order independence."""

from __future__ import annotations

import itertools
import json

import factories
import pytest
from factories import UNALIGNED_2023
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.recipient.address_health import (
    DENYLISTED,
    QUARANTINED,
    VALID,
    WITH_ERRORS,
    AddressState,
    AddressView,
    QuarantinePolicy,
    apply,
    view,
)
from streams.domain.types import Qualification

H = 3_600_000
DAY = 24 * H
POLICY = QuarantinePolicy()

MAILBOX_FULL = Qualification("soft", "Mailbox full", 1, "r-mailbox-full")
REFUSED = Qualification("soft", "Refused", 2, "r-refused")
UNDEF = Qualification("undefined", "Undefined", 3, "r-undef")
RATE = Qualification("soft", "Refused", 2, "r-rate", rate_limit=True)
HARD = Qualification("hard", "User unknown", 10, "r-user-unknown")
HARD2 = Qualification("hard", "Invalid domain", 11, "r-invalid-domain")
IGNORED = Qualification("ignored", "Out of office", 40, "r-ooo")

_ids = itertools.count()


def ev(kind: str, t: int, eid: str | None = None, **kw: object) -> dict:
    """The shared event at the absolute time ``t``: message m1 of delivery d1, one recipient,
    a new event id unless ``eid``."""
    fields = {"event_id": eid or f"e{next(_ids)}", "delivery_id": "d1"}
    fields = {**fields, "recipient": "someone@example.com", **kw}
    return factories.event("m1", kind, t, start=0, **fields)


Step = tuple[str, dict, Qualification | None]


def soft(t: int, q: Qualification = REFUSED, **kw: object) -> Step:
    return ("bounce", ev("sync", t, **kw), q)


def hard(t: int, q: Qualification = HARD, kind: str = "sync") -> Step:
    return ("bounce", ev(kind, t), q)


def success(t: int) -> Step:
    return ("send", ev("delivered", t), None)


def complaint(t: int) -> Step:
    return ("bounce", ev("complaint", t), None)


def action(
    kind: str, t: int, eid: str | None = None, reason: str | None = None, **kw: object
) -> Step:
    """An operator's action on the shared recipient (``kw`` replaces fields)."""
    fields = {"event_id": eid or f"o{next(_ids)}", "event_time": t, "kind": kind}
    fields = {**fields, "recipient": "someone@example.com", "actor": "alice", "reason": reason}
    return ("operator", {**fields, **kw}, None)


def run(*steps: Step, policy: QuarantinePolicy = POLICY) -> AddressState:
    state = None
    for family, event, q in steps:
        state = apply(state, family, event, q, policy)
    assert state is not None
    return state


def at(state: AddressState, now: int) -> AddressView:
    return view(state, now)


# --- rules ---------------------------------------------------------------------------


def test_relay_keeps_the_address_valid_and_stores_nothing() -> None:
    s = run(("send", ev("relayed", UNALIGNED_2023), None))
    assert at(s, UNALIGNED_2023).state == VALID
    assert s.entries == ()


def test_hard_error_quarantines_at_once_and_keeps_the_first_reason() -> None:
    s = run(hard(UNALIGNED_2023), hard(UNALIGNED_2023 + H, HARD2, kind="async"))
    v = at(s, UNALIGNED_2023 + H)
    assert (v.state, v.reason, v.quarantined_at) == (QUARANTINED, "User unknown", UNALIGNED_2023)
    assert v.lifts_at is None


def test_soft_error_counts_only_24h_after_the_last_counted_one() -> None:
    s = run(soft(UNALIGNED_2023))
    assert (at(s, UNALIGNED_2023).state, at(s, UNALIGNED_2023).error_count) == (WITH_ERRORS, 1)
    s = apply(s, *soft(UNALIGNED_2023 + 23 * H, MAILBOX_FULL), POLICY)
    v = at(s, UNALIGNED_2023 + 23 * H)
    assert (v.error_count, v.reason, v.last_error_at) == (
        1,
        "Mailbox full",
        UNALIGNED_2023 + 23 * H,
    )
    s = apply(s, *soft(UNALIGNED_2023 + 24 * H), POLICY)
    assert at(s, UNALIGNED_2023 + 24 * H).error_count == 2


def test_fifth_counted_soft_error_quarantines() -> None:
    s = run(*(soft(UNALIGNED_2023 + i * DAY) for i in range(4)))
    assert (at(s, UNALIGNED_2023 + 3 * DAY).state, at(s, UNALIGNED_2023 + 3 * DAY).error_count) == (
        WITH_ERRORS,
        4,
    )
    s = apply(s, *soft(UNALIGNED_2023 + 4 * DAY, UNDEF), POLICY)
    v = at(s, UNALIGNED_2023 + 4 * DAY)
    assert (v.state, v.error_count, v.reason, v.quarantined_at) == (
        QUARANTINED,
        5,
        "Undefined",
        UNALIGNED_2023 + 4 * DAY,
    )


def test_count_resets_after_ten_days_without_error() -> None:
    # The uncounted error at +12 h pushes the reset to +12 h + 10 days.
    s = run(soft(UNALIGNED_2023), soft(UNALIGNED_2023 + 12 * H))
    assert at(s, UNALIGNED_2023 + 12 * H + 10 * DAY - 1).state == WITH_ERRORS
    v = at(s, UNALIGNED_2023 + 12 * H + 10 * DAY)
    assert (v.state, v.error_count, v.reason) == (VALID, 0, None)
    # A new error after the reset counts from one again.
    s = apply(s, *soft(UNALIGNED_2023 + 11 * DAY), POLICY)
    assert at(s, UNALIGNED_2023 + 11 * DAY).error_count == 1


def test_success_resets_the_count() -> None:
    s = run(soft(UNALIGNED_2023), soft(UNALIGNED_2023 + DAY), success(UNALIGNED_2023 + DAY + H))
    v = at(s, UNALIGNED_2023 + DAY + H)
    assert (v.state, v.error_count, v.last_success_at) == (VALID, 0, UNALIGNED_2023 + DAY + H)
    # After the reset the next error counts even within 24 h of the last counted one.
    s = apply(s, *soft(UNALIGNED_2023 + DAY + 2 * H), POLICY)
    assert at(s, UNALIGNED_2023 + DAY + 2 * H).error_count == 1


def test_success_does_not_lift_a_quarantine() -> None:
    s = run(hard(UNALIGNED_2023), success(UNALIGNED_2023 + H))
    assert at(s, UNALIGNED_2023 + H).state == QUARANTINED


def test_complaint_denylists_for_good() -> None:
    s = run(
        soft(UNALIGNED_2023),
        complaint(UNALIGNED_2023 + H),
        success(UNALIGNED_2023 + 2 * H),
        hard(UNALIGNED_2023 + 3 * H),
    )
    v = at(s, UNALIGNED_2023 + 100 * DAY)
    assert (v.state, v.reason, v.denylisted_at) == (DENYLISTED, "Complaint", UNALIGNED_2023 + H)


def test_ignored_rate_limited_and_unqualified_replies_change_nothing() -> None:
    s = run(
        soft(UNALIGNED_2023, IGNORED),
        soft(UNALIGNED_2023 + DAY, RATE),
        ("bounce", ev("async", UNALIGNED_2023 + 2 * DAY), None),
        ("retry", ev("deferred", UNALIGNED_2023 + 3 * DAY), IGNORED),
    )
    v = at(s, UNALIGNED_2023 + 3 * DAY)
    assert (v.state, v.error_count, v.last_error_at) == (VALID, 0, None)
    assert s.entries == ()


def test_deferrals_and_expiries_count_as_soft_errors() -> None:
    s = run(
        ("retry", ev("deferred", UNALIGNED_2023, attempt=1), HARD),
        ("retry", ev("expired", UNALIGNED_2023 + DAY), None),
    )
    v = at(s, UNALIGNED_2023 + DAY)
    assert (v.state, v.error_count, v.reason) == (WITH_ERRORS, 2, "Unreachable")


def test_mailbox_full_quarantine_lifts_after_thirty_days() -> None:
    s = run(*(soft(UNALIGNED_2023 + i * DAY, MAILBOX_FULL) for i in range(5)))
    q_at = UNALIGNED_2023 + 4 * DAY
    v = at(s, q_at)
    assert (v.state, v.lifts_at) == (QUARANTINED, q_at + 30 * DAY)
    assert at(s, q_at + 30 * DAY - 1).state == QUARANTINED
    v = at(s, q_at + 30 * DAY)
    assert (v.state, v.error_count, v.quarantined_at) == (VALID, 0, None)
    # Errors after the lift count from zero.
    s = apply(s, *soft(q_at + 31 * DAY), POLICY)
    assert (at(s, q_at + 31 * DAY).state, at(s, q_at + 31 * DAY).error_count) == (WITH_ERRORS, 1)


def test_other_quarantines_do_not_lift() -> None:
    s = run(*(soft(UNALIGNED_2023 + i * DAY, REFUSED) for i in range(5)))
    assert at(s, UNALIGNED_2023 + 400 * DAY).state == QUARANTINED


def test_late_success_between_errors_is_folded_in_event_time() -> None:
    errors = [soft(UNALIGNED_2023 + i * DAY) for i in range(4)]
    s = run(*errors, success(UNALIGNED_2023 + 2 * DAY + H))
    # Day 0, 1, 2 counted, then the success resets, then day 3 counts once.
    assert at(s, UNALIGNED_2023 + 3 * DAY).error_count == 1


def test_spacing_is_evaluated_in_event_time_not_arrival() -> None:
    a, b, c = soft(UNALIGNED_2023), soft(UNALIGNED_2023 + 20 * H), soft(UNALIGNED_2023 + 30 * H)
    # In event time: UNALIGNED_2023 counts, +20 h is too close, +30 h counts.
    for steps in ((a, b, c), (b, c, a), (c, a, b)):
        assert at(run(*steps), UNALIGNED_2023 + 30 * H).error_count == 2


def test_duplicates_are_no_ops() -> None:
    e = soft(UNALIGNED_2023)
    once = run(e)
    assert run(e, e, e) == once


def test_old_entries_fold_into_the_snapshot() -> None:
    s = run(soft(UNALIGNED_2023), soft(UNALIGNED_2023 + 16 * DAY))
    assert [e.time for e in s.entries] == [UNALIGNED_2023 + 16 * DAY]
    assert s.watermark is not None and s.watermark[0] == UNALIGNED_2023
    assert (s.snapshot.state, s.snapshot.error_count) == (WITH_ERRORS, 1)
    assert at(s, UNALIGNED_2023 + 16 * DAY).error_count == 1  # reset by the 10 days in between


def test_events_older_than_the_watermark() -> None:
    base = (soft(UNALIGNED_2023 + 5 * DAY), soft(UNALIGNED_2023 + 21 * DAY))
    s = run(*base)
    assert s.watermark is not None and s.watermark[0] == UNALIGNED_2023 + 5 * DAY
    # A late soft error or success behind the watermark is dropped ...
    assert run(*base, soft(UNALIGNED_2023), success(UNALIGNED_2023 + H)) == s
    # ... a late hard error or complaint still applies.
    s = apply(s, *hard(UNALIGNED_2023), POLICY)
    assert (
        at(s, UNALIGNED_2023 + 21 * DAY).state,
        at(s, UNALIGNED_2023 + 21 * DAY).quarantined_at,
    ) == (QUARANTINED, UNALIGNED_2023)
    s = apply(s, *complaint(UNALIGNED_2023 + 1), POLICY)
    assert at(s, UNALIGNED_2023 + 21 * DAY).state == DENYLISTED


def test_state_stays_bounded_under_long_histories() -> None:
    s = None
    for i in range(3000):
        t = UNALIGNED_2023 + i * 20 * 60_000  # every 20 minutes for ~42 days
        step = success(t) if i % 50 == 0 else soft(t, (REFUSED, MAILBOX_FULL, UNDEF)[i % 3])
        s = apply(s, *step, POLICY)
        assert len(s.entries) <= POLICY.max_entries
    assert s is not None
    assert len(json.dumps(s.to_dict())) < 6000
    assert s.entries[-1].time == UNALIGNED_2023 + 2999 * 20 * 60_000


def test_round_trip_through_json() -> None:
    s = run(
        soft(UNALIGNED_2023),
        soft(UNALIGNED_2023 + 16 * DAY, MAILBOX_FULL),
        success(UNALIGNED_2023 + 17 * DAY),
        hard(UNALIGNED_2023 + 18 * DAY),
    )
    back = AddressState.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    v = at(s, UNALIGNED_2023 + 18 * DAY)
    assert AddressView.from_dict(json.loads(json.dumps(v.to_dict()))) == v


# --- order independence ------------------------------------------------------------

# Short periods so that resets, lifts and quarantines all happen within the horizon.
FAST = QuarantinePolicy(
    soft_spacing_s=2 * 3600,
    soft_threshold=3,
    reset_after_s=86_400,
    mailbox_full_lift_s=2 * 86_400,
    horizon_s=30 * 86_400,
)
ERROR_QS = st.sampled_from([MAILBOX_FULL, MAILBOX_FULL, REFUSED, UNDEF, RATE, IGNORED, None])


@st.composite
def address_history(draw: st.DrawFn) -> list[Step]:
    """Messages to two addresses over ten days: relays, soft errors, successes, rare
    hard errors, complaints and operator actions, with times drawn so that many fall close
    together."""
    events: list[Step] = []
    for n in range(draw(st.integers(1, 40))):
        t = (
            UNALIGNED_2023
            + draw(st.integers(0, 10 * DAY)) // H * H
            + draw(st.sampled_from([0, 1, 30 * 60_000]))
        )
        recipient = draw(st.sampled_from(["a@example.com", "b@example.com"]))
        what = draw(
            st.sampled_from(
                ["relayed", "delivered", "sync", "sync", "deferred", "expired", "hard", "complaint"]
            )
        )
        kw: dict[str, object] = {"eid": f"x{n}", "recipient": recipient}
        if what in ("relayed", "delivered"):
            events.append(("send", ev(what, t, **kw), None))
        elif what in ("deferred", "expired"):
            events.append(("retry", ev(what, t, **kw), draw(ERROR_QS)))
        elif what == "hard":
            q = draw(st.sampled_from([HARD, HARD2]))
            events.append(("bounce", ev(draw(st.sampled_from(["sync", "async"])), t, **kw), q))
        elif what == "complaint" and draw(st.integers(0, 3)) == 0:
            events.append(("bounce", ev("complaint", t, **kw), None))
        elif what == "complaint" and draw(st.integers(0, 2)) == 0:
            kind = draw(st.sampled_from(["lift", "denylist", "undenylist"]))
            events.append(action(kind, t, f"x{n}", recipient=recipient))
        else:
            events.append(("bounce", ev("sync", t, **kw), draw(ERROR_QS)))
    return events


def final_views(events: list[Step], policy: QuarantinePolicy) -> dict[str, AddressView]:
    states: dict[str, AddressState] = {}
    for family, event, q in events:
        r = event["recipient"]
        states[r] = apply(states.get(r), family, event, q, policy)
    now = max((e["event_time"] for _, e, _ in events), default=UNALIGNED_2023)
    return {r: view(s, now) for r, s in states.items()}


@st.composite
def scrambled_history(draw: st.DrawFn) -> tuple[list[Step], list[Step]]:
    events = draw(address_history())
    arrival = list(draw(st.permutations(events)))
    for _ in range(draw(st.integers(0, 6))):
        arrival.insert(draw(st.integers(0, len(arrival))), draw(st.sampled_from(events)))
    return events, arrival


@settings(max_examples=300, deadline=None)
@given(scrambled_history())
def test_final_views_do_not_depend_on_order_or_duplicates(case: tuple[list, list]) -> None:
    events, arrival = case
    in_order = sorted(events, key=lambda e: (e[1]["event_time"], e[1]["event_id"]))
    assert final_views(arrival, FAST) == final_views(in_order, FAST)


@settings(max_examples=100, deadline=None)
@given(scrambled_history())
def test_default_policy_is_order_independent_too(case: tuple[list, list]) -> None:
    events, arrival = case
    in_order = sorted(events, key=lambda e: (e[1]["event_time"], e[1]["event_id"]))
    assert final_views(arrival, POLICY) == final_views(in_order, POLICY)


# --- operator actions -------------------------------------------------------------


def test_lift_ends_a_quarantine_and_the_next_soft_error_counts_from_one() -> None:
    s = run(
        soft(UNALIGNED_2023),
        hard(UNALIGNED_2023 + H),
        action("lift", UNALIGNED_2023 + 2 * H, reason="Confirmed by phone"),
    )
    v = at(s, UNALIGNED_2023 + 2 * H)
    assert (v.state, v.error_count, v.reason) == (VALID, 0, "Confirmed by phone")
    assert (v.quarantined_at, v.last_error_at, v.lifts_at) == (None, None, None)
    # Within 24 h of the last counted error, and yet it counts: the count restarted.
    s = apply(s, *soft(UNALIGNED_2023 + 3 * H), POLICY)
    assert (at(s, UNALIGNED_2023 + 3 * H).state, at(s, UNALIGNED_2023 + 3 * H).error_count) == (
        WITH_ERRORS,
        1,
    )


def test_denylist_and_undenylist_whatever_the_state_with_default_reasons() -> None:
    s = run(success(UNALIGNED_2023), action("denylist", UNALIGNED_2023 + H, reason=""))
    v = at(s, UNALIGNED_2023 + H)
    assert (v.state, v.reason, v.denylisted_at) == (
        DENYLISTED,
        "Denylisted by operator",
        UNALIGNED_2023 + H,
    )
    s = apply(s, *action("undenylist", UNALIGNED_2023 + 2 * H), POLICY)
    v = at(s, UNALIGNED_2023 + 2 * H)
    assert (v.state, v.error_count, v.reason, v.denylisted_at) == (
        VALID,
        0,
        "Undenylisted by operator",
        None,
    )
    lifted = at(run(hard(UNALIGNED_2023), action("lift", UNALIGNED_2023 + H)), UNALIGNED_2023 + H)
    assert (lifted.state, lifted.reason) == (VALID, "Lifted by operator")


def test_a_complaint_denylisting_is_reversed_and_a_later_complaint_denylists_again() -> None:
    s = run(complaint(UNALIGNED_2023), action("undenylist", UNALIGNED_2023 + H))
    assert at(s, UNALIGNED_2023 + H).state == VALID
    s = apply(s, *complaint(UNALIGNED_2023 + 2 * H), POLICY)
    assert (at(s, UNALIGNED_2023 + 2 * H).state, at(s, UNALIGNED_2023 + 2 * H).reason) == (
        DENYLISTED,
        "Complaint",
    )


def test_later_facts_apply_on_top_of_an_action() -> None:
    s = run(action("denylist", UNALIGNED_2023), success(UNALIGNED_2023 + H))
    assert at(s, UNALIGNED_2023 + H).state == DENYLISTED
    s = run(action("lift", UNALIGNED_2023), hard(UNALIGNED_2023 + H))
    v = at(s, UNALIGNED_2023 + H)
    assert (v.state, v.reason, v.quarantined_at) == (
        QUARANTINED,
        "User unknown",
        UNALIGNED_2023 + H,
    )


def test_facts_before_an_action_are_ignored_when_they_arrive_late() -> None:
    lift = action("lift", UNALIGNED_2023 + DAY)
    alone = run(lift)
    late = [hard(UNALIGNED_2023), complaint(UNALIGNED_2023 + 1), soft(UNALIGNED_2023 + 2)]
    assert run(lift, *late, success(UNALIGNED_2023 + 3), lift) == alone
    # The entries before an action are dropped: it becomes the snapshot.
    s = run(*late, lift)
    assert (s.entries, s.watermark) == ((), (UNALIGNED_2023 + DAY, lift[1]["event_id"]))
    assert s.current == alone.current


def test_ties_at_an_equal_time_go_by_event_id() -> None:
    for bounce_id, state in (("a", VALID), ("z", QUARANTINED)):
        bounce = ("bounce", ev("sync", UNALIGNED_2023, bounce_id), HARD)
        lift = action("lift", UNALIGNED_2023, "m")
        assert at(run(bounce, lift), UNALIGNED_2023).state == state
        assert at(run(lift, bounce), UNALIGNED_2023).state == state


def test_an_action_ends_the_mailbox_full_timer() -> None:
    s = run(*(soft(UNALIGNED_2023 + i * DAY, MAILBOX_FULL) for i in range(5)))
    assert s.resets_at is not None
    s = apply(s, *action("denylist", UNALIGNED_2023 + 5 * DAY), POLICY)
    assert s.resets_at is None and at(s, UNALIGNED_2023 + 400 * DAY).state == DENYLISTED


def test_an_action_behind_the_watermark_replaces_the_snapshot_unless_superseded() -> None:
    base = (soft(UNALIGNED_2023 + 5 * DAY), soft(UNALIGNED_2023 + 21 * DAY))
    s = run(*base)
    assert s.watermark is not None and s.watermark[0] == UNALIGNED_2023 + 5 * DAY
    s = apply(s, *action("denylist", UNALIGNED_2023 + DAY), POLICY)
    assert at(s, UNALIGNED_2023 + 21 * DAY).state == DENYLISTED
    assert s.watermark[0] == UNALIGNED_2023 + 5 * DAY and len(s.entries) == 1
    # An action older than the newest one folded in is superseded.
    assert apply(s, *action("undenylist", UNALIGNED_2023), POLICY) == s


def test_unknown_operator_action_is_refused_and_old_states_still_load() -> None:
    with pytest.raises(ValueError, match="unknown operator action"):
        apply(None, *action("forgive", UNALIGNED_2023)[:2], None, POLICY)
    state = run(soft(UNALIGNED_2023))
    stored = state.to_dict()
    for health in (stored["snapshot"], stored["current"]):
        del health["operator_at"], health["operator_event_id"]
    assert AddressState.from_dict(stored) == state


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(ValueError):
        apply(None, "bogus", ev("sync", UNALIGNED_2023), REFUSED, POLICY)
