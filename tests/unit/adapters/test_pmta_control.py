"""Throttle settings → PowerMTA commands and configuration fragment (pure renderer)."""

import random
import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters import pmta_control as pc
from streams.domain.control.mx_rules import MxRules, load_mx_rules

RULES = load_mx_rules()
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
HEADER = pc.HEADER


def setting(key, mode="normal", rate=None, conns=None, msgs=None, *, v=1, until=None, reason="r"):
    scope = key.split(":", 1)[0]
    group = RULES.group(
        key.split("|")[1] if scope == "ip_group" else key.split(":")[1] if scope == "group" else ""
    )
    return pc.Setting(
        key=key,
        scope=scope,
        mode=mode,
        max_rate_per_hour=rate or group.max_rate_per_hour.baseline,
        max_connections=conns or group.max_connections.baseline,
        max_messages_per_connection=msgs or group.max_messages_per_connection.baseline,
        retry_interval_s=900,
        suspended_until=until,
        reason=reason,
        version=v,
        event_time=T0,
    )


def commands(applied, settings_, vmtas=None, now=T0):
    desired, _ = pc.desired_queues(settings_, RULES, vmtas or {}, now)
    cmds = pc.plan(applied, desired)
    for c in cmds:
        pc.apply_effect(applied, c)
    return [" ".join(c.args) for c in cmds]


def block(domain, *lines):
    return [f"<domain {domain}>", *(f"    {line}" for line in lines), "</domain>"]


def fragment(*blocks):
    return "\n".join([HEADER.rstrip("\n"), *(line for b in blocks for line in b)]) + "\n"


GOOGLE_LIMITS = (
    "max-msg-rate {r}/h",
    "backoff-max-msg-rate {r}/h",
    "max-smtp-out {c}",
    "backoff-max-smtp-out {c}",
    "max-msg-per-connection {m}",
)


def limits(r, c, m):
    return [line.format(r=r, c=c, m=m) for line in GOOGLE_LIMITS]


def test_normal_backoff_suspended_normal_for_a_group():
    applied = {}
    first = setting("group:google")
    assert commands(applied, [first]) == [
        "set queue --mode=normal gmail.com/*",
        "resume queue gmail.com/*",
        "set queue --mode=normal googlemail.com/*",
        "resume queue googlemail.com/*",
    ]
    assert pc.render_fragment([first], RULES) == HEADER  # at baseline: PowerMTA's own config

    backoff = setting("group:google", "backoff", 18000, 10, 25, v=2, reason="rate limited")
    assert commands(applied, [backoff]) == [
        "set queue --mode=backoff gmail.com/*",
        "set queue --mode=backoff googlemail.com/*",
    ]
    note = "# group:google v2 backoff: rate limited"
    assert pc.render_fragment([backoff], RULES) == fragment(
        block("gmail.com", note, *limits(18000, 10, 25)),
        block("googlemail.com", note, *limits(18000, 10, 25)),
    )

    until = T0 + 4 * HOUR
    suspended = setting("group:google", "suspended", 9000, 5, 12, v=3, until=until, reason="s")
    assert commands(applied, [suspended]) == [
        "pause queue gmail.com/*",
        "pause queue googlemail.com/*",
    ]
    assert "max-msg-rate 9000/h" in pc.render_fragment([suspended], RULES)

    normal = setting("group:google", v=4, reason="quiet")
    assert commands(applied, [normal]) == [
        "set queue --mode=normal gmail.com/*",
        "resume queue gmail.com/*",
        "set queue --mode=normal googlemail.com/*",
        "resume queue googlemail.com/*",
    ]
    assert pc.render_fragment([normal], RULES) == HEADER
    assert commands(applied, [normal]) == []  # nothing left to do


def test_a_suspension_ends_on_time_and_the_mode_waits_for_the_next_setting():
    until = T0 + HOUR
    s = setting("domain:example.org", "suspended", 1800, 5, 50, until=until)
    applied = {}
    assert commands(applied, [s], now=T0) == ["pause queue example.org/*"]
    assert pc.next_expiry([s], T0) == until
    assert commands(applied, [s], now=until - 1) == []
    assert commands(applied, [s], now=until) == ["resume queue example.org/*"]
    assert pc.next_expiry([s], until) is None
    after = setting("domain:example.org", "backoff", 1800, 5, 50, v=2)
    assert commands(applied, [after], now=until) == ["set queue --mode=backoff example.org/*"]


def test_a_suspension_without_end_lasts_until_a_later_setting():
    s = setting("domain:example.org", "suspended", 1800, 5, 50)
    assert pc.next_expiry([s], T0) is None
    applied = {}
    assert commands(applied, [s], now=T0 + 1000 * HOUR) == ["pause queue example.org/*"]


