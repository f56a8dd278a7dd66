"""Operator actions (lift, denylist, undenylist) as input events: the override rule as
properties of address health, and their way through validation, the feedback step and
``replay``, where they touch the address alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from factories import JAN_2026, UNALIGNED_2023
from factories import event as mta_event
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.bounce.qualifier import default_qualifier
from streams.domain.events import OPERATOR_KINDS
from streams.domain.recipient.address_health import (
    AddressState,
    QuarantinePolicy,
    apply,
)
from streams.domain.types import Qualification
from streams.pipeline.feedback import FeedbackProcessor
from streams.pipeline.topics import INPUT_TOPICS, SCHEMA_FILES, Topic, input_streams
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.validate import MAX_REASON_LEN, validate_event
from streams.testing.sample import SampleCampaign
from streams.tools.replay import Replayer

H = 3_600_000
DAY = 24 * H
HARD = Qualification("hard", "User unknown", 10, "r-user-unknown")
SOFT = Qualification("soft", "Mailbox full", 1, "r-mailbox-full")
FAST = QuarantinePolicy(soft_spacing_s=2 * 3600, soft_threshold=3, reset_after_s=86_400)
ADDRESSES = ("a@example.com", "b@example.com")

Step = tuple[str, dict[str, Any], Qualification | None]


def action(kind: str, t: int, eid: str, recipient: str = ADDRESSES[0], **kw: Any) -> dict:
    return {
        "event_id": eid,
        "event_time": t,
        "recipient": recipient,
        "kind": kind,
        "actor": "alice",
        "reason": None,
        **kw,
    }


# --- the override rule, as properties -------------------------------------------------


@st.composite
def history(draw: st.DrawFn) -> list[Step]:
    """MTA facts and operator actions for two addresses over ten days, on a coarse grid of
    times so that many fall together (ties go by event id)."""
    steps: list[Step] = []
    for n in range(draw(st.integers(1, 30))):
        t = UNALIGNED_2023 + draw(st.integers(0, 40)) * 6 * H
        recipient = draw(st.sampled_from(ADDRESSES))
        eid = f"{draw(st.sampled_from('abc'))}{n}"
        what = draw(st.sampled_from(["soft", "soft", "hard", "delivered", "complaint", "op"]))
        fields = {"event_id": eid, "recipient": recipient, "start": t}
        if what == "op":
            kind = draw(st.sampled_from(OPERATOR_KINDS))
            steps.append(("operator", action(kind, t, eid, recipient), None))
        elif what == "delivered":
            steps.append(("send", mta_event("m", "delivered", **fields), None))
        elif what == "complaint":
            steps.append(("bounce", mta_event("m", "complaint", **fields), None))
        else:
            steps.append(
                ("bounce", mta_event("m", "sync", **fields), HARD if what == "hard" else SOFT)
            )
    return steps


def states(steps: list[Step], policy: QuarantinePolicy) -> dict[str, AddressState]:
    out: dict[str, AddressState] = {}
    for family, event, q in steps:
        r = event["recipient"]
        out[r] = apply(out.get(r), family, event, q, policy)
    return out


def key(step: Step) -> tuple[int, str]:
    return (step[1]["event_time"], step[1]["event_id"])


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Step], list[Step]]:
    steps = draw(history())
    arrival = list(draw(st.permutations(steps)))
    for _ in range(draw(st.integers(0, 5))):
        arrival.insert(draw(st.integers(0, len(arrival))), draw(st.sampled_from(steps)))
    return steps, arrival


@settings(max_examples=300, deadline=None)
@given(arrivals(), st.sampled_from([FAST, QuarantinePolicy()]))
def test_the_same_events_in_any_order_with_repeats_give_the_same_state(case, policy):
    steps, arrival = case
    assert states(arrival, policy) == states(sorted(steps, key=key), policy)


@settings(max_examples=300, deadline=None)
@given(arrivals())
def test_an_action_overrides_every_earlier_fact_of_its_address(case):
    """The state is the one of the newest action and the facts after it, alone."""
    steps, arrival = case
    newest: dict[str, tuple[int, str]] = {}
    for step in steps:
        if step[0] == "operator":
            r = step[1]["recipient"]
            newest[r] = max(newest.get(r, key(step)), key(step))
    kept = [s for s in steps if key(s) >= newest.get(s[1]["recipient"], (0, ""))]
    assert states(arrival, FAST) == states(kept, FAST)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(["soft", "op"])), max_size=400))
def test_the_state_stays_bounded_and_holds_nothing_from_before_the_newest_action(marks):
    policy = QuarantinePolicy(max_entries=20)
    s = None
    for n, (minutes, what) in enumerate(marks):
        t = UNALIGNED_2023 + minutes * 60_000
        if what == "op":
            s = apply(s, "operator", action("lift", t, f"o{n}"), None, policy)
        else:
            s = apply(
                s, "bounce", mta_event("m", "sync", t, start=0, event_id=f"s{n}"), SOFT, policy
            )
        assert len(s.entries) <= policy.max_entries
        overridden = s.snapshot.operator_key
        assert overridden is None or all(e.key > overridden for e in s.entries)
        assert AddressState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# --- the input kind -------------------------------------------------------------------


def test_operator_is_an_input_topic_that_the_control_step_does_not_wait_for():
    assert Topic.OPERATOR in INPUT_TOPICS and SCHEMA_FILES[Topic.OPERATOR] == "operator_event"
    streams = input_streams(2)
    assert streams == ["send:0", "send:1", "bounce:0", "bounce:1", "retry:0", "retry:1"]


def test_an_action_goes_through_the_avro_schema_with_the_reason_optional():
    codec = Codec()
    full = action("denylist", JAN_2026, "O1", reason="Spam trap")
    assert codec.decode("operator", codec.encode("operator", full)) == full
    bare = {k: v for k, v in full.items() if k != "reason"}
    assert codec.decode("operator", codec.encode("operator", bare))["reason"] is None
    with pytest.raises(ValueError):
        codec.encode("operator", {**full, "kind": "forgive"})


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"actor": "  "}, "actor is blank"),
        ({"actor": "x" * 257}, "actor is blank or longer than 256"),
        ({"actor": "eve\u202egnp.exe"}, "actor contains control"),
        ({"reason": "r" * (MAX_REASON_LEN + 1)}, "reason is 1001 characters long"),
        ({"reason": "fine\nFAKE LOG LINE"}, "reason contains control"),
        ({"recipient": "not-an-address"}, "local@domain"),
        ({"event_time": JAN_2026 + 400 * DAY}, "future"),
        ({"event_id": ""}, "event_id is empty"),
    ],
)
def test_unusable_actions_are_refused_with_the_reason(change, words):
    with pytest.raises(DecodeError, match=words):
        validate_event("operator", {**action("lift", JAN_2026, "O1"), **change}, JAN_2026)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=1200)))
def test_any_actor_and_reason_are_either_accepted_or_refused_with_a_reason(actor, reason):
    event = action("denylist", JAN_2026, "O1", actor=actor, reason=reason)
    try:
        validate_event("operator", event, JAN_2026)
    except DecodeError as exc:
        assert exc.kind == "invalid" and exc.reason
    else:
        assert actor.strip() and len(actor) <= 256
        assert reason is None or ("\n" not in reason and len(reason) <= MAX_REASON_LEN)


def test_the_feedback_step_publishes_only_the_address_and_keeps_its_clock():
    calls: list[str] = []
    fp = FeedbackProcessor(
        {}, {}, {}, default_qualifier(), signal_fn=lambda family, *_: calls.append(family)
    )
    bounce = mta_event("M1", "sync", 0, smtp_code=550, enhanced_status="5.1.1")
    fp.process("bounce", bounce, 0, 0)
    fp.flush_kpis(0)
    messages, clock = dict(fp.messages.raw), fp.clock
    lift = action("lift", JAN_2026 + DAY, "O1", "m1@example.org", reason="Confirmed")
    out = fp.process("operator", lift, 0, 0)
    assert [(o.topic, o.value["state"], o.value["reason"]) for o in out] == [
        ("address", "valid", "Confirmed")
    ]
    # The record bears the action's time, ahead of the clock, which it does not move.
    assert out[0].value["event_time"] == JAN_2026 + DAY and fp.clock == clock
    assert dict(fp.messages.raw) == messages and fp.flush_kpis(0) == []
    assert calls == ["bounce"]
    # Redelivered: the same version again; produced twice (a later offset): nothing.
    again = fp.process("operator", lift, 0, 0)
    assert [o.value["version"] for o in again] == [out[0].value["version"]]
    assert fp.process("operator", lift, 0, 7) == []


def _line(family: str, **fields: Any) -> str:
    return json.dumps({"family": family, **fields})


def test_replay_takes_actions_from_json_lines_and_reports_unusable_ones():
    replayer = Replayer()
    replayer.run_lines(
        [
            _line("bounce", **mta_event("M1", "sync", 0, smtp_code=550, enhanced_status="5.1.1")),
            _line("bounce", **mta_event("M2", "complaint", 0)),
            _line("operator", **action("lift", "2026-01-01T01:00:00Z", "O1", "m1@example.org")),
            _line("operator", **action("lift", JAN_2026 + H, "O2", "m2@example.org")),
            _line("operator", **action("denylist", JAN_2026, "O3", "m3@example.org")),
            _line("operator", **action("lift", JAN_2026, "O4", "m4@example.org", actor="")),
            _line("operator", **action("pardon", JAN_2026, "O5", "m5@example.org")),
        ]
    )
    assert [e.split(":")[0] for e in replayer.errors] == ["line 6", "line 7"]
    assert "actor is blank" in replayer.errors[0] and "operator schema" in replayer.errors[1]
    final = {r["address"]: r for r in replayer.final_state() if r["type"] == "address"}
    assert {a: r["state"] for a, r in final.items()} == {
        "m1@example.org": "valid",
        "m2@example.org": "valid",
        "m3@example.org": "denylisted",
    }
    messages = {
        r["message_id"]: r["status"] for r in replayer.final_state() if r["type"] == "message"
    }
    assert messages == {"M1": "failed", "M2": "taken_into_account"}


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_actions_change_no_message_kpi_or_throttle_setting(data):
    events = SampleCampaign(recipients=15, seed=7).events()
    mixed = list(events)
    for n in range(data.draw(st.integers(1, 8))):
        family, event = data.draw(st.sampled_from(events))
        kind = data.draw(st.sampled_from(OPERATOR_KINDS))
        at = mixed.index((family, event)) + data.draw(st.integers(0, 1))
        mixed.insert(
            at, ("operator", action(kind, event["event_time"], f"O{n}", event["recipient"]))
        )

    def outcome(stream: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        replayer = Replayer()
        for family, event in stream:
            replayer.apply(family, event)
        return [r for r in replayer.final_state() if r["type"] != "address"]

    assert outcome(mixed) == outcome(events)
