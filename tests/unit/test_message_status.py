"""Message status (EFS) state machine: rules, round trips, order independence."""

from __future__ import annotations

import itertools
import json

import factories
import pytest
from factories import UNALIGNED_2023
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.recipient.message_status import (
    FAILED,
    SENT,
    TAKEN_INTO_ACCOUNT,
    UNREACHABLE,
    MessageState,
    MessageView,
    ValidityPolicy,
    apply,
    deadline,
    is_terminal,
    view,
)
from streams.domain.types import Qualification

H = 3_600_000
DAY = 24 * H
POLICY = ValidityPolicy()
MAX_VALIDITY = 84 * H  # 3.5 days

SOFT = Qualification("soft", "Mailbox full", 1, "r-mailbox-full")
SOFT2 = Qualification("soft", "Refused", 2, "r-refused")
UNDEF = Qualification("undefined", "Undefined", 3, "r-undef")
HARD = Qualification("hard", "User unknown", 10, "r-user-unknown")
HARD2 = Qualification("hard", "Invalid domain", 11, "r-invalid-domain")
IGNORED = Qualification("ignored", "Greylisted", 40, "r-greylist")


def ev(kind: str, t: int, eid: str | None = None, mid: str = "m1", **kw: object) -> dict:
    """The shared event at the absolute time ``t``: delivery d1, one recipient for all."""
    fields = {"event_id": eid} if eid else {}
    fields = {**fields, "delivery_id": "d1", "recipient": "someone@example.com", **kw}
    return factories.event(mid, kind, t, start=0, **fields)


def run(*steps: tuple[str, dict, Qualification | None]) -> MessageState:
    state = None
    for family, event, q in steps:
        state = apply(state, family, event, q, POLICY)
    assert state is not None
    return state


def relayed(t: int = UNALIGNED_2023, **kw: object) -> tuple[str, dict, None]:
    return ("send", ev("relayed", t, **kw), None)


def delivered(t: int) -> tuple[str, dict, None]:
    return ("send", ev("delivered", t), None)


def bounce(kind: str, t: int, q: Qualification | None, **kw: object) -> tuple:
    return ("bounce", ev(kind, t, **kw), q)


def retry(kind: str, t: int, q: Qualification | None = None, **kw: object) -> tuple:
    return ("retry", ev(kind, t, **kw), q)


# --- rules ---------------------------------------------------------------------------


def test_relayed_is_taken_into_account() -> None:
    v = view(run(relayed()), UNALIGNED_2023)
    assert v == MessageView(status=TAKEN_INTO_ACCOUNT)
    assert not is_terminal(v)


def test_delivered_is_sent() -> None:
    v = view(run(relayed(), delivered(UNALIGNED_2023 + H)), UNALIGNED_2023 + H)
    assert v.status == SENT
    assert v.failure_type is None and v.failure_reason is None
    assert is_terminal(v)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_hard_bounce_fails_with_type_and_reason(kind: str) -> None:
    v = view(run(relayed(), bounce(kind, UNALIGNED_2023 + H, HARD, attempt=1)), UNALIGNED_2023 + H)
    assert (v.status, v.failure_type, v.failure_reason) == (FAILED, "hard", "User unknown")
    assert (v.bounce_class, v.rule, v.attempts) == (10, "r-user-unknown", 1)
    assert v.has_error


def test_first_hard_bounce_gives_the_reason_whatever_the_arrival() -> None:
    a = bounce("sync", UNALIGNED_2023 + 2 * H, HARD2, eid="b2")
    b = bounce("sync", UNALIGNED_2023 + H, HARD, eid="b1")
    assert view(run(relayed(), a, b), UNALIGNED_2023 + 2 * H).failure_reason == "User unknown"
    assert view(run(b, relayed(), a), UNALIGNED_2023 + 2 * H).failure_reason == "User unknown"


def test_soft_bounce_keeps_status_and_updates_reason_and_attempts() -> None:
    v = view(
        run(relayed(), bounce("sync", UNALIGNED_2023 + H, SOFT, attempt=1)), UNALIGNED_2023 + H
    )
    assert v.status == TAKEN_INTO_ACCOUNT
    assert (v.failure_type, v.failure_reason, v.bounce_class, v.rule) == (
        "soft",
        "Mailbox full",
        1,
        "r-mailbox-full",
    )
    assert v.attempts == 1 and v.has_error


