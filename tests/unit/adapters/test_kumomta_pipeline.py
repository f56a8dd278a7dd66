"""What the pipeline makes of converted KumoMTA records (``mta-feedback replay`` over them),
and ``site_seen``, which tells the HTTP service KumoMTA's site names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streams.adapters.base import Event
from streams.adapters.kumomta import KumoMtaConverter, SiteSeen, site_seen
from streams.tools.replay import Replayer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vendors" / "kumomta"
RECORDS = [json.loads(line) for line in (FIXTURES / "records.jsonl").read_text().splitlines()]
GMAIL_SITE = "source1->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"


def _replay(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    replayer = Replayer()
    for record in records:
        for result in KumoMtaConverter().convert_record(record):
            if isinstance(result, Event):
                replayer.apply(*replayer.normalise(result.to_json()))
    assert replayer.errors == []
    return {
        row.get("message_id") or row.get("address") or row.get("key") or row["delivery_id"]: row
        for row in replayer.final_state()
    }


def _message(state: dict[str, dict[str, Any]], key: str) -> tuple[Any, ...]:
    row = state[key]
    return row["status"], row["failure_type"], row["failure_reason"]


def _address(state: dict[str, dict[str, Any]], address: str) -> tuple[Any, ...]:
    return state[address]["state"], state[address]["error_count"]


def test_replay_of_the_converted_log_gives_the_email_feedback_service_statuses():
    state = _replay(RECORDS)
    assert _message(state, "7f0a1b2c3d4e11f0a1b250ebf67f93bd:alice@gmail.com") == (
        "sent",
        None,
        None,
    )
    # Mailbox full, then kumod's Expiration: the reason is the server's, not kumod's text.
    assert _message(state, "7f0a1b2c3d4e11f0a1b250ebf67f93bf:carol@example.net") == (
        "failed",
        "soft",
        "Mailbox full",
    )
    assert _message(state, "7f0a1b2c3d4e11f0a1b250ebf67f93c0:dave@example.org") == (
        "failed",
        "hard",
        "User unknown",
    )
    assert _message(state, "7f0a1b2c3d4e11f0a1b250ebf67f93c3:gina@example.com") == (
        "failed",
        "hard",
        "Refused",
    )
    assert _address(state, "alice@gmail.com") == ("denylisted", 0)  # the traced complaint
    assert _address(state, "carol@example.net") == ("with_errors", 2)
    assert _address(state, "dave@example.org") == ("quarantined", 0)
    assert _address(state, "gina@example.com") == ("valid", 0)  # an administrator's bounce
    assert _address(state, "erin@slow.example.com") == ("valid", 0)  # a timeout
    assert _address(state, "fred@nomx.example.com") == ("valid", 0)  # no MX answered
    assert _address(state, "frank@example.com") == ("quarantined", 0)  # the OOB bounce


def test_kumomta_internal_holds_change_nothing_but_the_attempt_count():
    bob = [r for r in RECORDS if r["recipient"] == "bob@yahoo.com" and r["type"] != "Delayed"]
    assert [r["type"] for r in bob] == ["Reception"] + ["TransientFailure"] * 3
    before = _replay(bob[:2])
    after = _replay(bob)
    key = "7f0a1b2c3d4e11f0a1b250ebf67f93be:bob@yahoo.com"
    assert {**after[key], "attempts": None} == {**before[key], "attempts": None}
    assert (before[key]["attempts"], after[key]["attempts"]) == (1, 3)
    assert _address(after, "bob@yahoo.com") == _address(before, "bob@yahoo.com") == ("valid", 0)


def _burst(template: dict[str, Any], count: int) -> dict[str, dict[str, Any]]:
    records = []
    for i in range(count):
        record = {**template, "id": f"{i:032x}", "recipient": f"user{i}@yahoo.com"}
        record["timestamp"] = template["timestamp"] + 5 * i
        records.append(record)
    return _replay(records)


def test_a_burst_of_yahoo_tss04_deferrals_suspends_the_source_and_held_records_do_not():
    tss04, held = RECORDS[4], RECORDS[5]
    assert "[TSS04]" in tss04["response"]["content"]
    assert held["response"]["content"].startswith("KumoMTA internal:")
    throttled = {k: v for k, v in _burst(tss04, 200).items() if v["type"] == "throttle"}
    # Yahoo defers that source: its key alone is suspended, the other sources keep Yahoo's.
    assert {k: v["mode"] for k, v in throttled.items()} == {"ip_group:source1|yahoo": "suspended"}
    unchanged = _burst(held, 200)
    assert [v for v in unchanged.values() if v["type"] == "throttle"] == []
    assert all(v["error_count"] == 0 for v in unchanged.values() if v["type"] == "address")


@pytest.mark.parametrize(
    ("line", "seen"),
    [
        (2, SiteSeen("source1", GMAIL_SITE, "gmail.com", "gmail-smtp-in.l.google.com")),
        (3, SiteSeen("source1", GMAIL_SITE, "gmail.com", "gmail-smtp-in.l.google.com")),
        (
            12,
            SiteSeen(
                "source2", "source2->mx.example.org@smtp_client", "example.org", "mx.example.org"
            ),
        ),
        (9, SiteSeen("source1", "source1->mx.example.net@smtp_client", "example.net", None)),
        (
            23,
            SiteSeen(
                "source1", "source1->mx.example.com@smtp_client", "example.com", "mx.example.com"
            ),
        ),
    ],
)
def test_site_seen_names_the_source_site_and_domain_of_an_attempt(line, seen):
    assert site_seen(RECORDS[line - 1]) == seen


@pytest.mark.parametrize(
    "line",
    [
        1,  # Reception: no site
        6,  # held before any site was chosen: site is ""
        11,  # Expiration
        15,  # AdminBounce
        16,  # OOB
        17,  # Feedback
        24,  # a log hook's own delivery
    ],
)
def test_site_seen_is_none_for_records_that_reached_no_remote_site(line):
    assert site_seen(RECORDS[line - 1]) is None


def test_site_seen_takes_the_source_from_the_site_when_the_record_has_none():
    record = {**RECORDS[1], "egress_source": None, "recipient": ["Bob@Example.COM."]}
    assert site_seen(record) == SiteSeen(
        "source1", GMAIL_SITE, "example.com", "gmail-smtp-in.l.google.com"
    )
    assert site_seen({**record, "site": "mx.example.com"}).egress_source == "unspecified"


@pytest.mark.parametrize(
    "record",
    [
        None,
        [],
        {"type": "Delivery"},
        {**RECORDS[1], "recipient": 42},
        {**RECORDS[1], "recipient": "no-domain"},
        {**RECORDS[1], "peer_address": "not an object"},
        {**RECORDS[1], "site": 7},
        {**RECORDS[1], "type": ["Delivery"]},  # found by the fuzz tests
    ],
)
def test_site_seen_is_none_for_a_broken_record(record):
    assert site_seen(record) is None
