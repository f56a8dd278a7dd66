"""Message status: ``apply`` merges an event into a copy of the state it is given."""

from __future__ import annotations

import factories
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.recipient.message_status import ErrorFact, MessageState, ValidityPolicy, apply

_times = st.integers(0, 2**50)
_keys = st.none() | st.tuples(_times, st.text(max_size=8))
_facts = st.none() | st.builds(
    ErrorFact,
    _times,
    st.text(max_size=8),
    st.just("soft"),
    st.text(max_size=8),
    st.just(1),
    st.just("r"),
)
# Every field set, so that one a copy left out would show.
_states = st.builds(
    MessageState,
    st.just("m1"),
    st.just("d1"),
    _times,
    _times,
    st.integers(1000, 10**9),
    _keys,
    st.none() | _times,
    st.none() | _times,
    st.none() | _times,
    st.none() | _times,
    _facts,
    _facts,
    _facts,
    st.integers(0, 50),
    _keys,
    st.none() | _times,
    st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(_states, _times)
def test_apply_merges_into_a_copy_that_carries_every_field_over(
    state: MessageState, t: int
) -> None:
    """A complaint touches the complaint time and the times seen; the rest is carried
    over, and the state given is left as it was."""
    before = MessageState.from_dict(state.to_dict())
    event = factories.event("m1", "complaint", t, start=0, delivery_id="d1")
    after = apply(state, "bounce", event, None, ValidityPolicy())
    assert state == before and after is not state
    want = before.to_dict() | {
        "first_seen": min(before.first_seen, t),
        "last_seen": max(before.last_seen, t),
        "complained_at": t if before.complained_at is None else min(before.complained_at, t),
    }
    assert after.to_dict() == want