def test_last_soft_error_is_the_latest_in_event_time() -> None:
    late_newer = bounce("sync", UNALIGNED_2023 + 3 * H, SOFT2, attempt=2)
    older = bounce("sync", UNALIGNED_2023 + H, SOFT, attempt=1)
    v = view(run(relayed(), late_newer, older), UNALIGNED_2023 + 3 * H)
    assert v.failure_reason == "Refused"
    assert v.attempts == 2


def test_undefined_bounce_is_recorded_as_undefined_error() -> None:
    v = view(run(relayed(), bounce("sync", UNALIGNED_2023 + H, UNDEF)), UNALIGNED_2023 + H)
    assert (v.status, v.failure_type, v.failure_reason) == (
        TAKEN_INTO_ACCOUNT,
        "undefined",
        "Undefined",
    )


def test_ignored_bounce_only_counts_the_attempt() -> None:
    v = view(
        run(relayed(), bounce("sync", UNALIGNED_2023 + H, IGNORED, attempt=3)), UNALIGNED_2023 + H
    )
    assert v == MessageView(status=TAKEN_INTO_ACCOUNT, attempts=3)


def test_unqualified_bounce_is_an_error_without_reason() -> None:
    v = view(run(relayed(), bounce("sync", UNALIGNED_2023 + H, None)), UNALIGNED_2023 + H)
    assert v.status == TAKEN_INTO_ACCOUNT and v.has_error and v.failure_reason is None


def test_deferral_updates_attempts_next_attempt_and_reason() -> None:
    s = run(
        relayed(),
        retry(
            "deferred",
            UNALIGNED_2023 + H,
            SOFT2,
            attempt=1,
            next_attempt_time=UNALIGNED_2023 + 2 * H,
        ),
    )
    v = view(s, UNALIGNED_2023 + H)
    assert (v.status, v.attempts, v.next_attempt_time) == (
        TAKEN_INTO_ACCOUNT,
        1,
        UNALIGNED_2023 + 2 * H,
    )
    assert (v.failure_type, v.failure_reason) == ("soft", "Refused")


def test_latest_deferral_sets_next_attempt_in_any_order() -> None:
    d1 = retry("deferred", UNALIGNED_2023 + H, attempt=1, next_attempt_time=UNALIGNED_2023 + 2 * H)
    d2 = retry(
        "deferred", UNALIGNED_2023 + 2 * H, attempt=2, next_attempt_time=UNALIGNED_2023 + 4 * H
    )
    for steps in ((relayed(), d1, d2), (d2, relayed(), d1)):
        v = view(run(*steps), UNALIGNED_2023 + 2 * H)
        assert (v.attempts, v.next_attempt_time) == (2, UNALIGNED_2023 + 4 * H)


def test_deferral_with_hard_reply_is_not_a_failure() -> None:
    v = view(
        run(relayed(), retry("deferred", UNALIGNED_2023 + H, HARD, attempt=1)), UNALIGNED_2023 + H
    )
    assert (v.status, v.failure_type, v.failure_reason) == (
        TAKEN_INTO_ACCOUNT,
        "soft",
        "User unknown",
    )


def test_deferral_with_ignored_reply_is_not_an_error() -> None:
    v = view(
        run(relayed(), retry("deferred", UNALIGNED_2023 + H, IGNORED, attempt=1)),
        UNALIGNED_2023 + H,
    )
    assert not v.has_error and v.failure_reason is None and v.attempts == 1


def test_expired_fails_soft_with_last_reason() -> None:
    s = run(
        relayed(),
        retry("deferred", UNALIGNED_2023 + H, SOFT),
        retry("expired", UNALIGNED_2023 + 2 * H),
    )
    v = view(s, UNALIGNED_2023 + 2 * H)
    assert (v.status, v.failure_type, v.failure_reason, v.rule) == (
        FAILED,
        "soft",
        "Mailbox full",
        "r-mailbox-full",
    )
    assert v.next_attempt_time is None


def test_expired_without_reason_is_unreachable() -> None:
    v = view(run(relayed(), retry("expired", UNALIGNED_2023 + H)), UNALIGNED_2023 + H)
    assert (v.status, v.failure_type, v.failure_reason) == (FAILED, "soft", UNREACHABLE)


