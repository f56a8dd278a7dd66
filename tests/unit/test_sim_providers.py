"""Simulated providers: capacities, real replies the qualifier understands, penalties, blocks."""

from __future__ import annotations

import pytest
from factories import JAN_2026

from streams.domain.bounce.qualifier import default_qualifier
from streams.sim.campaign import Truth
from streams.sim.providers import (
    PROFILES,
    TAIL_PROFILE,
    Outcome,
    Provider,
    ProviderNetwork,
    ProviderProfile,
)

IP = "192.0.2.10"


def profile(**overrides: object) -> ProviderProfile:
    base = PROFILES["google"]
    fields = {**base.__dict__, "capacity_per_hour": 600, "total_per_hour": None, **overrides}
    return ProviderProfile(**fields)  # type: ignore[arg-type]


def test_answers_rate_limit_replies_above_capacity_and_refills():
    p = Provider("google", profile())  # 600/h = 10 a minute
    outcomes = [p.attempt(IP, Truth.VALID, JAN_2026)[0] for _ in range(25)]
    assert outcomes.count(Outcome.DELIVERED) == 10
    assert outcomes[10:] == [Outcome.RATE_LIMITED] * 15
    _, reply = p.attempt(IP, Truth.VALID, JAN_2026)
    assert reply is not None and reply.code == 421 and reply.status == "4.7.28"
    assert IP in reply.text and "{ip}" not in reply.text
    # Half a minute later, half a minute of capacity is back.
    later = [p.attempt(IP, Truth.VALID, JAN_2026 + 30_000)[0] for _ in range(10)]
    assert later.count(Outcome.DELIVERED) == 5


def test_capacity_is_per_sending_ip():
    p = Provider("google", profile())
    for _ in range(10):
        p.attempt(IP, Truth.VALID, JAN_2026)
    assert p.attempt(IP, Truth.VALID, JAN_2026)[0] is Outcome.RATE_LIMITED
    assert p.attempt("192.0.2.11", Truth.VALID, JAN_2026)[0] is Outcome.DELIVERED


def test_weaker_ip_has_lower_capacity_at_yahoo():
    yahoo = PROFILES["yahoo"]
    assert yahoo.capacity("192.0.2.11") < yahoo.capacity(IP)


def test_hammering_is_penalised():
    p = Provider("google", profile())
    for minute in range(3):
        for _ in range(60):  # six times the capacity, every minute
            p.attempt(IP, Truth.VALID, JAN_2026 + minute * 60_000)
    now = JAN_2026 + 3 * 60_000
    p.attempt(IP, Truth.VALID, now)
    assert p.penalised(IP, now)
    delivered = sum(
        p.attempt(IP, Truth.VALID, JAN_2026 + m * 60_000)[0] is Outcome.DELIVERED
        for m in range(4, 14)
        for _ in range(20)
    )
    assert delivered <= 10 * 10 * 0.3 + 1  # the penalty factor cuts the capacity


def test_gentle_sender_is_not_penalised():
    p = Provider("google", profile())
    for minute in range(20):
        for _ in range(10):
            assert p.attempt(IP, Truth.VALID, JAN_2026 + minute * 60_000)[0] is Outcome.DELIVERED
    assert not p.penalised(IP, JAN_2026 + 20 * 60_000)


def test_blocks_when_invalid_rate_runs_high():
    p = Provider("google", profile(capacity_per_hour=100_000))
    for i in range(300):
        truth = Truth.INVALID if i % 5 == 0 else Truth.VALID
        p.attempt(IP, truth, JAN_2026 + i * 1000)
    outcome, reply = p.attempt(IP, Truth.VALID, JAN_2026 + 301_000)
    assert outcome is Outcome.BLOCKED
    assert reply == PROFILES["google"].block.render(IP)


def test_one_complaint_does_not_block_but_a_complaint_wave_does():
    p = Provider("google", profile(capacity_per_hour=100_000))
    for i in range(400):
        p.attempt(IP, Truth.VALID, JAN_2026 + i * 100)
    p.complaint(IP, JAN_2026 + 50_000)
    assert p.attempt(IP, Truth.VALID, JAN_2026 + 61_000)[0] is Outcome.DELIVERED
    for _ in range(3):
        p.complaint(IP, JAN_2026 + 61_000)
    assert p.attempt(IP, Truth.VALID, JAN_2026 + 121_000)[0] is Outcome.BLOCKED


@pytest.mark.parametrize("name", [*PROFILES, "tail"])
def test_replies_are_the_ones_the_qualifier_knows(name):
    prof = PROFILES.get(name, TAIL_PROFILE)
    q = default_qualifier()

    def qualify(reply):
        r = reply.render(IP)
        return q.qualify(r.code, r.status, r.text, provider=prof.mx_host)

    assert qualify(prof.rate_limit).rate_limit, name
    assert qualify(prof.user_unknown).failure_reason == "User unknown"
    assert qualify(prof.mailbox_full).failure_reason == "Mailbox full"
    assert qualify(prof.disabled).failure_type == "soft"
    block = qualify(prof.block)
    assert not block.rate_limit and 50 <= block.bounce_class <= 54


def test_network_routes_domains_and_draws_tail_capacities_from_the_seed():
    net = ProviderNetwork(seed=1)
    assert net.provider_name("googlemail.com") == "google"
    assert net.mx_host("nx01.invalid") is None
    assert net.mx_host("biz001.example") == "mx.biz001.example"
    assert net.group_label("biz001.example") == "tail"
    a = ProviderNetwork(seed=1).provider("biz007.example")
    b = ProviderNetwork(seed=1).provider("biz007.example")
    assert a is not None and b is not None and a.capacity(IP) == b.capacity(IP)
