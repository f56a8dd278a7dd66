"""SparkPost / Momentum webhook batches → input events: exact events for every event type
of the vendor's samples, bad items, and what the pipeline makes of the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.adapters.base import Bad, ConvertStats, Event, Skip
from streams.adapters.registry import converter
from streams.adapters.sparkpost import SparkPostConverter
from streams.tools.replay import Replayer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vendors" / "sparkpost"


def _text(name: str) -> str:
    return (FIXTURES / name).read_text()


def _json(results: list) -> list:
    return [r.to_json() if isinstance(r, Event) else r for r in results]


def _item(type_: str, **fields: object) -> dict:
    return {
        "msys": {
            "message_event": {
                "type": type_,
                "event_id": "1",
                "message_id": "m1",
                "rcpt_to": "x@example.com",
                "timestamp": "1767225600",
                **fields,
            }
        }
    }


SAMPLE_BATCH = [
    {
        "family": "send",
        "event_id": "sparkpost:92356927693813856",
        "event_time": 1454442600000,
        "delivery_id": "summer-sale",
        "message_id": "000443ee14578172be22",
        "recipient": "Jane.Doe@example.com",
        "kind": "relayed",
        "sending_ip": "192.0.2.10",
        "campaign_id": "summer-sale",
    },
    {
        "family": "send",
        "event_id": "sparkpost:92356927693813857",
        "event_time": 1454442660000,
        "delivery_id": "summer-sale",
        "message_id": "000443ee14578172be22",
        "recipient": "Jane.Doe@example.com",
        "kind": "delivered",
        "sending_ip": "192.0.2.10",
        "campaign_id": "summer-sale",
    },
    {  # Momentum's own "no MX" reply: nobody answered
        "family": "retry",
        "event_id": "sparkpost:84345317653675522",
        "event_time": 1464825748000,
        "delivery_id": "84345317650824116",
        "message_id": "0004e3724f57753a3861",
        "recipient": "recipient@nomx.example.com",
        "kind": "deferred",
        "smtp_code": 454,
        "enhanced_status": "4.4.4",
        "diagnostic": "454 4.4.4 [internal] no MX or A for domain",
        "attempt": 2,
        "origin": "connection",
        "vendor_class": "21",
    },
    {
        "family": "retry",
        "event_id": "sparkpost:84345317653675601",
        "event_time": 1464825800000,
        "delivery_id": "summer-sale",
        "message_id": "0004e3724f57753a3901",
        "recipient": "john.smith@yahoo.com",
        "kind": "deferred",
        "smtp_code": 421,
        "enhanced_status": "4.7.0",
        "diagnostic": "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to "
        "unexpected volume or user complaints - 4.16.55.1; see "
        "https://postmaster.yahooinc.com/error-codes",
        "attempt": 1,
        "sending_ip": "192.0.2.10",
        "vendor_class": "70",
    },
    {  # Adaptive Delivery holding the IP back: the MTA's own doing
        "family": "retry",
        "event_id": "sparkpost:84345317653675602",
        "event_time": 1464825810000,
        "delivery_id": "summer-sale",
        "message_id": "0004e3724f57753a3902",
        "recipient": "mary.major@yahoo.com",
        "kind": "deferred",
        "smtp_code": 451,
        "enhanced_status": "4.3.0",
        "diagnostic": "451 4.3.0 [internal] Sending IP temporarily suspended",
        "attempt": 3,
        "sending_ip": "192.0.2.10",
        "origin": "local",
        "vendor_class": "70",
    },
    {  # a timeout with no reply code; ip_pool stands in for the missing sending_ip
        "family": "retry",
        "event_id": "sparkpost:84345317653675603",
        "event_time": 1464825820000,
        "delivery_id": "summer-sale",
        "message_id": "0004e3724f57753a3903",
        "recipient": "kim.lee@slow.example.net",
        "kind": "deferred",
        "diagnostic": "[internal] connection timed out",
        "attempt": 4,
        "sending_ip": "shared-pool",
        "origin": "connection",
        "vendor_class": "24",
    },
    {
        "family": "bounce",
        "event_id": "sparkpost:84345317653491230",
        "event_time": 1464824548000,
        "delivery_id": "84345317650824116",
        "message_id": "0004e3724f57753a3561",
        "recipient": "bounce@example.com",
        "kind": "sync",
        "smtp_code": 550,
        "enhanced_status": "5.1.1",
        "diagnostic": "550 5.1.1 <bounce@example.com>: Recipient address rejected: User unknown",
        "attempt": 1,
        "sending_ip": "192.0.2.11",
        "vendor_class": "10",
    },
    {  # bounce class 25: failed by SparkPost's own policies
        "family": "bounce",
        "event_id": "sparkpost:84345317653491231",
        "event_time": 1464824549000,
        "delivery_id": "84345317650824116",
        "message_id": "0004e3724f57753a3562",
        "recipient": "suppressed@example.org",
        "kind": "sync",
        "smtp_code": 554,
        "enhanced_status": "5.7.1",
        "diagnostic": "554 5.7.1 [internal] recipient address was suppressed due to customer "
        "policy",
        "origin": "local",
        "vendor_class": "25",
    },
    {  # "message timeout": given up, with the receiver's last reply
        "family": "retry",
        "event_id": "sparkpost:84345317653491232",
        "event_time": 1464900000000,
        "delivery_id": "84345317650824116",
        "message_id": "0004e3724f57753a3563",
        "recipient": "full.box@example.net",
        "kind": "expired",
        "smtp_code": 452,
        "enhanced_status": "4.2.2",
        "diagnostic": "452 4.2.2 The email account that you tried to reach is over quota.",
        "attempt": 6,
        "sending_ip": "192.0.2.11",
        "vendor_class": "22",
    },
    {
        "family": "bounce",
        "event_id": "sparkpost:92356927693813858",
        "event_time": 1454443600000,
        "delivery_id": "summer-sale",
        "message_id": "000443ee14578172be23",
        "recipient": "gone@example.com",
        "kind": "async",
        "smtp_code": 550,
        "diagnostic": "550 [internal] [oob] The recipient is invalid.",
        "sending_ip": "192.0.2.10",
        "vendor_class": "10",
    },
    {
        "family": "bounce",
        "event_id": "sparkpost:92356927693813859",
        "event_time": 1454444600000,
        "delivery_id": "summer-sale",
        "message_id": "000443ee14578172be24",
        "recipient": "angry@example.com",
        "kind": "complaint",
        "sending_ip": "192.0.2.10",
    },
    {
        "family": "bounce",
        "event_id": "sparkpost:92356927693813860",
        "event_time": 1454442600000,
        "delivery_id": "summer-sale",
        "message_id": "000443ee14578172be25",
        "recipient": "listed@example.com",
        "kind": "sync",
        "smtp_code": 554,
        "enhanced_status": "5.7.1",
        "diagnostic": "554 5.7.1 recipient address suppressed due to customer policy",
        "origin": "local",
        "vendor_class": "25",
    },
    {  # no message_id: the transmission plus the recipient; ISO 8601 timestamp
        "family": "bounce",
        "event_id": "sparkpost:139013368081587254",
        "event_time": 1539300285000,
        "delivery_id": "139013368081177607",
        "message_id": "139013368081177607:recipient@example.com",
        "recipient": "recipient@example.com",
        "kind": "sync",
        "smtp_code": 554,
        "enhanced_status": "5.3.3",
        "diagnostic": "554 5.3.3 [internal] Error while rendering part html: ...",
        "origin": "local",
    },
    {
        "family": "bounce",
        "event_id": "sparkpost:102360394390563734",
        "event_time": 1464900034000,
        "delivery_id": "102360394387646691",
        "message_id": "0005c29950577c61695d",
        "recipient": "suppressed@example.com",
        "kind": "sync",
        "smtp_code": 554,
        "enhanced_status": "5.7.1",
        "diagnostic": "554 5.7.1 recipient address suppressed due to customer policy",
        "origin": "local",
    },
    Skip("open"),
    Skip("initial_open"),
    Skip("click"),
    Skip("amp_click"),
    Skip("list_unsubscribe"),
    Skip("link_unsubscribe"),
    Skip("relay_delivery"),
    Skip("relay_message"),
    Skip("unknown"),
]


def test_every_event_type_of_the_sample_batch_gives_its_exact_result():
    assert _json(SparkPostConverter().feed(_text("batch.json"))) == SAMPLE_BATCH


def test_the_registry_names_this_converter():
    assert isinstance(converter("sparkpost"), SparkPostConverter)


def test_a_ping_batch_is_skipped_and_an_empty_batch_gives_nothing():
    assert SparkPostConverter().feed('[{"msys":{}}]') == [Skip("ping")]
    assert SparkPostConverter().feed("[]") == []
    assert SparkPostConverter().feed("  \n") == []


def test_one_item_is_taken_as_well_as_a_batch():
    item = _item("delivery")
    alone = SparkPostConverter().feed(json.dumps(item))
    assert alone == SparkPostConverter().feed(json.dumps([item]))
    assert [r.family for r in alone] == ["send"]


def test_one_batch_per_line_converts_line_by_line():
    results = [
        r for line in _text("batches.jsonl").splitlines() for r in SparkPostConverter().feed(line)
    ]
    stats = ConvertStats()
    stats.count(results)
    assert stats.to_dict() == {
        "events": {"bounce": 3, "retry": 3, "send": 7},
        "skipped": {"ping": 1},
        "bad": 0,
        "bad_reasons": {},
    }


def test_a_mixed_batch_keeps_its_good_items_and_names_each_fault():
    results = SparkPostConverter().feed(_text("mixed.json"))
    assert [r.event["recipient"] for r in results if isinstance(r, Event)] == [
        "good@example.com",
        "good2@example.com",
    ]
    assert [r.reason for r in results if isinstance(r, Bad)] == [
        "item: not a JSON object",
        "msys: missing or not an object",
        "recipient: missing or not a string",
        "timestamp: missing or not a time",
        "timestamp: neither epoch seconds nor ISO 8601",
        "error_code: not a reply code",
        "type: missing or not a string",
        "msys: holds more than one event",
        "message_id: missing, and no transmission_id either",
        "timestamp: out of range",
        "num_retries: not a count",
    ]
    assert len(results) == len(json.loads(_text("mixed.json")))


def test_convert_item_gives_one_result_per_element_so_bad_ones_keep_their_index():
    items = json.loads(_text("mixed.json"))
    per_item = [SparkPostConverter().convert_item(item) for item in items]
    assert all(len(r) == 1 for r in per_item)
    assert [i for i, r in enumerate(per_item) if isinstance(r[0], Bad)] == list(range(1, 12))
    assert per_item[1][0].raw == "42"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("this is not json", "batch: not JSON (Expecting value: line 1 column 1 (char 0))"),
        ("42", "batch: not a JSON array of webhook events"),
        ('"a string"', "batch: not a JSON array of webhook events"),
        ("null", "batch: not a JSON array of webhook events"),
        ("{}", "msys: missing or not an object"),
        ("[" * 100_000, None),  # deeper than the JSON parser goes
    ],
)
def test_a_batch_that_is_not_a_batch_is_one_bad_record(line, reason):
    (result,) = SparkPostConverter().feed(line)
    assert isinstance(result, Bad)
    assert result.raw == line[: len(result.raw)]
    if reason is not None:
        assert result.reason == reason
    else:
        assert result.reason.startswith("batch: not JSON")


def test_every_malformed_line_gives_bad_records_only():
    for line in _text("malformed.jsonl").splitlines():
        results = SparkPostConverter().feed(line)
        assert results and all(isinstance(r, Bad) for r in results), line


def test_the_same_item_twice_gives_the_same_event_id_even_without_sparkpost_s_own():
    item = _item("delivery")
    del item["msys"]["message_event"]["event_id"]
    reordered = {"msys": {"message_event": dict(reversed(item["msys"]["message_event"].items()))}}
    first, second, third = (
        SparkPostConverter().convert_item(i)[0] for i in (item, item, reordered)
    )
    assert first.event["event_id"].startswith("sparkpost:")
    assert first.event["event_id"] == second.event["event_id"] == third.event["event_id"]
    other = _item("delivery", timestamp="1767225601")
    del other["msys"]["message_event"]["event_id"]
    assert SparkPostConverter().convert_item(other)[0].event["event_id"] != first.event["event_id"]


@pytest.mark.parametrize(
    ("fields", "origin"),
    [
        ({"error_code": "421", "raw_reason": "421 4.7.0 try again later"}, None),
        ({"error_code": "451", "raw_reason": "451 4.3.0 [internal] Sending IP suspended"}, "local"),
        ({"bounce_class": "24", "raw_reason": "451 4.4.1 [internal] no answer"}, "connection"),
        ({"raw_reason": "Connection refused"}, "connection"),
        ({"raw_reason": "blocked, see https://www.spamhaus.org/query/dnsbl"}, None),
        ({"bounce_class": "24", "error_code": "421", "raw_reason": "421 4.4.2 timeout"}, None),
    ],
)
def test_who_decided_a_delay(fields, origin):
    (result,) = SparkPostConverter().convert_item(_item("delay", **fields))
    assert result.event["origin"] == origin


def test_an_expiry_whose_last_reply_was_momentum_s_own_is_not_a_remote_verdict():
    text = "554 5.4.7 [internal] message timeout (last transfail: 451 4.3.0 [internal] held)"
    (result,) = SparkPostConverter().convert_item(_item("bounce", raw_reason=text))
    assert (result.family, result.event["kind"], result.event["origin"]) == (
        "retry",
        "expired",
        "local",
    )
    bare = "554 5.4.7 [internal] exceeded max time without delivery"
    (result,) = SparkPostConverter().convert_item(_item("bounce", raw_reason=bare))
    assert result.to_json()["kind"] == "expired"
    assert "diagnostic" not in result.to_json()


def test_every_event_of_the_fixtures_fits_the_pipeline_input():
    replayer = Replayer()
    texts = [_text("batch.json"), _text("mixed.json"), *_text("batches.jsonl").splitlines()]
    events = [r for t in texts for r in SparkPostConverter().feed(t) if isinstance(r, Event)]
    assert len(events) == 14 + 2 + 13
    for event in events:
        replayer.normalise(event.to_json())


def _replay(lines: list[str]) -> dict[str, dict]:
    replayer = Replayer()
    for line in lines:
        for result in SparkPostConverter().feed(line):
            if isinstance(result, Event):
                replayer.apply(*replayer.normalise(result.to_json()))
    assert replayer.errors == []
    return {
        row.get("message_id") or row.get("address") or row["delivery_id"]: row
        for row in replayer.final_state()
    }


def test_replay_of_converted_batches_gives_the_email_feedback_service_statuses():
    state = _replay(_text("batches.jsonl").splitlines())
    statuses = {
        k: (v["status"], v["failure_type"], v["failure_reason"])
        for k, v in state.items()
        if v["type"] == "message"
    }
    assert statuses == {
        "00a1b2c3d4e5f6a7b801": ("sent", None, None),  # a delay, then the delivery
        "00a1b2c3d4e5f6a7b802": ("failed", "hard", "User unknown"),
        "00a1b2c3d4e5f6a7b803": ("taken_into_account", None, None),  # held by Momentum
        "00a1b2c3d4e5f6a7b804": ("failed", "hard", "Refused"),  # policy rejection
        "00a1b2c3d4e5f6a7b805": ("sent", None, None),
    }
    addresses = {
        k: (v["state"], v["error_count"]) for k, v in state.items() if v["type"] == "address"
    }
    assert addresses == {
        "alice@example.net": ("valid", 0),  # delivered: the mailbox-full delay is forgotten
        "bob@example.net": ("quarantined", 0),
        "carol@yahoo.com": ("valid", 0),  # Momentum's own holds count for nothing
        "dave@example.net": ("valid", 0),  # so does its own policy rejection
        "erin@example.net": ("denylisted", 0),  # the complaint
    }
    assert state["spring-news"]["to_deliver"] == 5
