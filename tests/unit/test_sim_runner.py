"""The closed loop in process: determinism, valid events, KPIs, adaptive against static."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from factories import JAN_2026

from streams.runtime.codec import Codec
from streams.runtime.validate import validate_event
from streams.sim.control import InProcessControlPlane
from streams.sim.mta import Event
from streams.sim.runner import SimConfig, default_start_ms, simulate


class Recording(InProcessControlPlane):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self.advanced: list[int] = []

    def publish(self, events: Sequence[Event]) -> None:
        self.events += events
        super().publish(events)

    def advance(self, now_ms: int) -> None:
        self.advanced.append(now_ms)
        super().advance(now_ms)


def run(mode: str = "adaptive", recipients: int = 1500, seed: int = 3, **kw):
    control = Recording()
    config = SimConfig(mode=mode, recipients=recipients, seed=seed, start_ms=JAN_2026, **kw)  # type: ignore[arg-type]
    return simulate(config, control), control


def test_same_seed_same_events_and_summary():
    (a, ca), (b, cb) = run(), run()
    assert ca.events == cb.events
    assert ca.advanced == cb.advanced
    strip = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert strip(a.summary) == strip(b.summary)
    (_, cc) = run(seed=4)
    assert cc.events != ca.events


def test_events_fit_the_schemas_and_pass_the_workers_validation():
    _, control = run()
    codec = Codec()
    end = max(e["event_time"] for _, e in control.events)
    for family, event in control.events:
        decoded = codec.decode(family, codec.encode(family, event))
        validate_event(family, decoded, now_ms=end)
    families = {(f, e["kind"]) for f, e in control.events}
    assert {("send", "relayed"), ("send", "delivered"), ("bounce", "sync")} <= families
    assert ("retry", "deferred") in families
    assert len({e["event_id"] for _, e in control.events}) == len(control.events)


def test_one_relayed_per_message_and_every_message_ends():
    result, control = run()
    s = result.summary
    relayed = [e for f, e in control.events if f == "send" and e["kind"] == "relayed"]
    assert len(relayed) == s["recipients"]
    assert s["sent"] + s["failed"] == s["recipients"]


def test_pipeline_kpis_agree_with_the_simulator():
    result, _ = run()
    s = result.summary
    kpi = s["pipeline_kpi"]
    assert kpi["to_deliver"] == s["recipients"]
    assert kpi["pending"] == 0
    assert (kpi["sent"], kpi["failed"]) == (s["sent"], s["failed"])


def test_static_ignores_the_control_topic_while_adaptive_follows_it():
    adaptive, _ = run("adaptive", recipients=5000)
    static, _ = run("static", recipients=5000)
    assert static.summary["throttle_records"] > 0  # the pipeline reacts in both modes
    baseline = 36_000
    assert all(st.limits.get("google", baseline) == baseline for st in static.timeline)
    assert any(st.limits.get("google", baseline) < baseline for st in adaptive.timeline)
    for st in adaptive.timeline:  # never more than the limit in force (one step's tokens)
        if "google" in st.rows:
            assert st.rows["google"][0] <= 2 * max(st.limits["google"] / 60, 1)


@pytest.mark.parametrize("seed", [1, 2])
def test_adaptive_beats_static(seed):
    adaptive, _ = run("adaptive", recipients=8000, seed=seed)
    static, _ = run("static", recipients=8000, seed=seed)
    a, s = adaptive.summary, static.summary
    assert a["deferrals"] <= 0.5 * s["deferrals"]
    assert a["soft_bounces"] < s["soft_bounces"]
    assert a["time_to_deliver_s"] <= s["time_to_deliver_s"]
    assert a["success_pct"] >= s["success_pct"]


def test_default_start_is_midnight_four_days_back():
    start = default_start_ms(now_s=1_767_312_000 + 3600)  # 2026-01-02T01:00Z
    assert start == (1_767_312_000 - 4 * 86_400) * 1000