def test_expired_reply_qualification_gives_the_reason() -> None:
    v = view(run(relayed(), retry("expired", UNALIGNED_2023 + H, SOFT2)), UNALIGNED_2023 + H)
    assert (v.failure_type, v.failure_reason) == ("soft", "Refused")


@pytest.mark.parametrize(
    ("requested", "expected_ms"),
    [
        (None, MAX_VALIDITY),
        (3600, H),
        (86_400, DAY),
        (5 * 86_400, MAX_VALIDITY),
        (10**12, MAX_VALIDITY),
        (0, 1000),
        (-30, 1000),
    ],
)
def test_effective_validity_is_clamped(requested: int | None, expected_ms: int) -> None:
    assert POLICY.effective_ms(requested) == expected_ms
    assert deadline(run(relayed(validity_seconds=requested))) == UNALIGNED_2023 + expected_ms


def test_clock_past_deadline_fails_soft() -> None:
    s = run(relayed(validity_seconds=3600), bounce("sync", UNALIGNED_2023 + 10, SOFT2))
    assert view(s, UNALIGNED_2023 + H).status == TAKEN_INTO_ACCOUNT  # at the deadline: not yet
    v = view(s, UNALIGNED_2023 + H + 1)
    assert (v.status, v.failure_type, v.failure_reason) == (FAILED, "soft", "Refused")


def test_clock_expiry_without_error_is_unreachable() -> None:
    v = view(run(relayed()), UNALIGNED_2023 + MAX_VALIDITY + 1)
    assert (v.status, v.failure_reason) == (FAILED, UNREACHABLE)


def test_view_clock_never_precedes_the_facts() -> None:
    s = run(relayed(validity_seconds=60), retry("deferred", UNALIGNED_2023 + H))
    assert view(s, 0).status == FAILED


def test_late_delivery_before_deadline_is_success() -> None:
    s = run(relayed(validity_seconds=3600), retry("deferred", UNALIGNED_2023 + 2 * H))
    assert view(s, UNALIGNED_2023 + 2 * H).status == FAILED
    s = apply(s, *delivered(UNALIGNED_2023 + H - 1), POLICY)
    assert view(s, UNALIGNED_2023 + 2 * H).status == SENT


def test_delivery_after_deadline_is_a_validity_overrun() -> None:
    s = run(relayed(validity_seconds=3600), delivered(UNALIGNED_2023 + H + 1))
    v = view(s, UNALIGNED_2023 + H + 1)
    assert (v.status, v.failure_type, v.failure_reason) == (FAILED, "soft", UNREACHABLE)


def test_delivery_after_mta_expiry_does_not_regress() -> None:
    s = run(relayed(), retry("expired", UNALIGNED_2023 + H), delivered(UNALIGNED_2023 + 2 * H))
    assert view(s, UNALIGNED_2023 + 2 * H).status == FAILED


def test_async_hard_bounce_after_sent_fails() -> None:
    s = run(relayed(), delivered(UNALIGNED_2023 + H), bounce("async", UNALIGNED_2023 + DAY, HARD))
    v = view(s, UNALIGNED_2023 + DAY)
    assert (v.status, v.failure_type, v.failure_reason) == (FAILED, "hard", "User unknown")


def test_sync_hard_bounce_after_sent_changes_nothing() -> None:
    s = run(relayed(), delivered(UNALIGNED_2023 + H), bounce("sync", UNALIGNED_2023 + 2 * H, HARD))
    assert view(s, UNALIGNED_2023 + 2 * H).status == SENT


def test_delivery_after_hard_failure_does_not_regress() -> None:
    s = run(relayed(), bounce("sync", UNALIGNED_2023 + H, HARD), delivered(UNALIGNED_2023 + 2 * H))
    v = view(s, UNALIGNED_2023 + 2 * H)
    assert (v.status, v.failure_type) == (FAILED, "hard")


def test_soft_async_bounce_after_sent_keeps_sent() -> None:
    s = run(relayed(), delivered(UNALIGNED_2023 + H), bounce("async", UNALIGNED_2023 + 2 * H, SOFT))
    assert view(s, UNALIGNED_2023 + 2 * H).status == SENT


