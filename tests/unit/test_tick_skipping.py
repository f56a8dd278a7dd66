"""Ticks left out across gaps in event time change nothing.

The control step ticks only from the instant its controller names (``next_due``). These
properties run the same signals twice: once so, once ticking every 10 s (the reference),
and require the same output records, versions included, and the same stored state. The
reference skips a stretch only where no key can change at all (every key at its maximum
or without the active minutes a climb needs, not suspended, no hold, no pending
automation hit, warm-up over): a check simple enough
to read off ``ThrottleController.tick``, so gaps of up to 400 days stay affordable.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factories import JAN_2026
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.domain.control.automation import LIMIT_FIELDS
from streams.domain.control.mx_rules import load_mx_rules
from streams.domain.control.reputation import ReputationBook, Signal
from streams.domain.control.sequencer import Sequencer
from streams.domain.control.throttle_controller import DAY_MS, ThrottleController
from streams.pipeline.control import CONTROL_TICK_MS, ControlProcessor
from streams.pipeline.records import Source, signal_record

MIN_MS = 60_000
STREAM = "retry:0"

# A world with short climbs and a two-day warm-up, so the reference's ticks stay few
# wherever something can still change; the durations below are its instants.
WORLD = """
[group.default]
quiet_interval_s = 600
adjust_interval_s = 120
suspend_s = 1800
min_volume = 4
increase_step = 0.25
max_rate_per_hour = { baseline = 3600, min = 600, max = 5400 }
max_connections = { baseline = 4, min = 1, max = 6 }
max_messages_per_connection = { baseline = 100, min = 25, max = 150 }
warmup = [[1, 50], [2, 200]]

[group.google]
max_rate_per_hour = { baseline = 36000, min = 9000, max = 54000 }
max_connections = { baseline = 20, min = 5, max = 30 }
max_messages_per_connection = { baseline = 50, min = 12, max = 75 }

[group.yahoo]
max_rate_per_hour = { baseline = 18000, min = 4500, max = 27000 }
max_connections = { baseline = 8, min = 2, max = 12 }
max_messages_per_connection = { baseline = 20, min = 5, max = 30 }

[group.microsoft]
max_rate_per_hour = { baseline = 18000, min = 300, max = 27000 }
max_connections = { baseline = 8, min = 1, max = 12 }
max_messages_per_connection = { baseline = 50, min = 12, max = 75 }

[[automation]]
name = "yahoo-tss04"
groups = ["yahoo"]
regex = '\\[TSS?04\\]'
action = "suspend"
duration = "40m"
scope = "ip_group"

[[automation]]
name = "microsoft-ip-reputation"
groups = ["microsoft"]
regex = 'temporarily rate limited due to IP reputation'
action = "set_limit"
limits = { max_rate_per_hour = 300, max_connections = 1 }
duration = "25m"
scope = "ip_group"

