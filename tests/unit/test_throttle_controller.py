import itertools
import random

from factories import UNALIGNED_2023
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.control.mx_rules import load_mx_rules
from streams.domain.control.reputation import ReputationBook, Signal
from streams.domain.control.throttle_controller import ThrottleController
from streams.domain.control.throttle_state import KeyState
from streams.domain.types import Qualification

RULES = load_mx_rules()
GOOGLE = RULES.group("google")
MINUTE = 60_000
IP = "192.0.2.20"

RATE_LIMIT_Q = Qualification("soft", "Refused", 20, "gmail-4.7.28", rate_limit=True)
RATE_LIMIT_REPLY = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"
USER_UNKNOWN_Q = Qualification("hard", "User unknown", 10, "user-unknown")


def signal(t, outcome="delivered", domain="gmail.com", group="google", ip=None, reply=None, q=None):
    attempt = outcome != "complaint"
    return Signal(t, f"e{t}", domain, group, ip, outcome, attempt, reply, q)


def rate_limited(t, domain="gmail.com", group="google", ip=None):
    return signal(t, "rate_limit", domain, group, ip, RATE_LIMIT_REPLY, RATE_LIMIT_Q)


class Loop:
    """Book + controller, as the stream agent wires them; keeps every published setting."""

    def __init__(self, controller=None):
        self.book = ReputationBook()
        self.ctl = controller or ThrottleController(RULES)
        self.published = []

    def feed(self, sig):
        self.book.add(sig)
        out = self.ctl.on_signal(sig, self.book)
        self.published += out
        return out

    def tick(self, now):
        out = self.ctl.tick(now)
        self.published += out
        return out

    def of(self, key):
        return [s for s in self.published if s.key == key]


def burst(loop, start=UNALIGNED_2023, n=20, domain="gmail.com", group="google"):
    for i in range(n):
        loop.feed(rate_limited(start + i * 3000, domain, group))


def test_rate_limit_burst_throttles_google_down_and_leaves_yahoo_alone():
    loop = Loop()
    for i in range(50):
        loop.feed(
            signal(UNALIGNED_2023 - 10 * MINUTE + i * 1000, domain="yahoo.com", group="yahoo")
        )
    burst(loop)
    google = loop.of("group:google")
    assert len(google) == 1  # one change per adjustment interval, however long the burst
    first = google[0]
    assert first.changed_at - UNALIGNED_2023 < GOOGLE.adjust_interval_s * 1000
    assert first.mode == "backoff" and first.version == 1
    assert first.max_rate_per_hour == GOOGLE.max_rate_per_hour.baseline // 2
    assert first.max_connections == GOOGLE.max_connections.baseline // 2
    assert "rate-limit reply '421 4.7.28" in first.reason and "gmail-4.7.28" in first.reason
    assert loop.of("group:yahoo") == [] and loop.ctl.setting("group:yahoo") is None
    # Still rate limited after the adjustment interval: one more multiplicative step.
    loop.feed(rate_limited(UNALIGNED_2023 + GOOGLE.adjust_interval_s * 1000))
    assert [s.max_rate_per_hour for s in loop.of("group:google")] == [18000, 9000]


def test_decrease_never_goes_below_min():
    loop = Loop()
    for i in range(40):
        loop.feed(rate_limited(UNALIGNED_2023 + i * GOOGLE.adjust_interval_s * 1000))
    rates = [s.max_rate_per_hour for s in loop.of("group:google")]
    assert rates[-1] == GOOGLE.max_rate_per_hour.min
    assert min(rates) == GOOGLE.max_rate_per_hour.min
    assert len(rates) == len(set(rates))  # at the floor nothing more is published


def test_quiet_healthy_time_steps_back_up_to_the_maximum():
    loop = Loop()
    burst(loop)
    last_negative = UNALIGNED_2023 + 19 * 3000
    for minute in range(1, 24 * 60):
        now = UNALIGNED_2023 + minute * MINUTE
        loop.feed(signal(now))  # healthy traffic keeps flowing
        loop.tick(now)
    ups = loop.of("group:google")[1:]
    step = round(GOOGLE.max_rate_per_hour.baseline * GOOGLE.increase_step)
    expected = list(range(18000 + step, GOOGLE.max_rate_per_hour.max + 1, step))
    assert [s.max_rate_per_hour for s in ups] == expected
    assert ups[-1].max_rate_per_hour == GOOGLE.max_rate_per_hour.max
    assert ups[-1].max_connections == GOOGLE.max_connections.max
    assert ups[-1].max_messages_per_connection == GOOGLE.max_messages_per_connection.max
    quiet = GOOGLE.quiet_interval_s * 1000
    assert ups[0].changed_at - last_negative >= quiet
    gaps = [b.changed_at - a.changed_at for a, b in itertools.pairwise(ups)]
    assert all(quiet <= gap < quiet + MINUTE for gap in gaps)
    # backoff while below baseline, normal from baseline on
    modes = {s.max_rate_per_hour: s.mode for s in ups}
    assert modes[32400] == "backoff" and modes[36000] == "normal" and modes[72000] == "normal"
    assert [s.version for s in loop.of("group:google")] == list(range(1, len(ups) + 2))
    assert "healthy for 30 min" in ups[0].reason


