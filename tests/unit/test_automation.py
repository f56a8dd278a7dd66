import pytest
from factories import UNALIGNED_2023

from streams.domain.control.automation import (
    AutomationError,
    ShapingWarning,
    TriggerCounter,
    load_kumo_shaping,
    parse_duration,
    parse_rate,
    parse_rule,
)
from streams.domain.control.mx_rules import load_mx_rules
from streams.domain.control.reputation import Signal
from streams.domain.control.throttle_controller import ThrottleController

RULES = load_mx_rules()
IP = "192.0.2.10"

KUMO_SAMPLE = r"""
["default"]
connection_limit = 10
max_message_rate = "100/s"

[["default".automation]]
regex = [
    '''Messages from \d+\.\d+\.\d+\.\d+ temporarily deferred''',
    '''has been temporarily rate limited due to IP reputation''',
]
action = [
    {SetConfig={name="max_message_rate", value="1/minute"}},
    {SetConfig={name="connection_limit", value=1}},
]
duration = "90m"

[provider."google"]
match = [{MXSuffix=".google.com"}, {MXSuffix=".googlemail.com"}]
max_deliveries_per_connection = 50

[[provider."google".automation]]
regex = "4\\.7\\.28"
action = {SetConfig={name="max_message_rate", value="1,000/h"}}
trigger = {Threshold="5/hr"}
duration = "2 hours"

[provider."yahoo"]
match = [{MXSuffix=".yahoodns.net"}]

[[provider."yahoo".automation]]
regex = "\\[TS?S04\\]"
action = "Suspend"
duration = "2 hours"

[["gmail.com".automation]]
regex = "This message does not have authentication information"
action = "SuspendTenant"
duration = "3 hours"

["comcast.net"]
connection_limit = 25

[["comcast.net".automation]]
regex = "RL0000"
action = [
    {SetDomainConfig={name="connection_limit", value=2}},
    {SetConfig={name="enable_tls", value="Disabled"}},
]
trigger = {Threshold="2/hr"}
duration = "2 hours"
"""


def load_sample(**kwargs):
    with pytest.warns(ShapingWarning) as caught:
        rules = load_kumo_shaping(KUMO_SAMPLE, **kwargs)
    messages = " | ".join(str(w.message) for w in caught)
    assert "SuspendTenant is not supported" in messages
    assert "SetConfig enable_tls has no equivalent" in messages
    assert "gmail.com.automation[0]: no supported action, rule dropped" in messages
    return rules


def test_kumo_sample_parses_with_mapping():
    rules = load_sample(group_of=RULES.group_for)
    by_source = {r.name.split(": ", 1)[1]: r for r in rules}
    assert set(by_source) == {
        "default.automation[0]",
        "provider.google.automation[0]",
        "provider.yahoo.automation[0]",
        "comcast.net.automation[0]",
    }
    default = by_source["default.automation[0]"]
    assert default.groups is None and default.domains is None
    assert default.scope == "ip_group" and default.duration_s == 5400
    assert [(a.kind, a.limits) for a in default.actions] == [
        ("set_limit", (("max_rate_per_hour", 60), ("max_connections", 1)))
    ]
    google = by_source["provider.google.automation[0]"]
    assert google.groups == frozenset({"google"})
    assert (google.trigger_count, google.trigger_period_s, google.duration_s) == (5, 3600, 7200)
    assert google.actions[0].limits == (("max_rate_per_hour", 1000),)
    yahoo = by_source["provider.yahoo.automation[0]"]
    assert yahoo.actions[0].kind == "suspend" and yahoo.trigger_count == 1
    assert yahoo.matches(
        "421 4.7.0 [TSS04] Messages from 192.0.2.10 deferred", "ymail.com", "yahoo"
    )
    assert not yahoo.matches("421 4.7.0 [TSS04]", "gmail.com", "google")
    comcast = by_source["comcast.net.automation[0]"]
    # mx_rollup: the domain block covers its provider group; SetDomainConfig is domain-wide.
    assert comcast.groups == frozenset({"comcast"}) and comcast.scope == "group"
    assert comcast.actions[0].limits == (("max_connections", 2),)


def test_kumo_domain_block_without_group_lookup_matches_that_domain_only():
    rules = load_sample()
    comcast = next(r for r in rules if "comcast.net" in r.name)
    assert comcast.domains == frozenset({"comcast.net"}) and comcast.groups is None


def test_kumo_file_path(tmp_path):
    path = tmp_path / "shaping.toml"
    path.write_text(KUMO_SAMPLE)
    with pytest.warns(ShapingWarning):
        assert len(load_kumo_shaping(path)) == 4
    with pytest.warns(ShapingWarning):
        assert len(load_kumo_shaping(str(path))) == 4


def soft_signal(t, reply, domain="gmail.com", group="google", ip=IP):
    return Signal(t, f"e{t}", domain, group, ip, "soft", True, reply)


def test_kumo_threshold_rule_triggers_on_fifth_match_within_an_hour():
    with pytest.warns(ShapingWarning):
        kumo = load_kumo_shaping(KUMO_SAMPLE)
    ctl = ThrottleController(RULES, kumo)
    reply = "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail"
    minute = 60_000
    # Matches at 0, 20, 30, 40 and 70 min: never five within one hour.
    for t in (0, 20, 30, 40, 70):
        assert ctl.on_signal(soft_signal(UNALIGNED_2023 + t * minute, reply)) == []
    # At 75 min, five fall within the last hour (20, 30, 40, 70, 75).
    fired = ctl.on_signal(soft_signal(UNALIGNED_2023 + 75 * minute, reply))
    assert [(s.key, s.max_rate_per_hour, s.mode) for s in fired] == [
        (f"ip_group:{IP}|google", 1000, "backoff")
    ]
    assert "provider.google.automation[0]" in fired[0].reason
    assert ctl.setting("group:google") is None  # only the IP x group key moved


