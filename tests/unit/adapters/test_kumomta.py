"""KumoMTA log records → input events: every record type, identifiers, who decided a
failure, bad records, and what the pipeline makes of the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streams.adapters.base import Bad, Event, Skip
from streams.adapters.kumomta import KumoMtaConverter
from streams.adapters.registry import converter

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vendors" / "kumomta"
RECORDS = (FIXTURES / "records.jsonl").read_text().splitlines()


def _record(line: int) -> dict[str, Any]:
    return json.loads(RECORDS[line - 1])


def _one(record: dict[str, Any]) -> dict[str, Any]:
    (result,) = KumoMtaConverter().convert_record(record)
    assert isinstance(result, Event), result
    return result.to_json()


def test_every_record_of_the_fixture_gives_its_reviewed_result():
    expected = [
        json.loads(line) for line in (FIXTURES / "records.expected.jsonl").read_text().splitlines()
    ]
    got = []
    for number, line in enumerate(RECORDS, 1):
        for result in KumoMtaConverter().feed(line):
            row = result.to_json() if isinstance(result, Event) else {"skip": result.what}
            got.append({"line": number, **row})
    assert got == expected


def test_the_registry_names_this_converter():
    assert isinstance(converter("kumomta"), KumoMtaConverter)


@pytest.mark.parametrize(
    ("line", "family", "kind", "origin"),
    [
        (1, "send", "relayed", None),  # Reception
        (3, "send", "delivered", None),  # Delivery
        (5, "retry", "deferred", None),  # Yahoo's [TSS04]: a remote verdict
        (6, "retry", "deferred", "local"),  # 451 4.4.4 KumoMTA internal: held (suspension)
        (7, "retry", "deferred", "local"),  # scheduled queue suspended
        (9, "retry", "deferred", "connection"),  # failed to connect to any candidate hosts
        (13, "retry", "deferred", "connection"),  # timed out waiting for a response
        (14, "retry", "deferred", "connection"),  # MX didn't resolve to any hosts
        (11, "retry", "expired", None),  # Expiration
        (12, "bounce", "sync", None),  # Bounce
        (15, "bounce", "sync", "local"),  # AdminBounce
        (16, "bounce", "async", None),  # OOB
        (17, "bounce", "complaint", None),  # Feedback
    ],
)
def test_what_each_record_type_becomes(line, family, kind, origin):
    event = _one(_record(line))
    assert (event["family"], event["kind"], event.get("origin")) == (family, kind, origin)


@pytest.mark.parametrize(
    ("line", "what"),
    [(19, "Rejection"), (20, "Delayed"), (21, "AdminRebind"), (22, "XferOut"), (25, "unknown")],
)
def test_records_with_no_delivery_status_are_skipped_by_name(line, what):
    assert KumoMtaConverter().convert_record(_record(line)) == [Skip(what)]


def test_a_log_hook_s_own_records_are_skipped():
    assert KumoMtaConverter().convert_record(_record(24)) == [Skip("log_hook")]


def test_expiration_carries_kumod_s_text_nowhere():
    record = _record(11)
    assert record["response"]["content"].startswith("Next delivery time")
    event = _one(record)
    assert not {"smtp_code", "enhanced_status", "diagnostic", "origin"} & set(event)
    assert event["attempt"] == 2  # all the attempts made


def test_a_failure_carries_the_single_line_reply_and_the_failed_attempt_s_number():
    event = _one(_record(10))
    assert event["diagnostic"] == (
        "452 4.2.2 <carol@example.net>: Recipient address rejected: Mailbox full"
    )
    assert (event["smtp_code"], event["enhanced_status"], event["attempt"]) == (452, "4.2.2", 2)
    assert (event["mx_host"], event["sending_ip"]) == ("mx.example.net", "source1")
    assert event["vendor_class"] == "QuotaIssues"  # beside the reply, never over it


def test_a_complaint_is_about_the_traced_original_message_not_the_report():
    report = _record(17)
    event = _one(report)
    assert report["recipient"] == "fbl@fbl.acme.example"
    assert event["recipient"] == "alice@gmail.com"
    assert event["message_id"] == "7f0a1b2c3d4e11f0a1b250ebf67f93bd:alice@gmail.com"
    assert event["message_id"] == _one(_record(3))["message_id"]
    assert event["delivery_id"] == "spring-news"


def test_without_a_trace_the_complainer_is_the_report_s_original_recipient():
    event = _one(_record(18))
    assert event["recipient"] == "user@example.com"
    assert event["message_id"] == "9a2b3c4d5e6f11f0c3d450ebf67f93be:user@example.com"
    assert event["delivery_id"] == "kumomta"
    record = _record(18)
    record["feedback_report"]["original_rcpto_to"] = ["<a@example.com>", "<b@example.com>"]
    results = KumoMtaConverter().convert_record(record)
    assert [r.event["recipient"] for r in results] == ["a@example.com", "b@example.com"]


def test_several_recipients_give_one_event_each_with_its_own_ids():
    results = KumoMtaConverter().convert_record(_record(23))
    assert [r.event["message_id"] for r in results] == [
        "7f0a1b2c3d4e11f0a1b250ebf67f93c4:hank@example.com",
        "7f0a1b2c3d4e11f0a1b250ebf67f93c4:ivy@example.com",
    ]
    assert len({r.event["event_id"] for r in results}) == 2


def test_the_message_id_does_not_depend_on_the_recipient_s_case_or_the_array_form():
    record = _record(3)
    single = _one(record)["message_id"]
    assert _one({**record, "recipient": ["Alice@Gmail.com"]})["message_id"] == single


@pytest.mark.parametrize(
    ("queue", "meta", "delivery_id", "campaign_id"),
    [
        ("spring:acme@gmail.com", {}, "spring", "spring"),
        ("spring:acme@gmail.com!relay.example", {}, "spring", "spring"),
        ("spring:@gmail.com", {}, "spring", "spring"),
        ("acme@gmail.com", {}, "acme", None),
        ("gmail.com", {"campaign": "from-meta"}, "from-meta", "from-meta"),
        ("gmail.com", {"tenant": "acme"}, "acme", None),
        ("gmail.com", {}, "kumomta", None),
        ("", {}, "kumomta", None),
    ],
)
def test_the_delivery_is_the_queue_s_campaign_then_its_tenant(
    queue, meta, delivery_id, campaign_id
):
    event = _one({**_record(3), "queue": queue, "meta": meta})
    assert (event["delivery_id"], event.get("campaign_id")) == (delivery_id, campaign_id)


def test_event_time_prefers_the_rfc3339_time_and_falls_back_to_the_timestamp():
    record = _record(1)
    assert _one(record)["event_time"] == 1767225600125
    assert _one({**record, "event_time": "not a time"})["event_time"] == 1767225600000
    del record["event_time"]
    assert _one(record)["event_time"] == 1767225600000


def test_the_same_record_twice_gives_the_same_event_ids_and_another_record_others():
    record = _record(5)
    first = _one(record)["event_id"]
    assert first.startswith("kumomta:")
    assert _one(json.loads(json.dumps(record, sort_keys=True)))["event_id"] == first
    assert _one({**record, "num_attempts": 1})["event_id"] != first
    assert _one({**record, "timestamp": record["timestamp"] + 1})["event_id"] != first


def test_an_array_body_converts_every_record_and_names_each_fault():
    results = KumoMtaConverter().feed((FIXTURES / "mixed.json").read_text())
    assert [r.event["recipient"] for r in results if isinstance(r, Event)] == [
        "good@example.com",
        "good2@example.com",
    ]
    assert [r.reason for r in results if isinstance(r, Bad)] == [
        "record: not a JSON object",
        "type: missing or not a string",
        "recipient: missing or not a string",
        "recipient: missing or not a string",
        "recipient: empty list",
        "timestamp: missing or not epoch seconds",
        "timestamp: missing or not epoch seconds",
        "timestamp: out of range",
        "response: missing or not an object",
        "response.code: not an integer between 0 and 65535",
        "response.enhanced_code: not {class, subject, detail} integers",
        "num_attempts: not an integer between 0 and 65535",
        "feedback_report: missing or not an object",
        "feedback_report: names no recipient (supplemental_trace.recipient or original_rcpto_to)",
        "id: missing",
        "peer_address: not an object",
        "response.content: not a string",
    ]


def test_a_bad_record_keeps_its_own_text_for_the_dead_letter():
    line = '{"type": "Delivery", "recipient": "a@example.com"}'
    assert KumoMtaConverter().feed(line) == [Bad(line, "id: missing")]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("this is not json", "record: not JSON (Expecting value: line 1 column 1 (char 0))"),
        ("42", "record: not a JSON object"),
        ("null", "record: not a JSON object"),
        ('{"type": "Delivery"}', "id: missing"),
        (
            '{"id": "x", "recipient": "a@example.com", "timestamp": 1}',
            "type: missing or not a string",
        ),
    ],
)
def test_a_broken_line_is_one_bad_record(line, reason):
    assert KumoMtaConverter().feed(line) == [Bad(line, reason)]


def test_every_malformed_line_gives_one_bad_record_and_a_blank_line_nothing():
    for line in (FIXTURES / "malformed.jsonl").read_text().splitlines():
        (result,) = KumoMtaConverter().feed(line)
        assert isinstance(result, Bad), line
    assert KumoMtaConverter().feed("\n") == []