def test_no_increase_while_negative_feedback_continues():
    loop = Loop()
    for minute in range(0, 6 * 60, 10):
        loop.feed(rate_limited(UNALIGNED_2023 + minute * MINUTE))
        loop.tick(UNALIGNED_2023 + minute * MINUTE + 1)
    rates = [s.max_rate_per_hour for s in loop.of("group:google")]
    assert rates == sorted(rates, reverse=True)


def feed_invalid_traffic(loop, start, n, every, ip=None, domain="gmail.com", group="google"):
    """n attempts, one in ``every`` a user-unknown hard bounce, one per second."""
    out = []
    for i in range(n):
        hard = i % every == every - 1
        outcome = "hard" if hard else "delivered"
        q = USER_UNKNOWN_Q if hard else None
        out += loop.feed(signal(start + i * 1000, outcome, domain, group, ip, q=q))
    return out


def test_invalid_recipient_suspension_waits_for_volume_and_ends_on_time():
    loop = Loop()
    # 20 % invalid but below min_volume (200): nothing happens.
    assert feed_invalid_traffic(loop, UNALIGNED_2023, GOOGLE.min_volume - 1, 5) == []
    # One more attempt reaches the volume: suspended for suspend_s.
    out = loop.feed(signal(UNALIGNED_2023 + 500_000))
    assert [(s.key, s.mode) for s in out] == [("group:google", "suspended")]
    until = out[0].suspended_until
    assert until == UNALIGNED_2023 + 500_000 + GOOGLE.suspend_s * 1000
    assert "invalid-recipient rate 19.5%" in out[0].reason and ">= 10%" in out[0].reason
    # More bad news while suspended changes nothing.
    assert feed_invalid_traffic(loop, UNALIGNED_2023 + 501_000, 50, 2) == []
    assert loop.tick(until - 1) == []
    resumed = loop.tick(until)
    assert len(resumed) == 1
    assert resumed[0].mode == "backoff" and resumed[0].suspended_until is None
    assert resumed[0].max_rate_per_hour == GOOGLE.max_rate_per_hour.baseline // 2
    assert resumed[0].version == 2
    # Old window data is gone after 4 h: clean traffic does not suspend again.
    assert feed_invalid_traffic(loop, until + 1000, 300, 1000) == []


def test_invalid_rate_between_thresholds_throttles_down():
    loop = Loop()
    out = feed_invalid_traffic(loop, UNALIGNED_2023, 400, 20)  # 5 %: >= 3 % but < 10 %
    assert [(s.mode, s.max_rate_per_hour) for s in out] == [("backoff", 18000)]
    assert "invalid-recipient rate 5% >= 3%" in out[0].reason


def test_default_group_domains_are_throttled_one_by_one():
    loop = Loop()
    burst(loop, domain="small.example", group="default")
    assert [s.key for s in loop.published] == ["domain:small.example"]
    assert loop.published[0].scope == "domain"
    assert loop.ctl.setting("domain:other.example") is None


def test_one_bad_small_domain_does_not_suspend_an_ip_for_every_small_domain():
    loop = Loop()
    # A list full of invalid addresses at one small domain, sent from one IP, among a
    # clean long tail: the bad domain is suspended, the IP x default-group key is not
    # judged on the sum of all small domains (only rate limits and rules act on it).
    feed_invalid_traffic(loop, UNALIGNED_2023, 250, 2, IP, "bad.example", "default")
    feed_invalid_traffic(loop, UNALIGNED_2023 + 250_000, 150, 1000, IP, "good.example", "default")
    keys = {(s.key, s.mode) for s in loop.published}
    assert ("domain:bad.example", "suspended") in keys
    assert not any(k.startswith("ip_group:") or k == "domain:good.example" for k, _ in keys)
    # A named group's IP key is judged as before.
    google = Loop()
    feed_invalid_traffic(google, UNALIGNED_2023, 300, 5, IP)
    assert ("ip_group:192.0.2.20|google", "suspended") in {
        (s.key, s.mode) for s in google.published
    }


