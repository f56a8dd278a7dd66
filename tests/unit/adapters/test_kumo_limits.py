"""An operator's KumoMTA shaping file as limits: KumoMTA's value syntaxes (its throttle crate),
kumod's precedence of tables, and a clear error for anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.kumo_limits import (
    Cap,
    KumoShapingError,
    OperatorShaping,
    parse_limit,
    parse_rate,
)
from streams.domain.control.mx_rules import load_mx_rules

RULES = load_mx_rules(None)


def _shaping(text: str) -> OperatorShaping:
    return OperatorShaping(text, "shaping.toml", RULES.group_for)


@pytest.mark.parametrize(
    ("spec", "per_hour", "local"),
    [
        ("600/h", 600, False),
        ("600/hr", 600, False),
        ("10/s", 36_000, False),
        ("10/sec", 36_000, False),
        ("1/minute", 60, False),
        ("24/day", 1, False),
        ("1,000/5m", 12_000, False),
        ("1_000/h", 1000, False),
        ("local:2/s", 7200, True),
        ("100/h,max_burst=5", 100, False),
        ("1/2h", 0.5, False),
    ],
)
def test_message_rates_are_read_as_kumomta_reads_them(spec, per_hour, local):
    assert parse_rate(spec, "x") == Cap(per_hour, spec, local)


@pytest.mark.parametrize("spec", ["600", "600/week", "0/h", "ten/h", "600/H", "5/0h", 600, None])
def test_malformed_rates_raise_an_error_naming_where(spec):
    with pytest.raises(KumoShapingError, match=r'\["gmail.com"\].max_message_rate'):
        parse_rate(spec, '["gmail.com"].max_message_rate')


@pytest.mark.parametrize(
    ("value", "cap"),
    [
        (5, Cap(5, 5)),
        ("1,000", Cap(1000, 1000)),
        ("local:3", Cap(3, "local:3", True)),
        ({"limit": 4, "force_local": True}, Cap(4, "local:4", True)),
        ({"limit": 4}, Cap(4, 4)),
    ],
)
def test_connection_limits_are_read_as_kumomta_reads_them(value, cap):
    assert parse_limit(value, "x") == cap


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "many", {"limit": 4, "other": 1}, None])
def test_malformed_connection_limits_raise(value):
    with pytest.raises(KumoShapingError, match="connection_limit"):
        parse_limit(value, "connection_limit")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('["gmail.com"]\nmax_deliveries_per_connection = "lots"', "max_deliveries_per_connection"),
        ('["gmail.com"]\nmx_rollup = "yes"', "mx_rollup"),
        ('["gmail.com"]\nsources = 3', "sources"),
        ('["gmail.com".sources]\nip-1 = 3', '["gmail.com"].sources."ip-1"'),
        ("foo = 1", '["foo"]'),
        ("provider = 1", "provider"),
        ('[provider."x"]\nmatch = "gmail"', "match"),
        ("[\n", "invalid TOML"),
    ],
)
def test_a_broken_file_names_the_file_the_table_and_the_problem(text, where):
    with pytest.raises(KumoShapingError, match=r"^shaping\.toml: ") as caught:
        _shaping(text)
    assert where in str(caught.value)


DOCS_EXAMPLE = """
# docs/userguide/trafficshaping/rollups.md (KumoCorp/kumomta), with a provider block as in
# assets/policy-extras/shaping.toml.
["default"]
connection_limit = 10
max_deliveries_per_connection = 100
max_message_rate = "100/s"

["yahoo.com"]
max_deliveries_per_connection = 20

["foo.com"]
mx_rollup = false
max_deliveries_per_connection = 50
connection_limit = 3

["foo.com".sources."IP-1"]
max_deliveries_per_connection = 5

[provider."outlook"]
match = [{MXSuffix = ".olc.protection.outlook.com"}]
connection_limit = 4
provider_connection_limit = 2
[provider."outlook".sources."IP-1"]
connection_limit = 3