def test_complaint_keeps_sent_and_records_it() -> None:
    s = run(
        relayed(), delivered(UNALIGNED_2023 + H), bounce("complaint", UNALIGNED_2023 + DAY, None)
    )
    v = view(s, UNALIGNED_2023 + DAY)
    assert (v.status, v.complained, v.has_error) == (SENT, True, False)


def test_late_relayed_or_deferral_after_sent_changes_nothing_but_the_error_flag() -> None:
    s = run(relayed(), delivered(UNALIGNED_2023 + H))
    before = view(s, UNALIGNED_2023 + H)
    s = apply(s, *relayed(UNALIGNED_2023 + 10), POLICY)
    assert view(s, UNALIGNED_2023 + H) == before
    s = apply(
        s,
        *retry(
            "deferred", UNALIGNED_2023 + 20, SOFT, attempt=1, next_attempt_time=UNALIGNED_2023 + H
        ),
        POLICY,
    )
    after = view(s, UNALIGNED_2023 + H)
    # The deferral happened before the delivery: in-order processing counted it too.
    assert after == MessageView(status=SENT, attempts=1, has_error=True)


def test_message_seen_only_through_a_bounce_is_tracked() -> None:
    s = run(bounce("sync", UNALIGNED_2023 + H, SOFT, attempt=1))
    assert view(s, UNALIGNED_2023 + H).status == TAKEN_INTO_ACCOUNT
    assert deadline(s) == UNALIGNED_2023 + H + MAX_VALIDITY  # anchored on the first event seen
    s = apply(s, *relayed(UNALIGNED_2023), POLICY)
    assert deadline(s) == UNALIGNED_2023 + MAX_VALIDITY  # the relay time wins once known


def test_deadline_is_none_once_facts_decide() -> None:
    assert deadline(run(relayed(), delivered(UNALIGNED_2023 + H))) is None
    assert deadline(run(relayed(), bounce("sync", UNALIGNED_2023 + H, HARD))) is None
    assert deadline(run(relayed(), retry("expired", UNALIGNED_2023 + H))) is None
    # Undecided: the clock decides at the deadline ...
    assert (
        deadline(run(relayed(validity_seconds=60), retry("deferred", UNALIGNED_2023 + 1000)))
        == UNALIGNED_2023 + 60_000
    )
    # ... unless the message's own events are already past it (its view already failed).
    assert deadline(run(relayed(validity_seconds=60), delivered(UNALIGNED_2023 + H))) is None


def test_validity_comes_from_the_earliest_send_event_stating_one() -> None:
    a = relayed(UNALIGNED_2023, validity_seconds=3600, eid="r1")
    b = relayed(UNALIGNED_2023 + 10, validity_seconds=60, eid="r2")
    assert deadline(run(b, a)) == deadline(run(a, b)) == UNALIGNED_2023 + H


def test_apply_does_not_mutate_its_input() -> None:
    s = run(relayed())
    before = s.to_dict()
    apply(s, *delivered(UNALIGNED_2023 + H), POLICY)
    assert s.to_dict() == before


@pytest.mark.parametrize(
    ("family", "kind"),
    [("send", "bogus"), ("bounce", "bogus"), ("retry", "bogus"), ("x", "relayed")],
)
def test_unknown_family_or_kind_is_rejected(family: str, kind: str) -> None:
    with pytest.raises(ValueError):
        apply(None, family, ev(kind, UNALIGNED_2023), None, POLICY)


def test_round_trip_through_json() -> None:
    s = run(
        relayed(validity_seconds=7200),
        retry(
            "deferred",
            UNALIGNED_2023 + H,
            SOFT,
            attempt=1,
            next_attempt_time=UNALIGNED_2023 + 2 * H,
        ),
        bounce("sync", UNALIGNED_2023 + 2 * H, HARD, attempt=2),
        bounce("async", UNALIGNED_2023 + 3 * H, HARD2),
        delivered(UNALIGNED_2023 + 90 * 60_000),
        bounce("complaint", UNALIGNED_2023 + 4 * H, None),
        retry("expired", UNALIGNED_2023 + 5 * H),
    )
    back = MessageState.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    v = view(s, UNALIGNED_2023 + 5 * H)
    assert MessageView.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def test_state_size_is_bounded_under_long_histories() -> None:
    s = run(relayed())
    sizes = []
    for i in range(2000):
        q = (SOFT, SOFT2, UNDEF, IGNORED)[i % 4]
        family, kind = ("retry", "deferred") if i % 2 else ("bounce", "sync")
        s = apply(
            s,
            family,
            ev(kind, UNALIGNED_2023 + i * 60_000, attempt=i, next_attempt_time=UNALIGNED_2023),
            q,
            POLICY,
        )
        sizes.append(len(json.dumps(s.to_dict())))
    assert max(sizes) < 1500
    assert view(s, UNALIGNED_2023).attempts == 1999