def test_noisy_signal_at_threshold_does_not_flap():
    loop = Loop()
    rng = random.Random(7)
    hours = 24
    for second in range(0, hours * 3600, 5):
        now = UNALIGNED_2023 + second * 1000
        roll = rng.random()
        if roll < 0.031:  # hovering around the 3 % invalid-recipient threshold
            loop.feed(signal(now, "hard", q=USER_UNKNOWN_Q))
        elif roll < 0.032:
            loop.feed(rate_limited(now))
        else:
            loop.feed(signal(now))
        if second % 60 == 0:
            loop.tick(now)
    changes = loop.of("group:google")
    adjust = GOOGLE.adjust_interval_s * 1000
    assert 0 < len(changes) <= hours * 3600 * 1000 // adjust + 1
    for a, b in itertools.pairwise(changes):
        if b.mode != "suspended":
            assert b.changed_at - a.changed_at >= adjust


def test_a_rate_limit_naming_an_ip_lowers_that_ip_alone():
    loop = Loop()
    other = "192.0.2.21"
    for i in range(20):
        loop.feed(rate_limited(UNALIGNED_2023 + i * 3000, ip=IP))
    lowered = loop.of(f"ip_group:{IP}|google")
    assert [s.max_rate_per_hour for s in lowered] == [GOOGLE.max_rate_per_hour.baseline // 2]
    assert lowered[0].mode == "backoff" and "rate-limit reply" in lowered[0].reason
    assert loop.of("group:google") == [] and loop.of(f"ip_group:{other}|google") == []
    # A small domain's IP key adds up every small domain: its own domain key takes it.
    loop.feed(rate_limited(UNALIGNED_2023, "small.example", "default", ip=IP))
    assert [s.mode for s in loop.of("domain:small.example")] == ["backoff"]
    assert loop.of(f"ip_group:{IP}|default") == []


def test_automation_set_limit_holds_then_recovers():
    loop = Loop()
    ip = "198.51.100.7"
    reply = "550 5.7.1 Unfortunately, messages from 198.51.100.7 weren't sent."
    out = loop.feed(signal(UNALIGNED_2023, "block", "outlook.com", "microsoft", ip, reply))
    by_key = {s.key: s for s in out}
    ip_key = f"ip_group:{ip}|microsoft"
    held = by_key[ip_key]
    assert (held.max_rate_per_hour, held.max_connections) == (300, 1)
    assert "microsoft-ip-reputation" in held.reason
    # The block names the IP: the IP's key takes it, the other IPs keep the group's limits.
    assert "group:microsoft" not in by_key
    # Held for 90 min: no increase before, steps after (clean sending goes on).
    for minute in range(1, 90):
        loop.feed(
            signal(UNALIGNED_2023 + minute * MINUTE, "delivered", "outlook.com", "microsoft", ip)
        )
        loop.tick(UNALIGNED_2023 + minute * MINUTE)
    assert loop.of(ip_key) == [held]
    loop.tick(UNALIGNED_2023 + 90 * MINUTE)
    assert loop.of(ip_key)[-1].max_rate_per_hour > 300


def test_yahoo_tss04_shipped_rule_suspends_the_ip():
    loop = Loop()
    reply = "421 4.7.0 [TSS04] Messages from 192.0.2.20 temporarily deferred"
    q = Qualification("soft", "Refused", 20, "yahoo-tss04", rate_limit=True)
    out = loop.feed(signal(UNALIGNED_2023, "rate_limit", "yahoo.com", "yahoo", IP, reply, q))
    modes = {s.key: s.mode for s in out}
    assert modes == {f"ip_group:{IP}|yahoo": "suspended"}


def test_warmup_caps_new_ip_by_day():
    ctl = ThrottleController(RULES, warmup_ips={IP: UNALIGNED_2023})
    loop = Loop(ctl)
    out = loop.feed(signal(UNALIGNED_2023 + 1000, ip=IP))
    assert [(s.key, s.mode, s.max_rate_per_hour) for s in out] == [
        (f"ip_group:{IP}|google", "warmup", 50)
    ]
    assert [s.max_rate_per_hour for s in loop.tick(UNALIGNED_2023 + 86_400_000)] == [100]
    assert loop.tick(UNALIGNED_2023 + 86_400_000 + MINUTE) == []
    day21 = loop.tick(UNALIGNED_2023 + 20 * 86_400_000)
    assert [(s.mode, s.max_rate_per_hour) for s in day21] == [("warmup", 20000)]
    # Past the schedule, AIMD takes over from the baseline (no growth hidden during warm-up,
    # and none earned by an idle key).
    last = loop.tick(UNALIGNED_2023 + 30 * 86_400_000)
    assert [(s.mode, s.max_rate_per_hour) for s in last] == [("normal", 36000)]


def test_settings_off_baseline_and_state_round_trip():
    loop = Loop()
    burst(loop)
    burst(loop, domain="yahoo.com", group="yahoo")
    assert {s.key for s in loop.ctl.settings_off_baseline()} == {"group:google", "group:yahoo"}
    state = loop.ctl.state("group:google")
    copy = KeyState.from_dict(state.to_dict())
    assert copy == state
    fresh = ThrottleController(RULES)
    fresh.restore(copy)
    assert fresh.setting("group:google") == loop.ctl.setting("group:google")
    # Restored state keeps versions and anti-flapping going.
    later = fresh.on_signal(rate_limited(UNALIGNED_2023 + GOOGLE.adjust_interval_s * 1000))
    assert [(s.version, s.max_rate_per_hour) for s in later] == [(2, 9000)]


OUTCOMES = ["delivered", "hard", "soft", "block", "rate_limit", "complaint", "attempt"]
REPLIES = [
    None,
    RATE_LIMIT_REPLY,
    "421 4.7.0 [TSS04] Messages from 192.0.2.20 temporarily deferred",
    "550 5.7.1 Unfortunately, messages from 192.0.2.20 weren't sent.",
]
TARGETS = [
    ("gmail.com", "google"),
    ("yahoo.com", "yahoo"),
    ("outlook.com", "microsoft"),
    ("small.example", "default"),
]
steps = st.lists(
    st.tuples(
        st.integers(0, 900_000),  # ms since the previous step
        st.sampled_from(OUTCOMES),
        st.sampled_from(TARGETS),
        st.sampled_from([None, IP, "198.51.100.1"]),
        st.sampled_from(REPLIES),
        st.booleans(),  # tick after the signal
    ),
    max_size=250,
)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_bounds_versions_and_publish_on_change_hold(sequence):
    loop = Loop()
    now = UNALIGNED_2023
    for gap, outcome, (domain, group), ip, reply, tick in sequence:
        now += gap
        loop.feed(signal(now, outcome, domain, group, ip, reply))
        if tick:
            loop.tick(now)
    last = {}
    for s in loop.published:
        g = RULES.group(s.key.rsplit("|", 1)[1] if "|" in s.key else s.key.split(":")[1])
        if s.scope == "domain":
            g = RULES.group("default")
        assert g.max_rate_per_hour.min <= s.max_rate_per_hour <= g.max_rate_per_hour.max
        assert g.max_connections.min <= s.max_connections <= g.max_connections.max
        limit = g.max_messages_per_connection
        assert limit.min <= s.max_messages_per_connection <= limit.max
        assert (s.mode == "suspended") == (s.suspended_until is not None)
        prev = last.get(s.key)
        if prev is None:
            assert s.version == 1
        else:
            assert s.version == prev.version + 1
            assert s.changed_at >= prev.changed_at
            content = ("mode", "max_rate_per_hour", "max_connections", "suspended_until")
            keys = (*content, "max_messages_per_connection", "retry_interval_s")
            assert any(getattr(s, k) != getattr(prev, k) for k in keys)
        last[s.key] = s


def test_an_idle_key_does_not_climb_and_needs_no_ticks():
    loop = Loop()
    burst(loop)
    end = UNALIGNED_2023 + 19 * 3000
    # Overnight with no traffic: nothing shows that a higher limit would be safe.
    assert loop.ctl.next_due(end + 1) is None
    for hour in range(1, 24):
        loop.tick(end + hour * 3_600_000)
    assert [s.max_rate_per_hour for s in loop.of("group:google")] == [18000]


def test_a_short_burst_earns_no_climb_but_sustained_clean_sending_does():
    loop = Loop()
    burst(loop)
    start = UNALIGNED_2023 + MINUTE
    active = GOOGLE.quiet_interval_s // 60 // 2  # minutes with deliveries a climb needs
    for minute in range(active - 1):  # one minute short, spread over two days
        loop.feed(signal(start + minute * 2 * 3_600_000))
        loop.tick(start + minute * 2 * 3_600_000 + 1)
    assert len(loop.of("group:google")) == 1
    later = start + active * 2 * 3_600_000
    loop.feed(signal(later))
    up = loop.tick(later + 1)
    assert [s.max_rate_per_hour for s in up] == [18000 + 3600]
    assert "healthy for 30 min" in up[0].reason
    # The evidence starts over with each change.
    loop.feed(signal(later + GOOGLE.quiet_interval_s * 1000))
    assert loop.tick(later + GOOGLE.quiet_interval_s * 1000 + 1) == []


def test_state_stored_by_the_previous_version_loads():
    loop = Loop()
    burst(loop)
    old = loop.ctl.state("group:google").to_dict()
    del old["active_minutes"], old["active_minute"]
    restored = KeyState.from_dict(old)
    assert (restored.active_minutes, restored.active_minute) == (0, None)
    assert restored.max_rate_per_hour == 18000