def test_a_group_with_several_domains_leaves_out_its_wildcard_patterns():
    s = setting("group:yahoo", "backoff", 9000, 5, 10)
    domains = ("aim.com", "aol.com", "rocketmail.com", "ymail.com")
    assert commands({}, [s]) == [
        line for d in domains for line in (f"set queue --mode=backoff {d}/*", f"resume queue {d}/*")
    ]
    text = pc.render_fragment([s], RULES)
    assert re.findall(r"<domain (\S+)>", text) == [
        "aim.com",
        "aol.com",
        "rocketmail.com",
        "ymail.com",
    ]
    assert "*" not in text.replace("<domain *", "")
    line = pc.json_line(s, RULES)
    assert line["domains"] == ["aim.com", "aol.com", "rocketmail.com", "ymail.com"]
    assert line["patterns"] == ["yahoo.*", "aol.*"]


def test_a_group_whose_domains_are_all_patterns_reaches_nothing_and_says_so():
    wild = replace(RULES.groups["yahoo"], name="wild", domains=("wild.*",))
    rules = MxRules({**RULES.groups, "wild": wild}, [])
    s = pc.Setting("group:wild", "group", "suspended", 300, 1, 5, 900, None, "r", 1, T0)
    desired, notes = pc.desired_queues([s], rules, {}, T0)
    assert desired == {}
    assert notes == ["group:wild: group wild has no real domain to control"]


def test_ip_group_keys_reach_their_virtual_mta_and_never_undo_the_group():
    ip_key = setting("ip_group:192.0.2.1|google", "warmup", 50, 2)
    group = setting("group:google", "suspended", 9000, 5, 12, until=T0 + HOUR)
    vmtas = {"192.0.2.1": "vmta-1"}
    assert commands({}, [ip_key], vmtas) == [
        "set queue --mode=normal gmail.com/vmta-1",
        "resume queue gmail.com/vmta-1",
        "set queue --mode=normal googlemail.com/vmta-1",
        "resume queue googlemail.com/vmta-1",
    ]
    # The group's suspension holds the IP's queues too: they are not resumed under it.
    assert commands({}, [ip_key, group], vmtas) == [
        "pause queue gmail.com/*",
        "set queue --mode=normal gmail.com/vmta-1",
        "pause queue gmail.com/vmta-1",
        "pause queue googlemail.com/*",
        "set queue --mode=normal googlemail.com/vmta-1",
        "pause queue googlemail.com/vmta-1",
    ]
    text = pc.render_fragment([ip_key], RULES)
    assert text == fragment(
        block(
            "gmail.com",
            "# ip_group:192.0.2.1|google v1 warmup: r",
            "source-ip-max-msg-rate 192.0.2.1/32 50/h",
            "source-ip-max-smtp-out 192.0.2.1/32 2",
        ),
        block(
            "googlemail.com",
            "# ip_group:192.0.2.1|google v1 warmup: r",
            "source-ip-max-msg-rate 192.0.2.1/32 50/h",
            "source-ip-max-smtp-out 192.0.2.1/32 2",
        ),
    )


def test_a_command_on_every_virtual_mta_is_followed_by_each_ones_own():
    ip_key = setting("ip_group:192.0.2.1|google", "backoff", 9000, 5)
    vmtas = {"192.0.2.1": "vmta-1"}
    applied = {}
    commands(applied, [ip_key], vmtas)
    group = setting("group:google", "normal", 30000)
    # gmail.com/* set to normal reaches vmta-1's queue, which is set back to backoff.
    assert commands(applied, [ip_key, group], vmtas)[:3] == [
        "set queue --mode=normal gmail.com/*",
        "resume queue gmail.com/*",
        "set queue --mode=backoff gmail.com/vmta-1",
    ]


def test_an_ip_without_a_virtual_mta_gets_limits_but_no_command():
    ip_key = setting("ip_group:2001:db8::1|google", "suspended", 600, 1, until=T0 + HOUR)
    desired, notes = pc.desired_queues([ip_key], RULES, {}, T0)
    assert desired == {}
    assert notes == ["ip_group:2001:db8::1|google: no virtual MTA mapped to 2001:db8::1"]
    assert "source-ip-max-msg-rate 2001:db8::1/128 600/h" in pc.render_fragment([ip_key], RULES)


def test_the_default_group_and_bad_keys_reach_no_queue():
    default_ip = setting("ip_group:192.0.2.9|default", "warmup", 50)
    bad = pc.Setting("domain:bad domain>", "domain", "suspended", 60, 1, 10, 900, None, "r", 1, T0)
    wild = pc.Setting("domain:*.example", "domain", "backoff", 60, 1, 10, 900, None, "r", 1, T0)
    desired, notes = pc.desired_queues([default_ip, bad, wild], RULES, {"192.0.2.9": "v"}, T0)
    assert desired == {}
    assert notes == [
        "ip_group:192.0.2.9|default: group default has no real domain to control",
        "domain:bad domain>: key names no valid domain",
        "domain:*.example: key names no valid domain",
    ]
    assert pc.render_fragment([default_ip, bad, wild], RULES) == HEADER


