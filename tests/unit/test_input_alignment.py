"""Input alignment: the decision (domain.control.input_alignment) and how the worker applies
it to Faust's active partitions (runtime.input_flow), with a stand-in consumer."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams.domain.control.input_alignment import MIN_BACKLOG, WINDOW_MS, held_back
from streams.runtime.input_flow import InputAlignment
from streams.runtime.progress import InputProgress

BIG = MIN_BACKLOG


def test_a_partition_far_ahead_with_a_backlog_is_held_back():
    inputs = {"send:0": (1_000, BIG), "retry:0": (1_000 + WINDOW_MS + 1, BIG)}
    assert held_back(inputs) == {"retry:0"}
    inputs["retry:0"] = (1_000 + WINDOW_MS, BIG)  # at the window's edge: read on
    assert held_back(inputs) == set()


def test_without_a_backlog_nothing_is_held_back_or_holds_back():
    ahead = (10 * WINDOW_MS, BIG - 1)  # far ahead but nearly caught up: live traffic
    assert held_back({"send:0": (0, BIG), "retry:0": ahead}) == set()
    behind = (0, BIG - 1)  # far behind but nearly caught up: holds nobody back
    assert held_back({"send:0": behind, "retry:0": (10 * WINDOW_MS, BIG)}) == set()


def test_nothing_is_held_back_while_a_backlog_has_no_time_yet():
    inputs = {"send:0": (None, BIG), "retry:0": (10 * WINDOW_MS, BIG), "bounce:0": (0, BIG)}
    assert held_back(inputs) == set()


inputs_strategy = st.dictionaries(
    st.sampled_from([f"{f}:{p}" for f in ("send", "bounce", "retry") for p in range(4)]),
    st.tuples(
        st.one_of(st.none(), st.integers(0, 10 * WINDOW_MS)), st.integers(0, 3 * MIN_BACKLOG)
    ),
)


@given(inputs_strategy)
def test_held_back_inputs_have_a_backlog_and_run_ahead_of_the_slowest(inputs):
    held = held_back(inputs)
    backlog = {k: t for k, (t, left) in inputs.items() if left >= MIN_BACKLOG}
    if None in backlog.values():
        assert held == set()
        return
    for key in held:
        assert key in backlog
        assert backlog[key] > min(backlog.values()) + WINDOW_MS
    # Never all of them: the slowest is always read, so the backlog always moves.
    assert len(held) < max(1, len(backlog))
    # And every input with a backlog that is more than a window ahead is held back.
    if backlog:
        ceiling = min(backlog.values()) + WINDOW_MS
        assert held == {k for k, t in backlog.items() if t > ceiling}


# --- applying it to Faust's consumer ----------------------------------------------------

SEND0, RETRY0, BOUNCE0 = TP("p.send", 0), TP("p.retry", 0), TP("p.bounce", 0)


@dataclass
class FakeConsumer:
    """What InputAlignment and InputProgress read and change of Faust's consumer."""

    ends: dict[TP, int]
    active: set[TP] = field(default_factory=set)
    _paused_partitions: set[TP] = field(default_factory=set)
    _buffered_partitions: set[TP] = field(default_factory=set)
    _committed_offset: dict[TP, int] = field(default_factory=dict)
    _read_offset: dict[TP, int] = field(default_factory=dict)
    flow_active: bool = True

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]

    def _get_active_partitions(self) -> set[TP]:
        return self.active


def _worker(ends: dict[TP, int]) -> tuple[InputAlignment, InputProgress, SimpleNamespace]:
    progress = InputProgress({"p.send": "send", "p.retry": "retry", "p.bounce": "bounce"}, 1.0)
    consumer = FakeConsumer(ends, active=set(ends))
    app = SimpleNamespace(consumer=consumer, rebalancing=False, in_recovery=False)
    return InputAlignment(progress), progress, app


def test_the_worker_holds_back_and_puts_back_what_runs_ahead():
    alignment, progress, app = _worker({SEND0: 10 * BIG, RETRY0: 10 * BIG, BOUNCE0: 10 * BIG})
    progress.note(SEND0, 0, 0)
    progress.note(BOUNCE0, 0, 60_000)
    progress.note(RETRY0, 0, 3 * WINDOW_MS)
    alignment.apply(app)
    assert app.consumer.active == {SEND0, BOUNCE0}
    assert alignment.held == {RETRY0}
    progress.note(SEND0, 1, 2 * WINDOW_MS)  # the slowest catches up, past the bounces
    alignment.apply(app)
    assert app.consumer.active == {BOUNCE0}
    assert alignment.held == {SEND0, RETRY0}
    progress.note(BOUNCE0, 1, 2 * WINDOW_MS)
    alignment.apply(app)
    assert app.consumer.active == {SEND0, BOUNCE0, RETRY0}
    assert alignment.held == set()


def test_nothing_changes_during_a_rebalance_or_recovery():
    alignment, progress, app = _worker({SEND0: 10 * BIG, RETRY0: 10 * BIG})
    progress.note(SEND0, 0, 0)
    progress.note(RETRY0, 0, 3 * WINDOW_MS)
    for flag in ("rebalancing", "in_recovery"):
        setattr(app, flag, True)
        alignment.apply(app)
        assert app.consumer.active == {SEND0, RETRY0}
        setattr(app, flag, False)
    alignment.apply(app)
    assert app.consumer.active == {SEND0}
    # Faust pauses it for a rebalance of its own, then the slowest catches up: it is
    # Faust's to resume, not ours.
    app.consumer._paused_partitions.add(RETRY0)
    progress.note(SEND0, 1, 3 * WINDOW_MS)
    alignment.apply(app)
    assert app.consumer.active == {SEND0}
    assert alignment.held == set()


def test_a_rebalance_that_rebuilt_the_active_set_forgets_what_was_held():
    alignment, progress, app = _worker({SEND0: 10 * BIG, RETRY0: 10 * BIG})
    progress.note(SEND0, 0, 0)
    progress.note(RETRY0, 0, 3 * WINDOW_MS)
    alignment.apply(app)
    assert alignment.held == {RETRY0}
    app.consumer.active.add(RETRY0)  # Faust's new active set after a rebalance
    progress.reset()  # the worker's own reset on assignment
    alignment.apply(app)  # no times yet: nothing is held back
    assert alignment.held == set()
    assert app.consumer.active == {SEND0, RETRY0}
