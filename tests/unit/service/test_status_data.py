"""The status page's data: throttle rows per provider group, history series, deliveries."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from streams.domain.control.mx_rules import load_mx_rules
from streams.service.status_data import (
    HOUR_MS,
    MAX_DELIVERIES,
    MAX_SERIES,
    baseline,
    delivery_rows,
    history_series,
    parse_fields,
    throttle_rows,
)

RULES = load_mx_rules()
T0 = 1_767_225_600_000


def change(key: str, t: int, rate: int, mode: str = "backoff", version: int = 1) -> dict:
    return {
        "key": key,
        "event_time": t,
        "max_rate_per_hour": rate,
        "mode": mode,
        "version": version,
    }


def test_view_fields_are_read_back_as_the_updater_wrote_them():
    raw = {"mode": "backoff", "max_rate_per_hour": "18000", "suspended_until": "null", "x": "{"}
    assert parse_fields(raw) == {
        "mode": "backoff",
        "max_rate_per_hour": 18000,
        "suspended_until": None,
        "x": "{",
    }


def test_every_group_has_a_row_at_its_baseline_until_a_change_is_published():
    rows = throttle_rows(RULES, [])
    assert [r["key"] for r in rows] == [f"group:{name}" for name in sorted(RULES.groups)]
    google = next(r for r in rows if r["key"] == "group:google")
    assert (google["mode"], google["rate"], google["pct"]) == ("normal", 36000, 100.0)
    assert google["event_time"] is None


def test_published_settings_replace_the_baseline_and_other_keys_follow_the_groups():
    settings = [
        {**change("group:google", T0, 18000), "reason": "421", "scope": "group"},
        {**change("ip_group:192.0.2.1|yahoo", T0, 4500, "suspended"), "scope": "ip_group"},
        {**change("domain:small.example", T0, 1800), "scope": "domain"},
    ]
    rows = throttle_rows(RULES, settings)
    by_key = {r["key"]: r for r in rows}
    assert len(rows) == len(RULES.groups) + 2
    assert (by_key["group:google"]["mode"], by_key["group:google"]["pct"]) == ("backoff", 50.0)
    assert by_key["group:google"]["reason"] == "421"
    assert by_key["ip_group:192.0.2.1|yahoo"]["pct"] == 25.0  # of yahoo's 18000
    assert by_key["domain:small.example"]["pct"] == 50.0  # of default's 3600
    assert [r["key"] for r in rows[-2:]] == ["domain:small.example", "ip_group:192.0.2.1|yahoo"]


def test_a_domain_key_takes_its_groups_baseline():
    assert baseline(RULES, "domain:yahoo.fr") == 18000
    assert baseline(RULES, "group:nonesuch") == 3600  # an unknown group: default's


def test_history_is_the_window_before_the_newest_change_with_the_value_in_effect_at_its_start():
    entries = [
        change("group:google", T0, 18000, version=1),
        change("group:google", T0 + 7 * HOUR_MS, 9000, version=2),
        change("group:google", T0 + 8 * HOUR_MS, 36000, "normal", version=3),
        change("group:yahoo", T0, 9000),  # only before the window: not charted
    ]
    history = history_series(RULES, entries, hours=6)
    start = T0 + 2 * HOUR_MS
    assert (history["start"], history["end"]) == (start, T0 + 8 * HOUR_MS)
    [google] = history["series"]
    assert google["key"] == "group:google"
    assert [(p["t"], p["rate"], p["pct"]) for p in google["points"]] == [
        (start, 18000, 50.0),
        (T0 + 7 * HOUR_MS, 9000, 25.0),
        (T0 + 8 * HOUR_MS, 36000, 100.0),
    ]


def test_no_history_gives_an_empty_window():
    assert history_series(RULES, [{"key": "group:google"}]) == {
        "hours": 6,
        "start": None,
        "end": None,
        "series": [],
    }


keys = st.sampled_from(
    [f"group:{g}" for g in RULES.groups] + ["domain:a.example", "ip_group:192.0.2.9|google"]
)
entries_st = st.lists(
    st.builds(
        change,
        keys,
        st.integers(T0, T0 + 24 * HOUR_MS),
        st.integers(1, 100_000),
        st.sampled_from(["normal", "backoff", "suspended", "warmup"]),
        st.integers(1, 50),
    ),
    max_size=60,
)


@given(entries_st, st.integers(1, 24))
def test_history_points_are_ordered_inside_the_window_and_bounded(entries, hours):
    history = history_series(RULES, entries, hours=hours)
    series = history["series"]
    assert len(series) <= MAX_SERIES
    assert [s["key"] for s in series] == sorted({s["key"] for s in series})
    for s in series:
        times = [p["t"] for p in s["points"]]
        assert times == sorted(times)
        assert all(history["start"] <= t <= history["end"] for t in times)
        in_window = [
            e for e in entries if e["key"] == s["key"] and e["event_time"] >= history["start"]
        ]
        assert len(in_window) <= len(s["points"]) <= len(in_window) + 1
    if entries:
        assert history["end"] == max(e["event_time"] for e in entries)


kpi = st.fixed_dictionaries(
    {
        "delivery_id": st.text(min_size=1, max_size=6),
        "pending": st.integers(0, 5),
        "event_time": st.integers(0, 10**6),
        "success_pct": st.floats(0, 100),
    }
)


@given(st.lists(kpi, max_size=40, unique_by=lambda k: k["delivery_id"]))
def test_deliveries_with_pending_messages_come_first_then_the_latest(kpis):
    rows = delivery_rows(kpis)
    assert len(rows) == min(len(kpis), MAX_DELIVERIES)
    pending = [r["pending"] > 0 for r in rows]
    assert pending == sorted(pending, reverse=True)
    for a, b in itertools.pairwise(rows):
        if (a["pending"] > 0) == (b["pending"] > 0):
            assert a["event_time"] >= b["event_time"]
    shown = {r["delivery_id"] for r in rows}
    left_out = [k for k in kpis if k["delivery_id"] not in shown]
    if left_out and rows:
        last = rows[-1]
        assert all(
            (k["pending"] > 0, k["event_time"]) <= (last["pending"] > 0, last["event_time"])
            for k in left_out
        )