def test_several_keys_on_one_queue_the_most_restrictive_wins():
    a = setting("ip_group:192.0.2.1|google", "backoff", 9000, 5, 20)
    b = setting("ip_group:192.0.2.2|google", "suspended", 18000, 3, 40, until=T0 + HOUR)
    vmtas = {"192.0.2.1": "pool", "192.0.2.2": "pool"}
    desired, _ = pc.desired_queues([a, b], RULES, vmtas, T0)
    assert desired[pc.Queue("gmail.com", "pool")] == pc.QueueState(True, "backoff")
    # Overlapping group and domain keys on one domain: the lower of each limit.
    rules = load_mx_rules()
    g = setting("group:google", "backoff", 9000, 30, 40)
    d = setting("domain:gmail.com", "backoff", 18000, 10, 60)
    text = pc.render_fragment([g, d], rules)
    assert "max-msg-rate 9000/h" in text and "max-smtp-out 10" in text
    assert "max-msg-per-connection 40" in text


def test_no_value_is_ever_above_the_groups_maximum():
    s = setting("group:google", "normal", 10**9, 10**6, 10**6)
    text = pc.render_fragment([s], RULES)
    assert re.findall(r"^    max-msg-rate (\S+)$", text, re.M) == ["72000/h", "72000/h"]
    line = pc.json_line(s, RULES)
    assert (line["max_rate_per_hour"], line["max_connections"]) == (72000, 40)
    assert line["max_messages_per_connection"] == 100


def test_a_failed_command_is_planned_again():
    s = setting("domain:example.org", "suspended", 60, 1, 10)
    desired, _ = pc.desired_queues([s], RULES, {}, T0)
    applied = {}
    first = pc.plan(applied, desired)
    assert [c.args for c in first] == [("pause", "queue", "example.org/*")]
    assert pc.plan(applied, desired) == first  # not applied: asked again
    pc.apply_effect(applied, first[0])
    assert pc.plan(applied, desired) == []


def test_the_output_does_not_depend_on_the_order_of_the_settings():
    keys = [
        setting("group:google", "backoff", 18000, 10, 25),
        setting("group:yahoo", "suspended", 9000, 5, 10, until=T0 + HOUR),
        setting("domain:example.org", "backoff", 60, 1, 10),
        setting("ip_group:192.0.2.1|google", "warmup", 50, 2),
        setting("ip_group:192.0.2.2|yahoo", "backoff", 300, 1),
    ]
    vmtas = {"192.0.2.1": "a", "192.0.2.2": "b"}
    expected = (pc.render_fragment(keys, RULES), commands({}, keys, vmtas))
    for seed in range(5):
        shuffled = random.Random(seed).sample(keys, len(keys))
        assert (pc.render_fragment(shuffled, RULES), commands({}, shuffled, vmtas)) == expected


def test_a_reason_cannot_break_the_fragment():
    s = setting("group:google", "backoff", 600, reason="x\n</domain>\n<domain evil.example>\r#")
    text = pc.render_fragment([s], RULES)
    assert set(parse_fragment(text)) == {"gmail.com", "googlemail.com"}
    assert "    # group:google v1 backoff: x </domain> <domain evil.example> #\n" in text


def test_json_line_has_iso_times_and_every_field():
    s = setting("group:apple", "suspended", 120, 1, 1, v=7, until=T0 + HOUR, reason="complaints")
    assert pc.json_line(s, RULES) == {
        "key": "group:apple",
        "scope": "group",
        "group": "apple",
        "ip": None,
        "domains": ["icloud.com", "mac.com", "me.com"],
        "patterns": [],
        "mode": "suspended",
        "max_rate_per_hour": 120,
        "max_connections": 1,
        "max_messages_per_connection": 1,
        "retry_interval_s": 900,
        "suspended_until": "2026-01-01T01:00:00.000Z",
        "reason": "complaints",
        "version": 7,
        "event_time": "2026-01-01T00:00:00.000Z",
    }


RECORD = {
    "event_id": "group:google:3",
    "event_time": T0,
    "key": "group:google",
    "scope": "group",
    "mode": "backoff",
    "max_rate_per_hour": 600,
    "max_connections": 2,
    "max_messages_per_connection": 10,
    "retry_interval_s": 900,
    "suspended_until": None,
    "reason": "r",
    "version": 3,
}


