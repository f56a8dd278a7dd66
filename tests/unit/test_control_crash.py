"""A worker killed while its checkpoint's flush was landing: the changed windows and
controller states reached the broker, the outputs sent before them and the sequencer did
not (``ControlProcessor.persist``). After the restart, the newest throttle setting of every
key, and the stored states, equal those of a run with no crash; including the changes of
ticks, which a restarted sequencer runs again against states that already made them."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tick_skipping import RULES, STREAM, make_signals, records, signal_plans

from streams.domain.control.throttle_controller import ThrottleController
from streams.domain.control.throttle_state import KeyState
from streams.pipeline.control import ControlProcessor
from streams.pipeline.topics import Topic

CONTROLLER = ThrottleController(RULES)  # its automation rules, by name


def run(plan: list[Any], cuts: list[int], crash: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The signals through the control step in phases ending at ``cuts``: each ends with a
    checkpoint, the last but one (with ``crash``) with a kill during its flush. Returns the
    newest published setting per key and the stored controller states."""
    recs = records(make_signals(plan))
    windows: dict[str, Any] = {}
    stored: dict[str, Any] = {}
    sequences: dict[str, Any] = {}
    published: dict[str, Any] = {}
    ends = [*cuts, len(recs)]
    for phase, cut in enumerate(ends):
        control = ControlProcessor(windows, stored, RULES, [STREAM], sequences)
        for rec in recs[:cut]:
            control.add(rec, 0)
        until = recs[cut]["t"] if cut < len(recs) else recs[-1]["t"] + 1
        outputs = control.release(0, until=until).outputs
        store_sequences = control.persist()
        if crash and phase == len(ends) - 2:
            continue  # the states landed; the outputs and the sequencer did not
        published.update((o.key, o.value) for o in outputs if o.topic == Topic.THROTTLE)
        store_sequences()
    return published, {key: _comparable(rec, recs[-1]["t"]) for key, rec in stored.items()}


def _comparable(rec: dict[str, Any], end_ms: int) -> dict[str, Any]:
    """A stored state as its decisions see it. Where the sequencer stood at each write
    differs by the crash; and a tick prunes expired rule matches without storing the
    state, so a key written after a restart lacks ones a key left alone still holds
    (``TriggerCounter.hit`` prunes them before it counts)."""
    state = KeyState.from_dict(rec["s"])
    for name, counter in state.counters.items():
        rule = CONTROLLER._rule(name)
        assert rule is not None
        counter.prune(rule, end_ms)
    state.counters = {name: c for name, c in state.counters.items() if c.hits}
    return {**rec, "s": {**state.to_dict(), "as_of_ms": None}}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=signal_plans, cuts=st.lists(st.integers(0, 14), min_size=1, max_size=2))
def test_a_kill_that_lands_states_without_their_outputs_loses_no_setting(plan, cuts):
    ordered = sorted(min(cut, len(plan)) for cut in cuts)
    assert run(plan, ordered, crash=True) == run(plan, ordered, crash=False)


def test_a_suspension_ended_by_a_tick_before_the_kill_is_published_after_it():
    """Two rate-limit replies suspend gmail; the suspension's end is ticked before the kill;
    its output is lost with the flush."""
    plan = [(0, 2, "192.0.2.1"), (0, 2, "192.0.2.1"), (4 * 3_600_000, 1, None)]
    published, _ = run(plan, [len(plan)], crash=False)
    assert published, "nothing published: the plan tests nothing"
    assert run(plan, [len(plan)], crash=True)[0] == published
