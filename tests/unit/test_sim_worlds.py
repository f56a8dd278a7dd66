"""Scenario worlds: steady is today's world; shocks, outages, cold IPs, recurring campaigns."""

from __future__ import annotations

from collections.abc import Sequence

from factories import JAN_2026

from streams.sim.campaign import CampaignSpec, Truth, build_recipients
from streams.sim.control import InProcessControlPlane, NoPipeline
from streams.sim.mta import Event
from streams.sim.providers import PROFILES, Outcome, Provider, ProviderProfile
from streams.sim.runner import SimConfig, simulate
from streams.sim.worlds import (
    COLD_MIN_PER_HOUR,
    COLD_SHARE,
    DAY_MS,
    NEW_IP,
    OUTAGE_S,
    RECURRING_DAYS,
    SCENARIOS,
    ColdIpProvider,
    OutageProvider,
    ShockProvider,
    build_world,
    span_days,
)

IP = "192.0.2.10"
MINUTE = 60_000


def profile(capacity: int = 600) -> ProviderProfile:
    fields = {**PROFILES["google"].__dict__, "capacity_per_hour": capacity, "total_per_hour": None}
    return ProviderProfile(**fields)  # type: ignore[arg-type]


class Recording(NoPipeline):
    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, events: Sequence[Event]) -> None:
        self.events += events


def delivered_in_minute(p: Provider, minute: int, tries: int = 30) -> int:
    t = JAN_2026 + minute * MINUTE
    return [p.attempt(IP, Truth.VALID, t)[0] for _ in range(tries)].count(Outcome.DELIVERED)


def test_steady_is_one_campaign_of_the_plain_providers():
    spec = CampaignSpec(300, 4, "D")
    world = build_world("steady", spec)
    assert [c.day for c in world.campaigns] == [0]
    assert list(world.campaigns[0].recipients) == build_recipients(spec)
    assert type(world.providers.named("google")) is Provider
    assert world.validity_s is None


def test_shock_lowers_capacity_after_the_trigger_for_its_span():
    p = ShockProvider("google", profile(600), None, after=10, span_s=3600)  # 10 a minute
    assert delivered_in_minute(p, 0) == 10  # the tenth delivery starts the shock
    assert p.since is not None
    assert delivered_in_minute(p, 5) == 2  # a fifth of the capacity
    assert delivered_in_minute(p, 61) == 10  # over after an hour


def test_shock_world_has_a_complaint_spike_at_the_shocked_provider():
    spec = CampaignSpec(4000, 6, "D")
    world = build_world("shock", spec)
    recipients = world.campaigns[0].recipients
    spiked = [r for r in recipients if r.complains]
    plain = [r for r in build_recipients(spec) if r.complains]
    assert len(spiked) > len(plain)
    assert {r.domain for r in spiked if r not in plain} <= {"gmail.com", "googlemail.com"}
    assert isinstance(world.providers.named("google"), ShockProvider)


def test_outage_gives_connection_failures_in_its_window_only():
    p = OutageProvider("google", profile(6000), None, after=5, span_s=OUTAGE_S)
    assert delivered_in_minute(p, 0, tries=5) == 5
    outcome, reply = p.attempt(IP, Truth.VALID, JAN_2026 + MINUTE)
    assert outcome is Outcome.CONNECTION_FAILED
    assert reply is not None and reply.code is None and "timed out" in reply.text
    end = JAN_2026 + OUTAGE_S * 1000
    assert p.attempt(IP, Truth.VALID, end - 1)[0] is Outcome.CONNECTION_FAILED
    assert p.attempt(IP, Truth.VALID, end + MINUTE)[0] is Outcome.DELIVERED


def test_outage_run_sends_no_reply_codes_and_only_for_thirty_minutes():
    control = Recording()
    config = SimConfig(mode="static", recipients=1500, seed=3, start_ms=JAN_2026, scenario="outage")
    result = simulate(config, control)
    failures = [e for _, e in control.events if e.get("enhanced_status") == "4.4.1"]
    assert len(failures) == result.summary["connection_failures"] > 0
    assert all(e["smtp_code"] is None and "gmail-smtp-in" in e["mx_host"] for e in failures)
    times = [e["event_time"] for e in failures]
    assert max(times) - min(times) < OUTAGE_S * 1000
    assert result.summary["sent"] + result.summary["failed"] == 1500


def test_a_cold_ip_warms_with_clean_days_and_cools_with_bad_ones():
    p = ColdIpProvider("google", profile(60_000), None, cold=(NEW_IP,))
    assert p.capacity(NEW_IP) == 60_000 * COLD_SHARE and p.capacity(IP) == 60_000
    p.warmth[NEW_IP] = 0.001
    assert p.capacity(NEW_IP) == COLD_MIN_PER_HOUR
    p.warmth[NEW_IP] = COLD_SHARE
    for _ in range(12):  # a clean day: 12 of 20 a minute
        p.attempt(NEW_IP, Truth.VALID, JAN_2026)
    p.settle(JAN_2026 + DAY_MS)  # judged once the next day begins (the oracle looks then)
    assert p.warmth[NEW_IP] == 2 * COLD_SHARE
    p.attempt(NEW_IP, Truth.VALID, JAN_2026 + DAY_MS)  # the same day: not judged again
    assert p.warmth[NEW_IP] == 2 * COLD_SHARE
    for _ in range(200):  # hammering: most deferred
        p.attempt(NEW_IP, Truth.VALID, JAN_2026 + DAY_MS)
    p.attempt(NEW_IP, Truth.VALID, JAN_2026 + 2 * DAY_MS)
    assert p.warmth[NEW_IP] == COLD_SHARE


def test_warmup_world_sends_thirty_daily_campaigns_from_a_new_ip():
    world = build_world("warmup", CampaignSpec(1000, 2, "W"))
    assert [c.day for c in world.campaigns] == list(range(30))
    assert {c.spec.recipients for c in world.campaigns} == {100}
    assert world.ips[1] == NEW_IP and isinstance(world.providers.named("yahoo"), ColdIpProvider)
    assert type(world.providers.named("biz001.example")) is Provider


def test_recurring_sends_the_same_list_daily_through_one_control_plane():
    control = InProcessControlPlane()
    spec = CampaignSpec(200, 8, "R", mailbox_full_share=0.0)
    result = simulate(SimConfig(campaign=spec, start_ms=JAN_2026, scenario="recurring"), control)
    campaigns = result.summary["campaigns"]
    assert len(campaigns) == RECURRING_DAYS
    assert [c["delivery_id"] for c in campaigns] == [f"R-d{d}" for d in range(1, 8)]
    # Each day's KPIs live in the same pipeline state, which saw every campaign.
    for c in campaigns:
        kpi = control.kpi(c["delivery_id"])
        assert kpi is not None and kpi["to_deliver"] == 200 and kpi["pending"] == 0
    assert result.summary["recipients"] == 7 * 200
    starts = sorted({st.t_ms - (st.t_ms - JAN_2026) % DAY_MS for st in result.timeline})
    assert starts == [JAN_2026 + d * DAY_MS for d in range(7)]


def test_every_world_spans_the_days_its_start_time_allows_for():
    for scenario in SCENARIOS:
        assert build_world(scenario, CampaignSpec(100, 1, "S")).span_days == span_days(scenario)