[provider."shop"]
match = [{DomainSuffix = ".shop.example"}]
max_message_rate = "50/h"
"""


def _values(caps: dict[str, Cap | None]) -> dict[str, float | None]:
    return {option: cap.size if cap else None for option, cap in caps.items()}


def test_the_documented_example_resolves_as_kumod_resolves_it():
    op = _shaping(DOCS_EXAMPLE)
    # rollups.md: foo.com on IP-1 ends with connection_limit 3, deliveries 5, rate 100/s.
    assert _values(op.caps("foo.com", "default", "IP-1", rollup=False)) == {
        "connection_limit": 3,
        "max_deliveries_per_connection": 5,
        "max_message_rate": 360_000,
    }
    assert _values(op.caps("yahoo.com", "yahoo", "IP-2", rollup=True)) == {
        "connection_limit": 10,
        "max_deliveries_per_connection": 20,
        "max_message_rate": 360_000,
    }
    # The provider named like our group (outlook → microsoft) applies, then its source table.
    assert op.caps("outlook.com", "microsoft", "IP-2", rollup=True)["connection_limit"] == Cap(4, 4)
    assert op.caps("outlook.com", "microsoft", "IP-1", rollup=True)["connection_limit"] == Cap(3, 3)
    # A DomainSuffix match needs no group.
    assert op.caps("a.shop.example", "default", "IP-1", False)["max_message_rate"] == Cap(
        50, "50/h"
    )


def test_a_site_table_is_capped_by_every_table_that_may_roll_up_to_it():
    op = _shaping('["yahoo.com"]\nconnection_limit = 3\n["ymail.com"]\nconnection_limit = 7\n')
    # aol.com may or may not share yahoo.com's site: the lower of both, and of no table.
    assert op.caps("aol.com", "yahoo", "s", rollup=True)["connection_limit"] == Cap(3, 3)
    # The table of the domain itself decides for a domain without rollup.
    assert op.caps("ymail.com", "yahoo", "s", rollup=False)["connection_limit"] == Cap(7, 7)


def test_options_set_nowhere_are_kumods_defaults():
    caps = _shaping("").caps("gmail.com", "google", "s", rollup=True)
    assert caps == {
        "connection_limit": Cap(32, 32),
        "max_deliveries_per_connection": Cap(1024, 1024),
        "max_message_rate": None,
    }


SCALARS = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False)
STRINGS = st.text(max_size=12) | st.from_regex(
    r"(local:)?[0-9,_]{0,6}(/[0-9]{0,2}(h|hr|m|min|s|d|day|week|H))?(,max_burst=[0-9a]{0,3})?",
    fullmatch=True,
)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else "1.5"
    return json.dumps(value)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["connection_limit", "max_message_rate", "max_deliveries_per_connection"]),
        SCALARS.filter(lambda v: v is not None)
        | STRINGS
        | st.dictionaries(st.sampled_from(["limit", "force_local", "x"]), SCALARS | STRINGS),
        max_size=3,
    ),
    st.sampled_from(['["default"]', '["gmail.com"]', '["gmail.com".sources."s"]', "[provider.x]"]),
)
def test_any_value_is_read_or_refused_with_a_clear_error(table, header):
    lines = [f"{k} = {_toml(v)}" for k, v in table.items() if v is not None]
    try:
        op = _shaping("\n".join([header, *lines]))
    except KumoShapingError as exc:
        assert str(exc).startswith("shaping.toml: ")
        return
    for cap in op.caps("gmail.com", "google", "s", rollup=True).values():
        assert cap is None or cap.size >= 0


@pytest.mark.parametrize("text", ["¹", "٣", "²/h", "1٣/m"])
def test_digits_other_than_ascii_are_refused_as_numbers(text):
    with pytest.raises(KumoShapingError, match="invalid number"):
        parse_limit(text, "x") if "/" not in text else parse_rate(text, "x")
