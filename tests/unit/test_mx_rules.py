from pathlib import Path

import pytest

from streams.domain.control.mx_rules import MxRulesError, load_mx_rules


@pytest.fixture(scope="module")
def rules():
    return load_mx_rules()


@pytest.mark.parametrize(
    ("domain", "mx", "group"),
    [
        ("gmail.com", None, "google"),
        ("GoogleMail.com.", None, "google"),
        ("corp.example", "alt1.aspmx.l.google.com", "google"),
        ("yahoo.co.uk", None, "yahoo"),
        ("yahoo.fr", None, "yahoo"),
        ("aol.com", None, "yahoo"),
        ("vanity.example", "mta6.am0.yahoodns.net.", "yahoo"),
        ("hotmail.fr", None, "microsoft"),
        ("live.com", None, "microsoft"),
        ("corp.example", "corp-example.mail.protection.outlook.com", "microsoft"),
        ("icloud.com", None, "apple"),
        ("web.de", None, "gmx"),
        ("gmx.net", None, "gmx"),
        ("orange.fr", None, "orange"),
        ("mail.ru", None, "mailru"),
        ("yandex.ru", None, "yandex"),
        ("small.example", "mx.small.example", "default"),
        ("small.example", None, "default"),
        # A suffix must match on a label boundary.
        ("x.example", "notgoogle.com", "default"),
        # Explicit domain lists win over the MX host.
        ("gmail.com", "mx.yahoodns.net", "google"),
    ],
)
def test_group_for(rules, domain, mx, group):
    assert rules.group_for(domain, mx) == group
    assert rules.group_for(domain, mx) == group  # cached path


def test_groups_inherit_default_and_bounds_are_ordered(rules):
    default = rules.group("default")
    for g in rules.groups.values():
        for limit in (g.max_rate_per_hour, g.max_connections, g.max_messages_per_connection):
            assert limit.min <= limit.baseline <= limit.max
        assert g.thresholds.invalid_throttle == pytest.approx(0.03)
        assert g.thresholds.invalid_suspend == pytest.approx(0.10)
        assert g.thresholds.complaint_throttle == pytest.approx(0.002)
        assert g.thresholds.complaint_suspend == pytest.approx(0.005)
        assert g.warmup == default.warmup
    assert (
        rules.group("google").max_rate_per_hour.max
        > rules.group("google").max_rate_per_hour.baseline
    )
    assert rules.group("unknown-name") is default


def test_warmup_cap(rules):
    g = rules.group("google")
    assert g.warmup_cap(1) == 50
    assert g.warmup_cap(6) == 1000  # day 5 step holds until day 7
    assert g.warmup_cap(30) == 40000
    assert g.warmup_cap(31) is None


def test_operator_file_overrides_and_adds(tmp_path: Path):
    path = tmp_path / "ops.toml"
    path.write_text(
        """
[group.default]
adjust_interval_s = 600

[group.google]
max_rate_per_hour = { baseline = 1000, min = 100, max = 2000 }

[group.acme]
domains = ["acme.example", "*.acme.example"]

[[automation]]
name = "yahoo-tss04"
groups = ["yahoo"]
regex = 'TSS04'
action = "throttle_down"
duration = "1h"
"""
    )
    rules = load_mx_rules(path)
    google = rules.group("google")
    assert (google.max_rate_per_hour.baseline, google.max_rate_per_hour.max) == (1000, 2000)
    assert google.max_connections.baseline == 20  # untouched field keeps the shipped value
    assert google.adjust_interval_s == 600  # operator default reaches every group
    assert rules.group_for("mx1.acme.example") == "acme"
    assert rules.group("acme").max_rate_per_hour == rules.group("default").max_rate_per_hour
    tss = [r for r in rules.automation if r.name == "yahoo-tss04"]
    assert len(tss) == 1 and tss[0].actions[0].kind == "throttle_down"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[group.google\nx = 1", "invalid TOML"),
        (
            "[group.google]\nmax_rate_per_hour = { baseline = 10, min = 100, max = 2000 }",
            "group 'google': max_rate_per_hour: need min <= baseline <= max",
        ),
        ("[group.google]\nmax_rate = 5", "group 'google': unknown keys ['max_rate']"),
        (
            "[group.acme]\ndomains = ['gmail.com']",
            "group 'acme': domain 'gmail.com' is also in group 'google'",
        ),
        ("[group.acme]\ndecrease_factor = 1.5", "group 'acme': decrease_factor"),
        ("[group.acme]\nwarmup = [[2, 10], [1, 20]]", "group 'acme': warmup days must increase"),
        (
            "[group.acme]\nthresholds = { invalid_throttle = 0.2, invalid_suspend = 0.1 }",
            "group 'acme': thresholds: invalid_throttle must not exceed invalid_suspend",
        ),
        (
            "[[automation]]\nname = 'x'\nregex = '('\naction = 'suspend'\nduration = '1h'",
            "automation rule 'x': invalid regex",
        ),
        ("[throttle]\nx = 1", "unknown top-level keys ['throttle']"),
        ("[group.acme]\nthresholds = { spam = 0.1 }", "group 'acme': thresholds must set exactly"),
    ],
)
def test_malformed_operator_file_names_file_group_and_problem(tmp_path: Path, body, expected):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(MxRulesError) as err:
        load_mx_rules(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_operator_file(tmp_path: Path):
    with pytest.raises(MxRulesError, match="cannot read"):
        load_mx_rules(tmp_path / "nope.toml")
