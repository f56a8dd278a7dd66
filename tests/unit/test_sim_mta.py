"""Simulated MTA: limits from throttle records, token buckets, retries and validity."""

from __future__ import annotations

import itertools

from factories import JAN_2026

from streams.domain.control.mx_rules import load_mx_rules
from streams.sim.campaign import Recipient, Truth
from streams.sim.mta import MAX_BACKOFF_S, MAX_VALIDITY_S, LimitBook, Mta
from streams.sim.providers import SENDING_IPS, ProviderNetwork

RULES = load_mx_rules(None)
STEP = 60_000


def recipients(n: int, domain: str = "gmail.com", truth: Truth = Truth.VALID) -> list[Recipient]:
    return [Recipient(i, f"u{i:07d}@{domain}", domain, truth, False) for i in range(n)]


def mta(scale: float = 1000.0) -> Mta:
    return Mta(RULES, ProviderNetwork(1, capacity_scale=scale), SENDING_IPS, "D", seed=1)


def record(key: str, rate: int, conns: int = 20, msgs: int = 50, until: int | None = None):
    return {
        "key": key,
        "max_rate_per_hour": rate,
        "max_connections": conns,
        "max_messages_per_connection": msgs,
        "retry_interval_s": 900,
        "suspended_until": until,
        "mode": "suspended" if until else "backoff",
        "version": 1,
    }


def attempts_by_ip(events) -> dict[str, int]:
    out: dict[str, int] = {}
    for family, e in events:
        if family != "send" or e["kind"] == "delivered":
            ip = e.get("sending_ip")
            if ip:
                out[ip] = out.get(ip, 0) + 1
    return out


def test_static_sends_at_the_group_baseline_per_ip():
    m = mta()
    m.submit(recipients(3000), JAN_2026)
    events, rows = m.step(JAN_2026, LimitBook(RULES, None))
    # google baseline 36 000/h = 600 a minute per IP, two IPs
    assert attempts_by_ip(events) == {ip: 600 for ip in SENDING_IPS}
    assert rows["google"][0] == 1200


def test_token_buckets_follow_the_throttle_record():
    m = mta()
    m.submit(recipients(3000), JAN_2026)
    book = LimitBook(RULES, {"group:google": record("group:google", 1800)})
    for i in range(5):
        events, _ = m.step(JAN_2026 + i * STEP, book)
        assert attempts_by_ip(events) == {ip: 30 for ip in SENDING_IPS}


def test_slow_rates_accumulate_fractional_tokens():
    m = mta()
    m.submit(recipients(100), JAN_2026)
    book = LimitBook(RULES, {"group:google": record("group:google", 30)})  # 0.5 a minute
    sent = sum(
        sum(attempts_by_ip(m.step(JAN_2026 + i * STEP, book)[0]).values()) for i in range(20)
    )
    assert 9 * len(SENDING_IPS) <= sent <= 10 * len(SENDING_IPS) + 2


def test_connections_bound_a_step():
    m = mta()
    m.submit(recipients(3000), JAN_2026)
    book = LimitBook(RULES, {"group:google": record("group:google", 72_000, conns=2, msgs=10)})
    events, _ = m.step(JAN_2026, book)
    assert attempts_by_ip(events) == {ip: 20 for ip in SENDING_IPS}


def test_a_suspended_ip_leaves_its_share_to_the_other():
    m = mta()
    m.submit(recipients(3000), JAN_2026)
    suspended = f"ip_group:{SENDING_IPS[1]}|google"
    until = JAN_2026 + 2 * STEP
    book = LimitBook(
        RULES,
        {
            "group:google": record("group:google", 3600),
            suspended: record(suspended, 3600, until=until),
        },
    )
    assert attempts_by_ip(m.step(JAN_2026, book)[0]) == {SENDING_IPS[0]: 60}
    assert attempts_by_ip(m.step(until, book)[0]) == {ip: 60 for ip in SENDING_IPS}
    assert m.next_wake(until + STEP, book) == until + STEP


def test_all_ips_suspended_wakes_at_the_end_of_the_suspension():
    m = mta()
    m.submit(recipients(10), JAN_2026)
    until = JAN_2026 + 3_600_000
    book = LimitBook(RULES, {"group:google": record("group:google", 3600, until=until)})
    m.step(JAN_2026, book)  # nothing goes out; deadlines are days away
    assert m.next_wake(JAN_2026 + STEP, book) == until


def test_retries_back_off_and_honour_validity():
    m = mta()
    m.submit(recipients(1, truth=Truth.MAILBOX_FULL), JAN_2026)
    book = LimitBook(RULES, None)
    t = JAN_2026
    deferrals = []
    expired = []
    while not m.done:
        events, _ = m.step(t, book)
        deferrals += [e for f, e in events if f == "retry" and e["kind"] == "deferred"]
        expired += [e for f, e in events if f == "retry" and e["kind"] == "expired"]
        wake = m.next_wake(t + STEP, book)
        if wake is None:
            break
        t = wake
    deadline = JAN_2026 + MAX_VALIDITY_S * 1000
    assert [e["event_time"] for e in expired] == [deadline]
    assert all(e["event_time"] < deadline for e in deferrals)
    assert all(e["enhanced_status"] == "4.2.2" for e in deferrals)
    gaps = [b["event_time"] - a["event_time"] for a, b in itertools.pairwise(deferrals)]
    assert gaps[0] < gaps[2] < gaps[4]  # exponential
    assert max(gaps) <= MAX_BACKOFF_S * 1000 * 1.1 + STEP  # capped (jitter <= 10 %)
    assert 15 <= len(deferrals) <= 30
    assert deferrals[-1]["next_attempt_time"] is None  # no retry fits in the validity


def test_hard_bounces_and_unknown_domains_fail_at_once():
    m = mta()
    m.submit(recipients(2, truth=Truth.INVALID) + recipients(1, domain="nx01.invalid"), JAN_2026)
    events, _ = m.step(JAN_2026, LimitBook(RULES, None))
    bounces = [e for f, e in events if f == "bounce"]
    assert len(bounces) == 3 and m.done
    assert {e["diagnostic"].split()[0] for e in bounces} == {"550-5.1.1", "Host"}
    assert m.totals.hard_bounces == 3


def test_disabled_account_is_given_up_after_the_5xx():
    m = mta()
    m.submit(recipients(1, truth=Truth.DISABLED), JAN_2026)
    events, _ = m.step(JAN_2026, LimitBook(RULES, None))
    assert [(f, e["kind"]) for f, e in events] == [("bounce", "sync"), ("retry", "expired")]
    assert m.done and m.totals.failed == 1