# --- order independence ------------------------------------------------------------

SOFT_QS = st.sampled_from([SOFT, SOFT2, UNDEF, IGNORED, None])
VALIDITIES = st.sampled_from([None, None, 3600, 86_400, 10 * 86_400, 0, -60])


@st.composite
def message_history(draw: st.DrawFn, mid: str) -> list[tuple[str, dict, Qualification | None]]:
    """A plausible life of one message: relay, retries, an outcome, late feedback."""
    seq = itertools.count()
    events: list[tuple[str, dict, Qualification | None]] = []

    def add(family: str, kind: str, t: int, q: Qualification | None = None, **kw: object) -> None:
        events.append((family, ev(kind, t, eid=f"{mid}-{next(seq)}", mid=mid, **kw), q))

    t = UNALIGNED_2023 + draw(st.integers(0, 2 * DAY))
    if draw(st.integers(0, 9)):  # occasionally the relay event is lost
        add("send", "relayed", t, validity_seconds=draw(VALIDITIES))
    else:
        add("retry", "deferred", t, SOFT, attempt=1)
    for attempt in range(2, draw(st.integers(1, 5)) + 1):
        t += draw(st.integers(1, 20 * H))
        if draw(st.booleans()):
            add("retry", "deferred", t, draw(SOFT_QS), attempt=attempt, next_attempt_time=t + H)
        else:
            add("bounce", "sync", t, draw(SOFT_QS), attempt=attempt)
    t += draw(st.integers(1, 30 * H))
    outcome = draw(st.sampled_from(["delivered", "hard", "expired", "none"]))
    if outcome == "delivered":
        add("send", "delivered", t)
        if draw(st.booleans()):
            add(
                "bounce",
                "async",
                t + draw(st.integers(1, 2 * DAY)),
                draw(st.sampled_from([HARD, SOFT])),
            )
        if draw(st.booleans()):
            add("bounce", "complaint", t + draw(st.integers(1, 2 * DAY)))
    elif outcome == "hard":
        add("bounce", "sync", t, draw(st.sampled_from([HARD, HARD2])))
    elif outcome == "expired":
        add("retry", "expired", t, draw(st.sampled_from([None, SOFT2])))
    return events


@st.composite
def scrambled(draw: st.DrawFn, events: list) -> list:
    """Any arrival order, with some events delivered more than once."""
    out = list(draw(st.permutations(events)))
    for _ in range(draw(st.integers(0, 6))):
        out.insert(draw(st.integers(0, len(out))), draw(st.sampled_from(events)))
    return out


@st.composite
def histories(draw: st.DrawFn) -> tuple[list, list]:
    events = [e for i in range(draw(st.integers(1, 4))) for e in draw(message_history(f"m{i}"))]
    return events, draw(scrambled(events))


def final_views(events: list) -> dict[str, MessageView]:
    states: dict[str, MessageState] = {}
    for family, event, q in events:
        mid = event["message_id"]
        states[mid] = apply(states.get(mid), family, event, q, POLICY)
    now = max(e["event_time"] for _, e, _ in events)
    return {mid: view(s, now) for mid, s in states.items()}


@settings(max_examples=300, deadline=None)
@given(histories())
def test_final_views_do_not_depend_on_order_or_duplicates(case: tuple[list, list]) -> None:
    events, arrival = case
    in_order = sorted(events, key=lambda e: e[1]["event_time"])
    assert final_views(arrival) == final_views(in_order)


@settings(max_examples=100, deadline=None)
@given(histories())
def test_states_round_trip_at_every_step(case: tuple[list, list]) -> None:
    _, arrival = case
    states: dict[str, MessageState] = {}
    for family, event, q in arrival:
        mid = event["message_id"]
        s = apply(states.get(mid), family, event, q, POLICY)
        assert MessageState.from_dict(json.loads(json.dumps(s.to_dict()))) == s
        states[mid] = s