[[automation]]
name = "slow-down-burst"
regex = 'slow down'
trigger = "3/7m"
action = "throttle_down"
duration = "15m"
"""
with tempfile.TemporaryDirectory() as _tmp:
    _world = Path(_tmp, "world.toml")
    _world.write_text(WORLD)
    RULES = load_mx_rules(_world)

# (domain, outcome, attempt, reply)
KINDS = [
    ("gmail.com", "rate_limit", True, "421 4.7.28 unusual rate of unsolicited mail - gsmtp"),
    ("gmail.com", "delivered", True, None),
    ("yahoo.com", "soft", True, "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"),
    ("hotmail.com", "soft", True, "451 4.7.500 temporarily rate limited due to IP reputation"),
    ("small.example", "block", True, "554 5.7.1 Service unavailable; client host blocked"),
    ("small.example", "hard", True, "550 5.1.1 user unknown"),
    ("small.example", "soft", True, "451 4.7.1 please slow down"),
    ("tiny.example", "rate_limit", True, "421 4.7.0 too many messages, slow down"),
    ("tiny.example", "complaint", False, None),
]
IPS = [None, "192.0.2.1", "192.0.2.2"]
WARM_IP = "192.0.2.1"

# Instants a tick may have to hit, as gaps after a signal, and jitter around them.
INSTANTS = [0, 10_000, 120_000, 600_000, 7 * MIN_MS, 15 * MIN_MS, 25 * MIN_MS, 30 * MIN_MS]
INSTANTS += [40 * MIN_MS, 3_600_000, DAY_MS, 2 * DAY_MS]
JITTER = [-10_001, -10_000, -9_999, -1, 0, 1, 9_999, 10_000, 10_001]

gaps = st.one_of(
    st.integers(0, 400 * DAY_MS),
    st.builds(
        lambda instant, times, jitter: max(0, instant * times + jitter),
        st.sampled_from(INSTANTS),
        st.integers(1, 3),
        st.sampled_from(JITTER),
    ),
    st.integers(0, 20_000),
)
signal_plans = st.lists(
    st.tuples(gaps, st.integers(0, len(KINDS) - 1), st.sampled_from(IPS)),
    min_size=1,
    max_size=14,
)


def make_signals(plan: list[tuple[int, int, str | None]]) -> list[Signal]:
    out, t = [], JAN_2026
    for i, (gap, kind, ip) in enumerate(plan):
        t += gap
        domain, outcome, attempt, reply = KINDS[kind]
        out.append(
            Signal(
                time_ms=t,
                event_id=f"e{i}",
                domain=domain,
                group=RULES.group_for(domain),
                sending_ip=ip,
                outcome=outcome,  # type: ignore[arg-type]
                attempt=attempt,
                reply=reply,
            )
        )
    return out


def at_rest(controller: ThrottleController, at_ms: int) -> bool:
    """No key can change, whatever the time: each sits at its maximum, published, with
    nothing pending. (Reads the controller's keys: this is the reference's one shortcut.)"""
    for state in controller._states.values():
        g = RULES.group(state.group)
        warm = state.warmup_start_ms
        if warm is not None and g.warmup_cap(max(1, (at_ms - warm) // DAY_MS + 1)) is not None:
            return False
        tops = [getattr(g, name).max for name in LIMIT_FIELDS]
        limits = [getattr(state, name) for name in LIMIT_FIELDS]
        # Below its maximum, a key with too few active minutes waits for a signal to climb.
        idle = not ThrottleController._used(state, g)
        if (
            state.suspended_until is not None
            or state.counters
            or (state.hold_until_ms or 0) > at_ms
            or (limits != tops and not idle)
            or state.published is None
            or state.published[1:] != [*limits, state.retry_interval_s, None]
        ):
            return False
    return True


def every_tick(controller: ThrottleController) -> Callable[[int], int | None]:
    return lambda at_ms: None if at_rest(controller, at_ms) else at_ms


class EveryTick(ControlProcessor):
    """The reference: a tick every 10 s of event time."""

    @staticmethod
    def _due(part: Any) -> Callable[[int], int | None]:
        return every_tick(part.controller)


def records(signals: list[Signal]) -> list[dict[str, Any]]:
    return [signal_record(s, Source(STREAM, i)) for i, s in enumerate(signals)]


def run_pipeline(cls: type[ControlProcessor], signals: list[Signal], restart_at: int):
    """All signals through the control step, with a restart from the stored tables after
    ``restart_at`` of them; the output records and the tables at the end."""
    windows: dict[str, Any] = {}
    stored: dict[str, Any] = {}
    sequences: dict[str, Any] = {}
    recs = records(signals)
    outputs = []
    for cut in (restart_at, len(recs)):
        control = cls(windows, stored, RULES, [STREAM], sequences)
        for rec in recs[:cut]:
            control.add(rec, 0)
        until = recs[cut]["t"] if cut < len(recs) else recs[-1]["t"] + 1
        outputs += [(o.topic, o.key, o.value) for o in control.release(0, until=until).outputs]
        control.persist()()
    return outputs, windows, stored, sequences


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=signal_plans, restart=st.integers(0, 14))
def test_control_step_outputs_and_tables_equal_ticking_every_10_s(plan, restart):
    signals = make_signals(plan)
    restart_at = min(restart, len(signals))
    assert run_pipeline(ControlProcessor, signals, restart_at) == run_pipeline(
        EveryTick, signals, restart_at
    )


def run_controller(
    signals: list[Signal], warm_from: int, skip: bool
) -> tuple[list[Any], list[int]]:
    """Sequencer, book and controller as the control step drives them, with a warm-up IP
    (which only the controller's own configuration sets); what they output and store,
    and the instants ticked."""
    sequencer: Sequencer[Signal] = Sequencer([STREAM], CONTROL_TICK_MS)
    book = ReputationBook()
    controller = ThrottleController(RULES, warmup_ips={WARM_IP: warm_from})
    for i, signal in enumerate(signals):
        sequencer.add(STREAM, i, signal.time_ms, signal)
    due = controller.next_due if skip else every_tick(controller)
    out: list[Any] = []
    ticks = []
    for kind, time_ms, signal in sequencer.steps(signals[-1].time_ms + 1, due):
        if kind == "tick" or signal is None:
            ticks.append(time_ms)
            out += [("tick", time_ms, s) for s in controller.tick(time_ms)]
        else:
            out += [("rep", r) for r in book.add(signal)]
            out += [("signal", s) for s in controller.on_signal(signal, book)]
    states = {k: controller.state(k).to_dict() for k in sorted(controller._states)}
    return [out, states, sequencer.to_dict()], ticks


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=signal_plans, warm_from=st.integers(-2 * DAY_MS, 3_600_000))
def test_warm_up_days_and_every_instant_are_ticked_as_every_10_s(plan, warm_from):
    signals = make_signals(plan)
    skipping, _ = run_controller(signals, JAN_2026 + warm_from, skip=True)
    assert skipping == run_controller(signals, JAN_2026 + warm_from, skip=False)[0]


def test_a_332_day_gap_after_a_suspension_takes_a_handful_of_ticks():
    """The jump of 2026-01-01 to the end of November: the suspension's end, the climb
    back to the maximum and the warm-up days are ticked, the months after them are not."""
    plan = [(0, 2, WARM_IP), (0, 0, None), (332 * DAY_MS, 1, None)]
    (out, _states, _seq), ticks = run_controller(make_signals(plan), JAN_2026, skip=True)
    assert any(kind == "tick" for kind, *_ in out)  # the suspension did end on a tick
    assert 0 < len(ticks) < 40
    assert ticks[-1] < JAN_2026 + 3 * DAY_MS