def test_from_record_takes_a_decoded_record():
    s = pc.Setting.from_record(RECORD)
    assert (s.key, s.mode, s.max_rate_per_hour, s.version) == ("group:google", "backoff", 600, 3)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"scope": "tenant"}, "unknown scope 'tenant'"),
        ({"key": "domain:gmail.com"}, "key does not start with its scope group:"),
        ({"mode": "paused"}, "unknown mode 'paused'"),
        ({"max_connections": 0}, "max_connections must be a positive integer, got 0"),
        ({"version": True}, "version must be a positive integer, got True"),
        ({"suspended_until": "soon"}, "suspended_until must be epoch ms or null, got 'soon'"),
        ({"reason": None}, "reason must be a string"),
    ],
)
def test_from_record_refuses_what_it_cannot_use(change, reason):
    with pytest.raises(pc.SettingError) as exc:
        pc.Setting.from_record({**RECORD, **change})
    assert str(exc.value) == reason


def test_from_record_names_a_missing_field():
    record = dict(RECORD)
    del record["mode"]
    with pytest.raises(pc.SettingError, match="field mode is missing"):
        pc.Setting.from_record(record)


def test_vmta_map_from_option_or_file_text():
    text = "192.0.2.1=vmta-a, 192.0.2.2=vmta.b\n# comment\n2001:DB8::1=v6  # trailing\n"
    assert pc.parse_vmta_map(text) == {
        "192.0.2.1": "vmta-a",
        "192.0.2.2": "vmta.b",
        "2001:db8::1": "v6",
    }
    for bad in ("192.0.2.1", "192.0.2.1=", "host=v", "192.0.2.1=a/b"):
        with pytest.raises(ValueError, match=re.escape(bad.split("=")[0])):
            pc.parse_vmta_map(bad)


# --- property: the fragment says exactly what the settings say --------------------------


def parse_fragment(text):
    """A tiny PowerMTA-like reader: <domain NAME> blocks of `directive args`, # comments."""
    blocks, current = {}, None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if m := re.fullmatch(r"<domain ([^>\s]+)>", line):
            assert current is None
            current = blocks.setdefault(m.group(1), {})
        elif line == "</domain>":
            current = None
        else:
            name, *args = line.split()
            assert current is not None
            current[(name, *args[:-1])] = args[-1]
    assert current is None
    return blocks


GROUP_NAMES = sorted(n for n in RULES.groups if n != "default")
limit_values = st.tuples(
    st.integers(1, 100_000), st.integers(1, 100), st.integers(1, 1000)
)  # fmt: skip


@st.composite
def settings_sets(draw):
    chosen = []
    for i, name in enumerate(draw(st.lists(st.sampled_from(GROUP_NAMES), unique=True))):
        r, c, m = draw(limit_values)
        chosen.append(
            pc.Setting(f"group:{name}", "group", "backoff", r, c, m, 900, None, "", i + 1, T0)
        )
    for i in range(draw(st.integers(0, 3))):
        r, c, m = draw(limit_values)
        key = f"domain:d{i}.example"
        chosen.append(pc.Setting(key, "domain", "backoff", r, c, m, 900, None, "", 1, T0))
    for i in range(draw(st.integers(0, 3))):
        r, c, m = draw(limit_values)
        key = f"ip_group:192.0.2.{i}|{draw(st.sampled_from(GROUP_NAMES))}"
        chosen.append(pc.Setting(key, "ip_group", "warmup", r, c, m, 900, None, "", 1, T0))
    return chosen


@settings(max_examples=200, deadline=None)
@given(settings_sets())
def test_every_fragment_reads_back_as_the_settings_values(chosen):
    parsed = parse_fragment(pc.render_fragment(chosen, RULES))
    expected = {}
    for s in chosen:
        target = pc.target_of(s, RULES)
        if not pc.off_baseline(s, RULES, target.group):
            continue
        lim = pc.capped(s, RULES, target.group)
        r, c, m = (lim[n] for n in pc.LIMITS)
        for domain in target.domains:
            block_ = expected.setdefault(domain, {})
            if target.ip is None:
                block_.update({
                    ("max-msg-rate",): f"{r}/h", ("backoff-max-msg-rate",): f"{r}/h",
                    ("max-smtp-out",): str(c), ("backoff-max-smtp-out",): str(c),
                    ("max-msg-per-connection",): str(m),
                })  # fmt: skip
            else:
                cidr = f"{target.ip}/32"
                block_[("source-ip-max-msg-rate", cidr)] = f"{r}/h"
                block_[("source-ip-max-smtp-out", cidr)] = str(c)
    assert parsed == expected
    # Every number written is the setting's own, or the group's maximum above it.
    for s in chosen:
        g = RULES.group(pc.target_of(s, RULES).group)
        assert pc.capped(s, RULES, g.name)["max_rate_per_hour"] == min(
            s.max_rate_per_hour, g.max_rate_per_hour.max
        )