def test_kumo_yahoo_suspend_is_immediate_and_scoped_to_ip():
    with pytest.warns(ShapingWarning):
        kumo = load_kumo_shaping(KUMO_SAMPLE)
    ctl = ThrottleController(RULES, kumo)
    reply = "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred"
    out = ctl.on_signal(soft_signal(UNALIGNED_2023, reply, "yahoo.com", "yahoo"))
    yahoo = [s for s in out if s.mode == "suspended"]
    assert len(yahoo) == 1
    assert yahoo[0].key == f"ip_group:{IP}|yahoo"
    assert yahoo[0].suspended_until == UNALIGNED_2023 + 2 * 3600_000


def test_kumo_rule_without_ip_falls_back_to_group_key():
    with pytest.warns(ShapingWarning):
        kumo = load_kumo_shaping(KUMO_SAMPLE)
    ctl = ThrottleController(RULES, kumo)
    reply = "421 4.7.0 [TSS04] deferred"
    out = ctl.on_signal(soft_signal(UNALIGNED_2023, reply, "yahoo.com", "yahoo", ip=None))
    assert [(s.key, s.mode) for s in out] == [("group:yahoo", "suspended")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[x]\nautomation = 3", "x: automation must be an array"),
        (
            '[[provider."y".automation]]\nregex = "("\naction = "Suspend"\nduration = "1h"',
            "provider.y.automation[0]: invalid regex",
        ),
        (
            '[["a.com".automation]]\nregex = "x"\naction = "Explode"\nduration = "1h"',
            "a.com.automation[0]: unknown action 'Explode'",
        ),
        (
            '[["a.com".automation]]\nregex = "x"\naction = "Suspend"\nduration = "soon"',
            "a.com.automation[0]: invalid duration 'soon'",
        ),
        (
            '[["a.com".automation]]\nregex = "x"\naction = "Suspend"',
            "a.com.automation[0]: 'duration' is required",
        ),
        (
            '[["a.com".automation]]\nregex = "x"\naction = "Suspend"\nduration = "1h"\n'
            'trigger = {Threshold="5/fortnight"}',
            "a.com.automation[0]: invalid duration 'fortnight'",
        ),
        (
            '[["a.com".automation]]\nregex = "x"\nduration = "1h"\n'
            'action = {SetConfig={name="connection_limit", value="many"}}',
            "connection_limit must be an integer",
        ),
        ('["a.com"\nx=1', "invalid shaping file"),
    ],
)
def test_malformed_kumo_rules_raise_with_location(text, expected):
    with pytest.raises(AutomationError) as err:
        load_kumo_shaping(text + "\n")
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("3 hours", 10800), ("1h", 3600), ("1h 30m", 5400), ("30 days", 2592000)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(seconds) == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/hr", (10, 3600)),
        ("5/h", (5, 3600)),
        ("1/minute", (1, 60)),
        ("100/s", (100, 1)),
        ("2/d", (2, 86400)),
        ("1,000/h", (1000, 3600)),
        ("local:3/m", (3, 60)),
        ("5/10m", (5, 600)),
    ],
)
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["5", "0/h", "x/h", "5/"])
def test_parse_rate_rejects(text):
    with pytest.raises(AutomationError):
        parse_rate(text)


def test_our_format_rule_and_errors():
    rule = parse_rule(
        {
            "name": "r1",
            "regex": ["a+", "b"],
            "trigger": "3/10m",
            "action": "set_limit",
            "limits": {"max_connections": 2},
            "duration": 600,
            "scope": "ip_group",
            "domains": ["Example.COM"],
        },
        "ops.toml",
    )
    assert (rule.trigger_count, rule.trigger_period_s, rule.duration_s) == (3, 600, 600)
    assert rule.domains == frozenset({"example.com"}) and rule.groups is None
    assert rule.matches("xxaaa", "example.com", "default")
    assert not rule.matches("xxaaa", "other.com", "default")
    bad = {"name": "r2", "regex": "x", "action": "set_limit", "duration": "1h"}
    with pytest.raises(AutomationError, match=r"ops.toml: automation rule 'r2': set_limit needs"):
        parse_rule(bad, "ops.toml")
    with pytest.raises(AutomationError, match="unknown keys"):
        parse_rule({**bad, "action": "suspend", "colour": "red"}, "ops.toml")


def test_trigger_counter_sliding_window_and_round_trip():
    rule = parse_rule(
        {"name": "t", "regex": "x", "trigger": "3/1m", "action": "suspend", "duration": "1h"}, "f"
    )
    counter = TriggerCounter()
    assert not counter.hit(rule, 0)
    assert not counter.hit(rule, 30_000)
    copy = TriggerCounter.from_dict(counter.to_dict())
    assert copy.hit(rule, 59_000)  # third within a minute fires ...
    assert not copy.hit(rule, 59_500)  # ... and the count restarts
    assert not counter.hit(rule, 61_000)  # the hit at 0 slid out: 2 in the window
